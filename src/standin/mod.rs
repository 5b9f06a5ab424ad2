//! A Bitbucket stand-in for tests and the demo, following `bitbucket-facts.md`: the admin REST endpoints for
//! users and groups (Basic auth, `X-Atlassian-Token`, paging, 409s, 404s, read-only directory users), and the
//! companion authenticator's behaviour (a request is logged in only when the signed assertion verifies and comes
//! from a trusted address; a session bound to a user ends when a later request names nobody or someone else).
//!
//! It is not Bitbucket: it keeps everything in memory and renders minimal pages.

mod rest;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use ipnet::IpNet;
use serde_json::{Value, json};

/// A user of the stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub display_name: String,
    pub email: String,
    /// Local password (users created by REST get one they never see).
    pub password: String,
    /// "Bitbucket Internal Directory", or a read-only one such as "LDAP".
    pub directory: String,
    pub mutable: bool,
    pub groups: BTreeSet<String>,
}

/// How the stand-in authenticates the proxy and its admin account.
#[derive(Debug, Clone)]
pub struct Settings {
    pub admin_user: String,
    pub admin_password: String,
    pub assertion_secret: String,
    /// Expected `iss` of assertions: `{public_url}/sso`.
    pub issuer: String,
    pub user_header: String,
    pub assertion_header: String,
    /// Addresses the companion authenticator trusts (empty: none, closed by default).
    pub trusted: Vec<IpNet>,
    /// Licence limit: creating more users than this answers 403.
    pub max_users: usize,
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, User>,
    groups: BTreeSet<String>,
    /// BITBUCKETSESSIONID → (user, authenticated by the identity headers)
    sessions: HashMap<String, (String, bool)>,
    rest_down: bool,
    /// The next user creation finds the user already created by "someone else" and answers 409.
    conflict_next_create: bool,
    requests: Vec<String>,
}

/// The stand-in; cheap to clone, shared state.
#[derive(Clone)]
pub struct Standin {
    settings: Arc<Settings>,
    state: Arc<Mutex<State>>,
}

type Reply = Response<Full<Bytes>>;

fn key(name: &str) -> String {
    name.to_lowercase()
}

