//! Sign-in test pieces: the real OpenID provider (node, panva/oidc-provider), a Bitbucket stand-in that checks
//! the identity headers, and a browser-like HTTP client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use super::{Body, full, spawn_upstream};

pub const ASSERTION_SECRET: &str = "test-assertion-secret-0123456789abcdef";
pub const SESSION_KEY: &str = "q0Wbkz8pQfN3v0G9eUu7bBq8JrYI7bqZ2mXwVt5s1lY=";
pub const CLIENT_ID: &str = "bbsso-client";
pub const CLIENT_SECRET: &str = "bbsso-client-secret";

/// A free loopback port (the proxy's public URL must be known before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real provider process; killed when dropped.
pub struct RealProvider {
    child: Child,
    pub issuer: String,
}

impl RealProvider {
    /// Starts the Cognito-shaped provider for a proxy on `proxy_port`.
    pub fn start(proxy_port: u16, env: &[(&str, &str)]) -> Self {
        let dir = super::repo_path("tests/provider");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "run `bash scripts/setup` first: tests/provider/node_modules is missing"
        );
        let mut cmd = Command::new("node");
        cmd.arg("server.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URIS", format!("http://127.0.0.1:{proxy_port}/sso/callback"))
            .env("LOGOUT_URIS", format!("http://127.0.0.1:{proxy_port}/sso/logged-out"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("provider output");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("provider said {line:?}: {e}"));
        RealProvider {
            child,
            issuer: v["issuer"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn set_enabled(&self, user: &str, enabled: bool) {
        let action = if enabled { "enable" } else { "disable" };
        reqwest::Client::new()
            .post(format!("{}/test/users/{user}/{action}", self.issuer))
            .send()
            .await
            .unwrap();
    }

    pub async fn refreshes(&self) -> u64 {
        let v: serde_json::Value = reqwest::get(format!("{}/test/refreshes", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["refreshes"].as_u64().unwrap()
    }
}

impl Drop for RealProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proxy configuration with SSO on, in front of `upstream`, for a provider at `issuer`.
pub fn sso_config(
    port: u16,
    upstream: SocketAddr,
    issuer: &str,
    kind: &str,
    extra_provider: &str,
    rest: &str,
) -> String {
    let domain = if kind == "cognito" {
        format!("cognito_domain = \"{issuer}\"\n")
    } else {
        String::new()
    };
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:{port}"
# The tests sign in hundreds of times from one address; tests/abuse.rs sets a limit.
rate_limit_per_minute = 0

[upstream]
url = "http://{upstream}"

[identity]
assertion_secret = "{ASSERTION_SECRET}"

[session]
keys = ["{SESSION_KEY}"]
{session_extra}

[[providers]]
id = "idp"
kind = "{kind}"
issuer = "{issuer}"
{domain}client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
{extra_provider}

{rest}
"#,
        session_extra = "revalidate_every = \"2s\""
    )
}

/// A Bitbucket stand-in that reports who the proxy says the user is, after verifying the assertion as the
/// companion authenticator would (HS256, aud, iss, exp, `sub` = username header).
pub async fn spawn_identity_upstream(public_url: String) -> SocketAddr {
    spawn_upstream(move |req: Request<Incoming>| {
        let public_url = public_url.clone();
        async move {
            Response::builder()
                .header("content-type", "application/json")
                .body(identity_report(&req, &public_url))
                .unwrap()
        }
    })
    .await
}

fn identity_report(req: &Request<Incoming>, public_url: &str) -> Body {
    let user = req
        .headers()
        .get("x-forwarded-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let assertion = req.headers().get("x-bbsso-assertion").and_then(|v| v.to_str().ok());
    let mut name = serde_json::Value::Null;
    let verdict = match assertion {
        None => "absent".to_owned(),
        Some(token) => {
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            v.set_audience(&["bitbucket"]);
            v.set_issuer(&[format!("{public_url}/sso")]);
            v.leeway = 60;
            match jsonwebtoken::decode::<serde_json::Value>(
                token,
                &jsonwebtoken::DecodingKey::from_secret(ASSERTION_SECRET.as_bytes()),
                &v,
            ) {
                Ok(data) if data.claims["sub"].as_str() == user.as_deref() => {
                    name = data.claims["name"].clone();
                    "valid".to_owned()
                }
                Ok(_) => "invalid: sub differs from the username header".to_owned(),
                Err(e) => format!("invalid: {e}"),
            }
        }
    };
    let cookies = req
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    full(
        json!({ "path": req.uri().path(), "user": user, "name": name, "assertion": verdict, "cookie": cookies })
            .to_string(),
    )
}

/// A browser-like client: a cookie jar, no automatic redirects (tests follow them to see every hop).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// One hop of a walk.
pub struct Walk {
    pub status: u16,
    pub url: String,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
    /// Every URL visited, in order.
    pub visited: Vec<String>,
}

/// Sends a request and follows redirects (as a browser: 303 and 302 become GET), returning the last answer.
pub async fn walk(client: &reqwest::Client, first: reqwest::RequestBuilder) -> Walk {
    walk_until(client, first, |_| false).await
}

/// As [`walk`], but stops before following a redirect to a URL `stop` picks: the returned `url` is that target,
/// not yet visited (to send it elsewhere, as a load balancer might).
pub async fn walk_until(
    client: &reqwest::Client,
    first: reqwest::RequestBuilder,
    stop: impl Fn(&reqwest::Url) -> bool,
) -> Walk {
    let mut response = first
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .expect("request");
    let mut visited = vec![response.url().to_string()];
    for _ in 0..20 {
        if !response.status().is_redirection() {
            break;
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .expect("location")
            .to_owned();
        let next = response.url().join(&location).expect("absolute location");
        if stop(&next) {
            return Walk {
                status: response.status().as_u16(),
                url: next.to_string(),
                body: String::new(),
                headers: response.headers().clone(),
                visited,
            };
        }
        response = client
            .get(next.clone())
            .header("accept", "text/html,application/xhtml+xml")
            .send()
            .await
            .expect("request");
        visited.push(next.to_string());
    }
    let status = response.status().as_u16();
    let url = response.url().to_string();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    Walk {
        status,
        url,
        body,
        headers,
        visited,
    }
}

/// Fills the provider's login form on `page` (its hidden fields included, as a browser sends them) and walks on.
pub async fn sign_in(client: &reqwest::Client, page: &Walk, user: &str, password: &str) -> Walk {
    sign_in_until(client, page, user, password, |_| false).await
}

/// As [`sign_in`], stopping before a redirect `stop` picks (see [`walk_until`]).
pub async fn sign_in_until(
    client: &reqwest::Client,
    page: &Walk,
    user: &str,
    password: &str,
    stop: impl Fn(&reqwest::Url) -> bool,
) -> Walk {
    let action = page
        .body
        .split("action=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a login form");
    let url = reqwest::Url::parse(&page.url)
        .unwrap()
        .join(&action.replace("&amp;", "&"))
        .unwrap();
    let mut fields: Vec<(String, String)> = page
        .body
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.split("value=\"").nth(1)?.split('"').next()?;
            Some((
                name.to_owned(),
                value.replace("&amp;", "&").replace("&#x2F;", "/").replace("&#47;", "/"),
            ))
        })
        .collect();
    fields.push(("username".into(), user.into()));
    fields.push(("password".into(), password.into()));
    walk_until(client, client.post(url).form(&fields), stop).await
}

/// Waits until the proxy reports ready (providers loaded).
pub async fn wait_ready(admin: SocketAddr) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("proxy never became ready");
}

/// Stand-in settings with the test secret and the default header names.
pub fn standin_settings(
    admin: &str,
    password: &str,
    issuer: String,
    trusted: &[&str],
    max_users: usize,
) -> bbsso::standin::Settings {
    bbsso::standin::Settings {
        admin_user: admin.into(),
        admin_password: password.into(),
        assertion_secret: ASSERTION_SECRET.into(),
        issuer,
        user_header: "X-Forwarded-User".into(),
        assertion_header: "X-Bbsso-Assertion".into(),
        trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        max_users,
    }
}

/// Serves a stand-in on a fresh loopback port; returns its address (the proxy's upstream).
pub async fn serve_standin(standin: &bbsso::standin::Standin) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(standin.clone().serve(listener));
    addr
}

/// Adds a second provider, `partner`, to an [`sso_config`] text (before its `[bitbucket]` section).
pub fn with_partner_provider(text: &str, issuer: &str) -> String {
    let second = format!(
        "\n[[providers]]\nid = \"partner\"\ndisplay_name = \"Partner\"\nissuer = \"{issuer}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\n"
    );
    text.replacen("\n[bitbucket]", &format!("{second}\n[bitbucket]"), 1)
}
