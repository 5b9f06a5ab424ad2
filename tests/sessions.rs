//! Session cookies: tampering, truncation, key rotation, expiry and idle time; a provider that is down at start.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::idp::*;
use common::minting::MintingProvider;
use common::*;

const NEW_KEY: &str = "m6b7Hqk1uXb0dVwLz8B9gE1sQ4yT2pR7nC5aF3jK8hA=";

async fn proxy_with(provider: &MintingProvider, upstream: SocketAddr, session: &str) -> ProxyProcess {
    let port = free_port();
    let text = sso_config(port, upstream, &provider.issuer, "oidc", "", "").replace(
        &format!("keys = [\"{SESSION_KEY}\"]\nrevalidate_every = \"2s\""),
        session,
    );
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;
    proxy
}

/// Signs in and returns the session cookie's value.
async fn session_cookie(proxy: &ProxyProcess) -> String {
    let client = browser();
    let r = client
        .get(format!("http://{}/sso/login?rd=/", proxy.addr))
        .send()
        .await
        .unwrap();
    let authorize = r.headers()["location"].to_str().unwrap().to_owned();
    let pending = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("bbsso_login_"))
        .unwrap();
    let back = client.get(authorize).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    let done = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(callback)
        .header("cookie", pending.split(';').next().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 302);
    let cookie = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("bbsso="))
        .expect("session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Max-Age"),
        "without remember-me the cookie ends with the browser: {cookie}"
    );
    assert!(cookie.len() < 1500, "the cookie stays small: {} bytes", cookie.len());
    cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("bbsso=")
        .to_owned()
}

/// Who the upstream sees for a page request carrying `cookie`, or the redirect location.
async fn who(proxy: &ProxyProcess, cookie: &str) -> Result<String, String> {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{}/projects", proxy.addr))
        .header("accept", "text/html")
        .header("cookie", format!("bbsso={cookie}"))
        .send()
        .await
        .unwrap();
    if r.status() == 302 {
        return Err(r.headers()["location"].to_str().unwrap().to_owned());
    }
    let v: serde_json::Value = r.json().await.unwrap();
    Ok(v["user"].as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_and_rotated_cookies() {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let upstream = spawn_identity_upstream("http://127.0.0.1:1".into()).await;
    let old = proxy_with(&provider, upstream, &format!("keys = [\"{SESSION_KEY}\"]")).await;
    let cookie = session_cookie(&old).await;
    assert_eq!(who(&old, &cookie).await, Ok("mallory".into()));

    let mut tampered = cookie.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(who(&old, &tampered).await.unwrap_err().starts_with("/sso/login"));
    assert!(
        who(&old, &cookie[..cookie.len() - 10])
            .await
            .unwrap_err()
            .starts_with("/sso/login")
    );
    assert!(who(&old, "not-even-base64!!").await.is_err());

    // Rotation: a new key first, the old one still in the ring: old cookies still work.
    let rotated = proxy_with(
        &provider,
        upstream,
        &format!("keys = [\"{NEW_KEY}\", \"{SESSION_KEY}\"]"),
    )
    .await;
    assert_eq!(who(&rotated, &cookie).await, Ok("mallory".into()));
    // Once the old key is removed, its cookies are refused.
    let removed = proxy_with(&provider, upstream, &format!("keys = [\"{NEW_KEY}\"]")).await;
    assert!(who(&removed, &cookie).await.is_err());
    // And new cookies sealed by the rotated proxy are read by the one with only the new key.
    let fresh = session_cookie(&rotated).await;
    assert_eq!(who(&removed, &fresh).await, Ok("mallory".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_idle_sessions_end() {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let upstream = spawn_identity_upstream("http://127.0.0.1:1".into()).await;
    let short = proxy_with(
        &provider,
        upstream,
        &format!("keys = [\"{SESSION_KEY}\"]\nlifetime = \"2s\"\nidle_timeout = \"2s\""),
    )
    .await;
    let idle = proxy_with(
        &provider,
        upstream,
        &format!("keys = [\"{SESSION_KEY}\"]\nlifetime = \"1h\"\nidle_timeout = \"2s\""),
    )
    .await;
    let c1 = session_cookie(&short).await;
    let c2 = session_cookie(&idle).await;
    assert_eq!(who(&short, &c1).await, Ok("mallory".into()));
    assert_eq!(who(&idle, &c2).await, Ok("mallory".into()));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        who(&short, &c1).await.unwrap_err().starts_with("/sso/login"),
        "past the absolute lifetime"
    );
    assert!(
        who(&idle, &c2).await.unwrap_err().starts_with("/sso/login"),
        "idle for longer than idle_timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_starts_with_the_provider_down_and_becomes_ready_when_it_comes_up() {
    let port = free_port();
    let idp_port = free_port();
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let proxy = ProxyProcess::start(&sso_config(
        port,
        upstream,
        &format!("http://127.0.0.1:{idp_port}"),
        "cognito",
        "",
        "",
    ));
    let (status, _, body) = get(proxy.admin, "/readyz", &[]).await;
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("not loaded yet for: idp"));
    let client = browser();
    let r = client
        .get(format!("http://{}/sso/login", proxy.addr))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a clear page, not a 500 or a loop");
    assert!(r.text().await.unwrap().contains("Sign-in is unavailable right now"));
    proxy.wait_for_log(|v| v["target"] == "audit" && v["reason"] == "provider_unavailable");

    // The provider comes up on its address; the proxy notices by itself.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", idp_port)).await.unwrap();
    drop(listener);
    let provider = RealProvider::start(port, &[("PORT", &idp_port.to_string())]);
    assert_eq!(provider.issuer, format!("http://127.0.0.1:{idp_port}"));
    tokio::time::timeout(Duration::from_secs(30), wait_ready(proxy.admin))
        .await
        .expect("ready after the provider came up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_sign_in_cookies_are_capped() {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let upstream = spawn_identity_upstream("http://127.0.0.1:1".into()).await;
    let proxy = proxy_with(&provider, upstream, &format!("keys = [\"{SESSION_KEY}\"]")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // A browser that keeps every cookie it is given, as a jar would, started ten sign-ins in ten tabs.
    let mut jar: Vec<(String, String)> = Vec::new();
    for _ in 0..10 {
        let header = jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let r = client
            .get(format!("http://{}/sso/login", proxy.addr))
            .header("cookie", header)
            .send()
            .await
            .unwrap();
        for set in r.headers().get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            jar.retain(|(n, _)| n != name);
            if !attrs.contains("Max-Age=0") {
                jar.push((name.to_owned(), value.to_owned()));
            }
        }
        let pending = jar.iter().filter(|(n, _)| n.starts_with("bbsso_login_")).count();
        assert!(pending <= 3, "{pending} pending sign-in cookies");
    }
    assert_eq!(
        jar.iter().filter(|(n, _)| n.starts_with("bbsso_login_")).count(),
        3,
        "the newest three are kept"
    );
}
