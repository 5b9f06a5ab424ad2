//! The session API of the admin listener, behind a bearer token (`admin.api_token`):
//! `GET /admin/sessions[?user=NAME]` lists live sessions; `POST /admin/sessions/revoke` with
//! `{"user": NAME}` or `{"session": ID}` (or the same as query parameters) ends them on every replica.
//! Also the client the `sessions` command uses.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::session::Session;
use crate::session::store::{StoreError, Target};
use crate::telemetry::audit::Origin;
use crate::web::sso::Sso;

/// Largest request body the API reads.
const MAX_BODY: usize = 16 * 1024;

/// What the API shows of a session: never its refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    pub provider: String,
    pub subject: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub last_active: i64,
    pub expires_at: i64,
    pub revalidated_at: i64,
    pub remember_me: bool,
}

impl From<&Session> for SessionInfo {
    fn from(s: &Session) -> Self {
        SessionInfo {
            id: s.id.clone(),
            user: s.username.clone(),
            email: s.email.clone(),
            display_name: s.display_name.clone(),
            provider: s.provider.clone(),
            subject: s.subject.clone(),
            issued_at: s.issued_at,
            last_active: s.last_active,
            expires_at: s.expires_at,
            revalidated_at: s.revalidated_at,
            remember_me: s.remember_me,
        }
    }
}

/// `GET /admin/sessions` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listing {
    pub sessions: Vec<SessionInfo>,
}

/// `POST /admin/sessions/revoke` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    pub revoked: usize,
    pub sessions: Vec<SessionInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    user: Option<String>,
    session: Option<String>,
}

type Reply = Response<Full<Bytes>>;

/// Answers a request under `/admin/sessions`.
pub async fn answer(sso: &Sso, token: Option<&Secret>, req: hyper::Request<Incoming>, peer: SocketAddr) -> Reply {
    let origin = Origin {
        request_id: "admin",
        client_ip: peer.ip(),
    };
    let Some(token) = token else {
        return error(
            StatusCode::NOT_FOUND,
            "the session API is off: set admin.api_token (or admin.api_token_file) to use it",
        );
    };
    if !authorized(req.headers(), token) {
        crate::telemetry::metrics::count("bbsso_admin_api_refused_total", &[]);
        tracing::warn!(target: "audit", event = "admin_api_refused", client_ip = %peer.ip(), path = req.uri().path(), "session API request without a valid bearer token");
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <admin.api_token>)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"bbsso-admin\""),
        );
        return r;
    }
    let query = query_pairs(req.uri().query());
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/admin/sessions") => {
            let user = query.iter().find(|(k, _)| k == "user").map(|(_, v)| v.as_str());
            match sso.store.list(user).await {
                Ok(sessions) => json(
                    StatusCode::OK,
                    &Listing {
                        sessions: sessions.iter().map(SessionInfo::from).collect(),
                    },
                ),
                Err(e) => store_error(&e),
            }
        }
        (Method::POST, "/admin/sessions/revoke") => {
            let target = match revoke_target(req, &query).await {
                Ok(t) => t,
                Err(message) => return error(StatusCode::BAD_REQUEST, &message),
            };
            match sso.revoke(&target, origin).await {
                Ok(ended) => json(
                    StatusCode::OK,
                    &Revoked {
                        revoked: ended.len(),
                        sessions: ended.iter().map(SessionInfo::from).collect(),
                    },
                ),
                Err(e) => store_error(&e),
            }
        }
        (_, "/admin/sessions") => method_not_allowed("GET"),
        (_, "/admin/sessions/revoke") => method_not_allowed("POST"),
        _ => error(
            StatusCode::NOT_FOUND,
            "not found: GET /admin/sessions or POST /admin/sessions/revoke",
        ),
    }
}

