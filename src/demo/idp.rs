//! A development OpenID provider for the demo, shaped like AWS Cognito: `/oauth2/authorize` with a login form,
//! `/oauth2/token` (code with PKCE S256, refresh), `/oauth2/userInfo`, `/oauth2/revoke`, `/logout` with
//! `logout_uri`, RS256 ID tokens with `cognito:username`, `cognito:groups` and `token_use`. For demos only:
//! in memory, plain HTTP on 127.0.0.1, fixed users.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use crate::oidc::flow::{pkce_challenge, random_token};
use crate::oidc::id_token::constant_time_eq;
use crate::web::escape_html;

/// A demo user.
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub username: &'static str,
    pub password: &'static str,
    pub email: &'static str,
    pub name: &'static str,
    pub groups: &'static [&'static str],
}

/// The demo's users.
pub const USERS: [DemoUser; 3] = [
    DemoUser {
        username: "alice",
        password: "alice-password",
        email: "alice@example.com",
        name: "Alice Example",
        groups: &["dev"],
    },
    DemoUser {
        username: "bob",
        password: "bob-password",
        email: "bob@example.com",
        name: "Bob Builder",
        groups: &["dev", "admins"],
    },
    DemoUser {
        username: "carol",
        password: "carol-password",
        email: "carol@partner.example",
        name: "Carol Partner",
        groups: &[],
    },
];

struct Grant {
    user: usize,
    nonce: String,
    challenge: String,
    redirect_uri: String,
    created: std::time::Instant,
}

struct State {
    codes: HashMap<String, Grant>,
    refresh: HashMap<String, usize>,
    access: HashMap<String, usize>,
}

/// The provider.
#[derive(Clone)]
pub struct DevIdp {
    issuer: String,
    client_id: String,
    client_secret: String,
    key: Arc<EncodingKey>,
    jwk: Arc<Value>,
    state: Arc<Mutex<State>>,
}

type Reply = Response<Full<Bytes>>;