impl Standin {
    /// An empty stand-in with the given settings and the admin account.
    pub fn new(settings: Settings) -> Self {
        let s = Standin {
            settings: Arc::new(settings),
            state: Arc::new(Mutex::new(State::default())),
        };
        let admin = s.settings.admin_user.clone();
        let password = s.settings.admin_password.clone();
        s.add_user(
            &admin,
            "Provisioning service",
            "sso-provisioner@localhost",
            &password,
            true,
            &[],
        );
        s
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a user (and any group it names).
    pub fn add_user(
        &self,
        name: &str,
        display_name: &str,
        email: &str,
        password: &str,
        mutable: bool,
        groups: &[&str],
    ) {
        let mut st = self.lock();
        for g in groups {
            st.groups.insert((*g).to_owned());
        }
        st.users.insert(
            key(name),
            User {
                name: name.to_owned(),
                display_name: display_name.to_owned(),
                email: email.to_owned(),
                password: password.to_owned(),
                directory: if mutable {
                    "Bitbucket Internal Directory".into()
                } else {
                    "LDAP".into()
                },
                mutable,
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            },
        );
    }

    /// Adds a group.
    pub fn add_group(&self, name: &str) {
        self.lock().groups.insert(name.to_owned());
    }

    /// A user by name.
    pub fn user(&self, name: &str) -> Option<User> {
        self.lock().users.get(&key(name)).cloned()
    }

    /// Whether a group exists.
    pub fn has_group(&self, name: &str) -> bool {
        self.lock().groups.iter().any(|g| g.eq_ignore_ascii_case(name))
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    /// Makes every REST call answer 503 (Bitbucket restarting), or not.
    pub fn set_rest_down(&self, down: bool) {
        self.lock().rest_down = down;
    }

    /// Makes the next user creation race with a concurrent one: the user appears, and the call answers 409.
    pub fn simulate_concurrent_create(&self) {
        self.lock().conflict_next_create = true;
    }

    /// Every request seen, as "METHOD path?query" (for tests).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.handle(req, peer).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Reply {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let query: HashMap<String, String> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        self.lock().requests.push(format!("{} {}", parts.method, parts.uri));

        if path == "/status" {
            return json_reply(StatusCode::OK, json!({"state": "RUNNING"}));
        }
        if path.starts_with("/rest/api/1.0/admin/") {
            return rest::admin(self, &parts, &path, &query, &body);
        }
        let (user, set_cookie) = self.authenticate(&parts.headers, peer);
        let mut reply = match (parts.method.as_str(), path.as_str()) {
            (_, p) if p.starts_with("/rest/") || p.starts_with("/scm/") => match &user {
                Some(u) => json_reply(StatusCode::OK, self.whoami(u)),
                None => json_reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"errors": [{"message": "Authentication required"}]}),
                ),
            },
            ("GET", "/login") => html(
                StatusCode::OK,
                "<h1>Log in to Bitbucket</h1><form method=\"post\" action=\"/j_atl_security_check\"><input name=\"j_username\"><input name=\"j_password\" type=\"password\"><button>Log in</button></form>",
            ),
            ("POST", "/j_atl_security_check") => self.password_login(&body),
            (_, "/j_atl_security_logout") => {
                let mut r = redirect("/login?logout=true");
                if let Some(sid) = session_id(&parts.headers) {
                    self.lock().sessions.remove(&sid);
                }
                r.headers_mut().append(
                    header::SET_COOKIE,
                    header::HeaderValue::from_static("BITBUCKETSESSIONID=; Path=/; Max-Age=0"),
                );
                r
            }
            _ => match &user {
                Some(u) => {
                    let me = self.whoami(u);
                    if parts
                        .headers
                        .get(header::ACCEPT)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|a| a.contains("application/json"))
                    {
                        json_reply(StatusCode::OK, me)
                    } else {
                        html(
                            StatusCode::OK,
                            &format!(
                                "<h1>Bitbucket stand-in</h1><p>Logged in as <strong id=\"user\">{}</strong> ({})</p><p>Groups: <span id=\"groups\">{}</span></p><p><a href=\"/j_atl_security_logout\">Log out</a></p>",
                                crate::web::escape_html(me["name"].as_str().unwrap_or_default()),
                                crate::web::escape_html(me["displayName"].as_str().unwrap_or_default()),
                                crate::web::escape_html(
                                    &me["groups"]
                                        .as_array()
                                        .map(|g| g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                                        .unwrap_or_default()
                                ),
                            ),
                        )
                    }
                }
                None => redirect(&format!(
                    "/login?next={}",
                    url::form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
                )),
            },
        };
        if let Some(c) = set_cookie {
            reply.headers_mut().append(header::SET_COOKIE, c);
        }
        reply
    }

    fn whoami(&self, name: &str) -> Value {
        let st = self.lock();
        match st.users.get(&key(name)) {
            Some(u) => {
                json!({"name": u.name, "displayName": u.display_name, "emailAddress": u.email, "groups": u.groups})
            }
            None => json!({"name": name}),
        }
    }

    /// The companion authenticator: identity headers first, then the session, with `validateAuthentication`'s rule.
    fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer: SocketAddr,
    ) -> (Option<String>, Option<header::HeaderValue>) {
        let named = headers
            .get(self.settings.user_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let assertion = headers
            .get(self.settings.assertion_header.as_str())
            .and_then(|v| v.to_str().ok());
        let trusted = self.settings.trusted.iter().any(|n| n.contains(&peer.ip()));
        let asserted = match (&named, assertion) {
            (Some(user), Some(token)) if trusted && self.verify(token, user) && self.user(user).is_some() => {
                Some(user.clone())
            }
            _ => None,
        };
        let sid = session_id(headers);
        let mut st = self.lock();
        let bound = sid.as_ref().and_then(|s| st.sessions.get(s).cloned());
        match (asserted, bound) {
            (Some(user), Some((bound_user, _))) if bound_user.eq_ignore_ascii_case(&user) => (Some(user), None),
            (Some(user), _) => {
                if let Some(s) = &sid {
                    st.sessions.remove(s);
                }
                let new_sid = crate::oidc::flow::random_token(16);
                st.sessions.insert(new_sid.clone(), (user.clone(), true));
                (
                    Some(user),
                    header::HeaderValue::from_str(&format!("BITBUCKETSESSIONID={new_sid}; Path=/; HttpOnly")).ok(),
                )
            }
            // A session the identity headers created ends when a later request names nobody.
            (None, Some((_, true))) => {
                if let Some(s) = &sid {
                    st.sessions.remove(s);
                }
                (
                    None,
                    header::HeaderValue::from_static("BITBUCKETSESSIONID=; Path=/; Max-Age=0").into(),
                )
            }
            (None, Some((user, false))) => (Some(user), None),
            (None, None) => (None, None),
        }
    }

    fn verify(&self, token: &str, user: &str) -> bool {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&["bitbucket"]);
        v.set_issuer(&[self.settings.issuer.as_str()]);
        v.leeway = 60;
        jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(self.settings.assertion_secret.as_bytes()),
            &v,
        )
        .is_ok_and(|d| d.claims["sub"].as_str() == Some(user))
    }

    fn password_login(&self, body: &[u8]) -> Reply {
        let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
        let (name, password) = (
            form.get("j_username").cloned().unwrap_or_default(),
            form.get("j_password").cloned().unwrap_or_default(),
        );
        let ok = self
            .user(&name)
            .is_some_and(|u| crate::oidc::id_token::constant_time_eq(u.password.as_bytes(), password.as_bytes()));
        if !ok {
            return html(
                StatusCode::UNAUTHORIZED,
                "<h1>Log in to Bitbucket</h1><p>Wrong username or password.</p>",
            );
        }
        let sid = crate::oidc::flow::random_token(16);
        self.lock().sessions.insert(sid.clone(), (name, false));
        let mut r = redirect("/dashboard");
        if let Ok(c) = header::HeaderValue::from_str(&format!("BITBUCKETSESSIONID={sid}; Path=/; HttpOnly")) {
            r.headers_mut().append(header::SET_COOKIE, c);
        }
        r
    }
}

fn session_id(headers: &http::HeaderMap) -> Option<String> {
    crate::session::cookies::get(headers, "BITBUCKETSESSIONID")
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn json_reply(status: StatusCode, v: Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn html(status: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(format!(
        "<!doctype html><html><body>{body}</body></html>"
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn redirect(location: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = header::HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