fn authorized(headers: &HeaderMap, token: &Secret) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            crate::oidc::id_token::constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes())
        })
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Exactly one of `user` and `session`, from the JSON body or the query.
async fn revoke_target(req: hyper::Request<Incoming>, query: &[(String, String)]) -> Result<Target, String> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| format!("the request body could not be read (at most {MAX_BODY} bytes)"))?
        .to_bytes();
    let mut wanted: RevokeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RevokeRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| format!("expected a JSON object {{\"user\": NAME}} or {{\"session\": ID}}: {e}"))?
    };
    for (k, v) in query {
        match k.as_str() {
            "user" => wanted.user = wanted.user.or(Some(v.clone())),
            "session" => wanted.session = wanted.session.or(Some(v.clone())),
            _ => {}
        }
    }
    match (
        wanted.user.filter(|u| !u.is_empty()),
        wanted.session.filter(|s| !s.is_empty()),
    ) {
        (Some(user), None) => Ok(Target::User(user)),
        (None, Some(id)) => Ok(Target::Session(id)),
        (Some(_), Some(_)) => Err("give either user or session, not both".into()),
        (None, None) => Err("say which sessions to revoke: {\"user\": NAME} or {\"session\": ID}".into()),
    }
}

fn store_error(e: &StoreError) -> Reply {
    let status = match e {
        StoreError::Unsupported => StatusCode::CONFLICT,
        StoreError::Unavailable(_) | StoreError::TooLarge => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allow}"));
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

/// Why the `sessions` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin listener at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("the admin listener answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// The client of the `sessions` command.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the admin listener at `address` (`host:port`).
    pub fn new(address: &str, token: &str) -> Self {
        ApiClient {
            base: format!("http://{address}"),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The live sessions of `user`, or of everyone.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<SessionInfo>, ClientError> {
        let mut req = self.http.get(format!("{}/admin/sessions", self.base));
        if let Some(u) = user {
            req = req.query(&[("user", u)]);
        }
        let listing: Listing = self.send(req).await?;
        Ok(listing.sessions)
    }

    /// Ends sessions on every replica.
    pub async fn revoke(&self, target: &Target) -> Result<Vec<SessionInfo>, ClientError> {
        let body = match target {
            Target::User(u) => serde_json::json!({ "user": u }),
            Target::Session(id) => serde_json::json!({ "session": id }),
        };
        let req = self
            .http
            .post(format!("{}/admin/sessions/revoke", self.base))
            .json(&body);
        let revoked: Revoked = self.send(req).await?;
        Ok(revoked.sessions)
    }

    async fn send<T: serde::de::DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            address: self.base.clone(),
            reason: e.without_url().to_string(),
        };
        let response = req.bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Refused {
            status: status.as_u16(),
            message: format!("unexpected answer: {e}"),
        })
    }
}

/// A table of sessions for the terminal, times in UTC.
pub fn table(sessions: &[SessionInfo]) -> String {
    let mut rows = vec![[
        "USER".to_owned(),
        "SESSION".to_owned(),
        "PROVIDER".to_owned(),
        "SIGNED IN (UTC)".to_owned(),
        "LAST ACTIVE (UTC)".to_owned(),
        "EXPIRES (UTC)".to_owned(),
        "REMEMBERED".to_owned(),
    ]];
    for s in sessions {
        rows.push([
            s.user.clone(),
            s.id.clone(),
            s.provider.clone(),
            utc(s.issued_at),
            utc(s.last_active),
            utc(s.expires_at),
            if s.remember_me { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` for unix seconds (proleptic Gregorian calendar).
pub fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let rem = t.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_316_741), "2026-12-03 16:52:21");
        assert_eq!(utc(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let token = Secret::new("0123456789abcdef0123".into());
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            authorized(&h, &token)
        };
        assert!(with("Bearer 0123456789abcdef0123"));
        assert!(!with("Bearer 0123456789abcdef012"));
        assert!(!with("bearer0123456789abcdef0123"));
        assert!(!with("Basic 0123456789abcdef0123"));
        assert!(!authorized(&HeaderMap::new(), &token));
    }

    #[test]
    fn table_lines_up() {
        let s = SessionInfo {
            id: "abcdefghij".into(),
            user: "alice".into(),
            email: None,
            display_name: None,
            provider: "cognito".into(),
            subject: "sub".into(),
            issued_at: 0,
            last_active: 60,
            expires_at: 3600,
            revalidated_at: 0,
            remember_me: true,
        };
        let t = table(&[s]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("USER   SESSION     PROVIDER"));
        assert!(lines[1].starts_with("alice  abcdefghij  cognito"));
        assert!(lines[1].ends_with("1970-01-01 01:00:00  yes"));
    }
}