impl DevIdp {
    /// A provider for `issuer` (its own base URL) with one confidential client.
    pub fn new(issuer: &str, client_id: &str, client_secret: &str) -> Result<Self, String> {
        let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| e.to_string())?;
        let pem = private
            .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let public = private.to_public_key();
        let jwk = json!({"kty": "RSA", "kid": "demo-key", "use": "sig", "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())});
        Ok(DevIdp {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            key: Arc::new(key),
            jwk: Arc::new(jwk),
            state: Arc::new(Mutex::new(State {
                codes: HashMap::new(),
                refresh: HashMap::new(),
                access: HashMap::new(),
            })),
        })
    }

    /// Serves on `listener` until dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let query: HashMap<String, String> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        let iss = &self.issuer;
        match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/.well-known/openid-configuration") => json_reply(
                StatusCode::OK,
                json!({
                    "issuer": iss,
                    "authorization_endpoint": format!("{iss}/oauth2/authorize"),
                    "token_endpoint": format!("{iss}/oauth2/token"),
                    "userinfo_endpoint": format!("{iss}/oauth2/userInfo"),
                    "jwks_uri": format!("{iss}/.well-known/jwks.json"),
                    "end_session_endpoint": format!("{iss}/logout"),
                    "revocation_endpoint": format!("{iss}/oauth2/revoke"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "scopes_supported": ["openid", "email", "profile"],
                }),
            ),
            (&Method::GET, "/.well-known/jwks.json") => json_reply(StatusCode::OK, json!({"keys": [*self.jwk]})),
            (&Method::GET, "/oauth2/authorize") => self.authorize_form(&query, None),
            (&Method::POST, "/oauth2/authorize") => self.authorize_post(&form),
            (&Method::POST, "/oauth2/token") => self.token(&parts.headers, &form),
            (&Method::GET, "/oauth2/userInfo") => {
                let token = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                match self.lock().access.get(token).copied() {
                    Some(u) => json_reply(StatusCode::OK, self.claims(u, None, false)),
                    None => json_reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"})),
                }
            }
            (&Method::POST, "/oauth2/revoke") => {
                if let Some(t) = form.get("token") {
                    self.lock().refresh.remove(t);
                }
                json_reply(StatusCode::OK, json!({}))
            }
            (&Method::GET, "/logout") => {
                let target = query
                    .get("logout_uri")
                    .or_else(|| query.get("post_logout_redirect_uri"))
                    .cloned()
                    .unwrap_or_else(|| "/".into());
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::FOUND;
                if let Ok(v) = header::HeaderValue::from_str(&target) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            _ => json_reply(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
    }

    fn authorize_form(&self, q: &HashMap<String, String>, error: Option<&str>) -> Reply {
        if q.get("client_id") != Some(&self.client_id) || q.get("response_type").map(String::as_str) != Some("code") {
            return html(
                StatusCode::BAD_REQUEST,
                "<h1>Bad authorization request</h1><p>Unknown client or response type.</p>",
            );
        }
        if q.get("code_challenge_method").map(String::as_str) != Some("S256")
            || q.get("code_challenge").is_none_or(String::is_empty)
        {
            return html(
                StatusCode::BAD_REQUEST,
                "<h1>PKCE required</h1><p>This provider requires PKCE with S256.</p>",
            );
        }
        let hidden: String = ["client_id", "redirect_uri", "state", "nonce", "code_challenge", "scope"]
            .iter()
            .map(|k| {
                format!(
                    "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                    escape_html(q.get(*k).map(String::as_str).unwrap_or(""))
                )
            })
            .collect();
        let users: String = USERS
            .iter()
            .map(|u| format!("<li><code>{}</code> / <code>{}</code></li>", u.username, u.password))
            .collect();
        let err = error
            .map(|e| format!("<p class=\"notice\" role=\"alert\">{}</p>", escape_html(e)))
            .unwrap_or_default();
        html(
            StatusCode::OK,
            &format!(
                "<h1>Demo sign-in service</h1>{err}<form method=\"post\" action=\"/oauth2/authorize\">{hidden}<label for=\"username\">Username</label><input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" autofocus><label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\"><button type=\"submit\">Sign in</button></form><p>Demo users:</p><ul>{users}</ul>"
            ),
        )
    }

    fn authorize_post(&self, f: &HashMap<String, String>) -> Reply {
        let found = USERS.iter().position(|u| {
            Some(&u.username.to_owned()) == f.get("username")
                && f.get("password")
                    .is_some_and(|p| constant_time_eq(p.as_bytes(), u.password.as_bytes()))
        });
        let Some(user) = found else {
            return self.authorize_form(
                &{
                    let mut q = f.clone();
                    q.insert("response_type".into(), "code".into());
                    q.insert("code_challenge_method".into(), "S256".into());
                    q
                },
                Some("Wrong username or password."),
            );
        };
        let redirect_uri = f.get("redirect_uri").cloned().unwrap_or_default();
        let Ok(mut back) = url::Url::parse(&redirect_uri) else {
            return html(StatusCode::BAD_REQUEST, "<h1>Bad redirect URI</h1>");
        };
        let code = random_token(24);
        self.lock().codes.insert(
            code.clone(),
            Grant {
                user,
                nonce: f.get("nonce").cloned().unwrap_or_default(),
                challenge: f.get("code_challenge").cloned().unwrap_or_default(),
                redirect_uri,
                created: std::time::Instant::now(),
            },
        );
        back.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", f.get("state").map(String::as_str).unwrap_or(""));
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::FOUND;
        if let Ok(v) = header::HeaderValue::from_str(back.as_str()) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r
    }

    fn client_ok(&self, headers: &http::HeaderMap, f: &HashMap<String, String>) -> bool {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let (id, secret) = match basic.as_deref().and_then(|c| c.split_once(':')) {
            Some((i, s)) => (
                url::form_urlencoded::parse(format!("x={i}").as_bytes())
                    .next()
                    .map(|p| p.1.into_owned())
                    .unwrap_or_default(),
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|p| p.1.into_owned())
                    .unwrap_or_default(),
            ),
            None => (
                f.get("client_id").cloned().unwrap_or_default(),
                f.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        id == self.client_id && constant_time_eq(secret.as_bytes(), self.client_secret.as_bytes())
    }

    fn token(&self, headers: &http::HeaderMap, f: &HashMap<String, String>) -> Reply {
        if !self.client_ok(headers, f) {
            return json_reply(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
        }
        let (user, nonce) = match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let grant = f.get("code").and_then(|c| self.lock().codes.remove(c));
                let Some(g) = grant else {
                    return json_reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
                };
                let verifier_ok = f.get("code_verifier").is_some_and(|v| pkce_challenge(v) == g.challenge);
                if !verifier_ok || f.get("redirect_uri") != Some(&g.redirect_uri) || g.created.elapsed().as_secs() > 300
                {
                    return json_reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
                }
                (g.user, Some(g.nonce))
            }
            Some("refresh_token") => match f.get("refresh_token").and_then(|t| self.lock().refresh.get(t).copied()) {
                Some(u) => (u, None),
                None => return json_reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})),
            },
            _ => return json_reply(StatusCode::BAD_REQUEST, json!({"error": "unsupported_grant_type"})),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("demo-key".into());
        let Ok(id_token) = jsonwebtoken::encode(&header, &self.claims(user, nonce.as_deref(), true), &self.key) else {
            return json_reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "server_error"}));
        };
        let access = random_token(24);
        let mut st = self.lock();
        st.access.insert(access.clone(), user);
        let mut body =
            json!({"id_token": id_token, "access_token": access, "token_type": "Bearer", "expires_in": 3600});
        if nonce.is_some() {
            let refresh = random_token(32);
            st.refresh.insert(refresh.clone(), user);
            body["refresh_token"] = json!(refresh);
        }
        json_reply(StatusCode::OK, body)
    }

    fn claims(&self, user: usize, nonce: Option<&str>, id_token: bool) -> Value {
        let u = &USERS[user];
        let now = crate::session::now();
        let sub = format!("00000000-0000-4000-8000-00000000000{user}");
        let mut c = json!({
            "sub": sub, "cognito:username": u.username, "email": u.email, "name": u.name,
            "email_verified": if id_token { json!(true) } else { json!("true") },
        });
        if !u.groups.is_empty() {
            c["cognito:groups"] = json!(u.groups);
        }
        if id_token {
            c["iss"] = json!(self.issuer);
            c["aud"] = json!(self.client_id);
            c["iat"] = json!(now);
            c["exp"] = json!(now + 3600);
            c["auth_time"] = json!(now);
            c["token_use"] = json!("id");
            if let Some(n) = nonce {
                c["nonce"] = json!(n);
            }
        }
        c
    }
}

fn json_reply(status: StatusCode, v: Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, body: &str) -> Reply {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Demo sign-in service</title>{}</head><body><main>{body}</main></body></html>",
        crate::web::templates::STYLE
    );
    crate::web::html_page(status, page)
}
