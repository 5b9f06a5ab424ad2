//! Several replicas behind one load balancer without sticky sessions, with the real OpenID provider: the login
//! starts on replica A and the provider's redirect lands on B. With Redis: sessions work everywhere, revocation
//! (admin API and the `sessions` command) is refused on the other replica at once, a refresh due on both is
//! redeemed once, and a Redis outage gives a 503 page that recovers by itself. Without Redis (cookies): the same
//! two replicas, and a session key rotation across rolling restarts that logs nobody out.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::idp::*;
use common::redis_server::Redis;
use common::*;
use reqwest::cookie::CookieStore;

const ADMIN_TOKEN: &str = "admin-api-token-0123456789";
const KEY_2: &str = "m6b7Hqk1uXb0dVwLz8B9gE1sQ4yT2pR7nC5aF3jK8hA=";

/// A replica listening on `listen_port` behind the public URL `http://127.0.0.1:{public_port}`.
fn replica_config(
    public_port: u16,
    listen_port: u16,
    upstream: std::net::SocketAddr,
    issuer: &str,
    session: &str,
) -> String {
    sso_config(
        public_port,
        upstream,
        issuer,
        "cognito",
        "",
        &format!("[admin]\napi_token = \"{ADMIN_TOKEN}\"\n"),
    )
    .replacen(
        &format!("listen = \"127.0.0.1:{public_port}\""),
        &format!("listen = \"127.0.0.1:{listen_port}\""),
        1,
    )
    .replacen(
        &format!("keys = [\"{SESSION_KEY}\"]\nrevalidate_every = \"2s\""),
        session,
        1,
    )
}

/// Stops a replica (its port is free again afterwards).
fn stop(proxy: &mut ProxyProcess) {
    let _ = proxy.child.kill();
    let _ = proxy.child.wait();
}

/// A browser whose cookie jar the test can read.
fn jar_browser() -> (reqwest::Client, Arc<reqwest::cookie::Jar>) {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    (client, jar)
}

/// The session cookie (`bbsso=...`) the jar holds for the loopback host.
fn session_cookie(jar: &reqwest::cookie::Jar, port: u16) -> String {
    let url = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let header = jar.cookies(&url).expect("cookies");
    header
        .to_str()
        .unwrap()
        .split("; ")
        .find(|c| c.starts_with("bbsso="))
        .expect("a session cookie")
        .to_owned()
}

/// Signs `user` in: the login starts on `start`, the provider's redirect to the callback goes to `finish`.
async fn sign_in_across(client: &reqwest::Client, start: &ProxyProcess, finish: &ProxyProcess, user: &str) {
    let page = walk(client, client.get(start.url("/dashboard"))).await;
    assert!(
        page.body.contains("Sign in"),
        "the provider's login form: {}",
        page.body
    );
    let at_callback = sign_in_until(client, &page, user, &format!("{user}-password"), |u| {
        u.path() == "/sso/callback"
    })
    .await;
    let mut callback = reqwest::Url::parse(&at_callback.url).unwrap();
    callback.set_port(Some(finish.addr.port())).unwrap();
    let landed = walk(client, client.get(callback)).await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    let seen: serde_json::Value = serde_json::from_str(&landed.body).unwrap();
    assert_eq!(seen["user"], user);
    assert_eq!(seen["path"], "/dashboard");
}

/// A browser page request with this cookie, redirects not followed.
async fn page_request(url: String, cookie: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(url)
        .header("cookie", cookie)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
}

/// A REST call that reached Bitbucket without identity (Bitbucket then answers 401 itself).
const ANONYMOUS: u16 = 200;

/// Who Bitbucket sees for a REST call to `proxy` with this cookie: `Ok(user)`; `Err(ANONYMOUS)`; or
/// `Err(status)` when the proxy answered itself.
async fn who(proxy: &ProxyProcess, cookie: &str) -> Result<String, u16> {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(proxy.url("/rest/api/latest/profile"))
        .header("cookie", cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return Err(status);
    }
    let v: serde_json::Value = r.json().await.unwrap();
    match v["user"].as_str() {
        Some(u) if v["assertion"] == "valid" => Ok(u.to_owned()),
        None if v["assertion"] == "absent" => Err(ANONYMOUS),
        _ => panic!("an identity without a valid assertion: {v}"),
    }
}

async fn admin_api(
    proxy: &ProxyProcess,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, format!("http://{}{path}", proxy.admin));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The `sessions` command against a replica's admin listener.
fn sessions_command(proxy: &ProxyProcess, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bitbucket-sso-proxy"))
        .arg("sessions")
        .args(args)
        .arg("--admin")
        .arg(proxy.admin.to_string())
        .env("BBSSO_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_redis_sessions_revocation_and_one_refresh() {
    let redis = Redis::shared();
    let (pa, pb) = (free_port(), free_port());
    let provider = RealProvider::start(pa, &[("ROTATE_REFRESH", "1"), ("REFRESH_DELAY_MS", "1500")]);
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{pa}")).await;
    let session = format!(
        "keys = [\"{SESSION_KEY}\"]\nrevalidate_every = \"3s\"\n{}",
        redis.session_settings()
    );
    let a = ProxyProcess::start(&replica_config(pa, pa, upstream, &provider.issuer, &session));
    let b = ProxyProcess::start(&replica_config(pa, pb, upstream, &provider.issuer, &session));
    wait_ready(a.admin).await;
    wait_ready(b.admin).await;
    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", a.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["session_store"], "ok");

    // Login starts on A, the callback lands on B; the session works on both.
    let (client, jar) = jar_browser();
    sign_in_across(&client, &a, &b, "alice").await;
    let alice = session_cookie(&jar, pa);
    assert!(
        alice.len() < 200,
        "the cookie holds only a handle: {} bytes",
        alice.len()
    );
    assert_eq!(who(&a, &alice).await, Ok("alice".into()));
    assert_eq!(who(&b, &alice).await, Ok("alice".into()));
    let (bob_client, bob_jar) = jar_browser();
    sign_in_across(&bob_client, &b, &a, "bob").await;
    let bob = session_cookie(&bob_jar, pa);

    // A refresh due on both replicas at once: one redemption; everyone keeps working; the rotated token is used
    // at the next one (a reused rotated token would be refused and end the session).
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(3200)).await;
        let before = provider.refreshes().await;
        let mut tasks = Vec::new();
        for proxy in [&a, &b, &a, &b] {
            let (url, cookie) = (proxy.url("/rest/api/latest/profile"), alice.clone());
            tasks.push(tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .get(url)
                    .header("cookie", cookie)
                    .header("accept", "application/json")
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            }));
        }
        for t in tasks {
            let (status, body) = t.await.unwrap();
            assert_eq!(status, 200, "round {round}: {body}");
            assert!(body.contains("\"user\":\"alice\""), "round {round}: {body}");
        }
        assert_eq!(
            provider.refreshes().await - before,
            1,
            "round {round}: one redemption for both replicas"
        );
    }
    assert_eq!(who(&b, &alice).await, Ok("alice".into()));

    // Listing and revocation need the bearer token.
    let (status, _) = admin_api(&a, reqwest::Method::GET, "/admin/sessions", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = admin_api(
        &a,
        reqwest::Method::GET,
        "/admin/sessions",
        Some("wrong-token-0123456789"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    a.wait_for_log(|v| v["event"] == "admin_api_refused");
    let (status, listing) = admin_api(
        &a,
        reqwest::Method::GET,
        "/admin/sessions?user=alice",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{listing}");
    let listed = listing["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["user"], "alice");
    assert!(
        !listing.to_string().contains("refresh"),
        "no refresh token in listings: {listing}"
    );
    let (ok, table, _) = sessions_command(&b, &["list"]);
    assert!(ok);
    assert!(table.contains("alice") && table.contains("bob"), "{table}");

    // Revoke on A: refused on B at once; bob is untouched.
    let (ok, out, err) = sessions_command(&a, &["revoke", "--user", "alice"]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked 1 session(s)"), "{out}");
    let refused = page_request(b.url("/dashboard"), &alice).await;
    assert_eq!(refused.status(), 302);
    assert!(
        refused.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/sso/login")
    );
    assert!(
        refused
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("bbsso=;")),
        "the dead cookie is cleared"
    );
    assert_eq!(who(&a, &alice).await, Err(ANONYMOUS));
    assert_eq!(who(&b, &bob).await, Ok("bob".into()));
    let revoked = a.wait_for_log(|v| v["target"] == "audit" && v["event"] == "session_revoked");
    assert_eq!(revoked["user"], "alice");
    assert!(!a.log_text().contains(&alice[6..]), "cookies never reach the log");

    // Revoke by session id through the API.
    let (_, listing) = admin_api(
        &b,
        reqwest::Method::GET,
        "/admin/sessions?user=bob",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    let bob_id = listing["sessions"][0]["id"].as_str().unwrap().to_owned();
    let (status, revoked) = admin_api(
        &b,
        reqwest::Method::POST,
        "/admin/sessions/revoke",
        Some(ADMIN_TOKEN),
        Some(serde_json::json!({ "session": bob_id })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["revoked"], 1);
    assert_eq!(who(&a, &bob).await, Err(ANONYMOUS));
    let (status, problem) = admin_api(
        &b,
        reqwest::Method::POST,
        "/admin/sessions/revoke",
        Some(ADMIN_TOKEN),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_gives_a_503_page_and_recovers_by_itself() {
    let mut redis = Redis::private(&[]);
    let port = free_port();
    let provider = RealProvider::start(port, &[]);
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let session = format!("keys = [\"{SESSION_KEY}\"]\n{}", redis.session_settings());
    let proxy = ProxyProcess::start(&replica_config(port, port, upstream, &provider.issuer, &session));
    wait_ready(proxy.admin).await;
    let (client, jar) = jar_browser();
    sign_in_across(&client, &proxy, &proxy, "alice").await;
    let cookie = session_cookie(&jar, port);

    redis.stop();
    // A page: 503 with a page that says what happened and reloads itself; no login loop, the cookie is kept.
    let page = page_request(proxy.url("/projects/ABC"), &cookie).await;
    assert_eq!(page.status(), 503);
    assert_eq!(page.headers()["retry-after"], "10");
    assert!(page.headers().get("set-cookie").is_none(), "the session cookie is kept");
    let body = page.text().await.unwrap();
    assert!(body.contains("Sessions are unavailable right now"), "{body}");
    assert!(body.contains("url=/projects/ABC"), "the page reloads itself: {body}");
    // API requests: 503 JSON; requests with their own credentials and public paths still pass.
    assert_eq!(who(&proxy, &cookie).await, Err(503));
    let git = reqwest::Client::new()
        .get(proxy.url("/scm/prj/repo.git/info/refs?service=git-upload-pack"))
        .basic_auth("alice", Some("token"))
        .send()
        .await
        .unwrap();
    assert_eq!(git.status(), 200, "git with credentials does not need sessions");
    let ready = reqwest::get(format!("http://{}/readyz", proxy.admin)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert!(
        ready["checks"]["session_store"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{ready}"
    );
    let lenient = reqwest::get(format!("http://{}/readyz?without=session_store", proxy.admin))
        .await
        .unwrap();
    assert_eq!(
        lenient.status(),
        200,
        "readiness without the shared store, for load balancers"
    );
    let lenient: serde_json::Value = lenient.json().await.unwrap();
    assert!(
        lenient["checks"]["session_store"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "still reported: {lenient}"
    );
    proxy.wait_for_log(|v| v["message"] == "session store unavailable");

    // Signing in while Redis is down: the provider confirms the user, the proxy says it cannot store the session.
    let (bob, _) = jar_browser();
    let page = walk(&bob, bob.get(proxy.url("/dashboard"))).await;
    let landed = sign_in(&bob, &page, "bob", "bob-password").await;
    assert_eq!(landed.status, 503, "{}", landed.body);
    assert!(landed.body.contains("session store is unavailable"), "{}", landed.body);
    let failure = proxy.wait_for_log(|v| v["event"] == "login_failure");
    assert_eq!(failure["reason"], "session_store_unavailable");

    // Back: the same session works again without signing in.
    redis.start();
    let mut back = Err(0);
    for _ in 0..100 {
        back = who(&proxy, &cookie).await;
        if back.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, Ok("alice".into()));
    wait_ready(proxy.admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_sessions_across_replicas_and_a_key_rotation_over_rolling_restarts() {
    let (pa, pb) = (free_port(), free_port());
    let provider = RealProvider::start(pa, &[]);
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{pa}")).await;
    let keys = |list: &[&str]| {
        let quoted: Vec<String> = list.iter().map(|k| format!("\"{k}\"")).collect();
        format!("keys = [{}]\nrevalidate_every = \"0s\"", quoted.join(", "))
    };
    let start = |listen: u16, k: &[&str]| {
        ProxyProcess::start(&replica_config(pa, listen, upstream, &provider.issuer, &keys(k)))
    };
    let mut a = start(pa, &[SESSION_KEY]);
    let mut b = start(pb, &[SESSION_KEY]);
    wait_ready(a.admin).await;
    wait_ready(b.admin).await;

    // No Redis anywhere: the login starts on A and finishes on B; the session works on both.
    let (client, jar) = jar_browser();
    sign_in_across(&client, &a, &b, "alice").await;
    let old = session_cookie(&jar, pa);
    assert_eq!(who(&a, &old).await, Ok("alice".into()));
    assert_eq!(who(&b, &old).await, Ok("alice".into()));

    // Rolling restart 1: the new key is added second (decrypt only) on each replica in turn.
    // Rolling restart 2: it moves first (encrypts) on each replica in turn. At every step, both replicas serve
    // the old session and any session the other replica issues.
    let steps: [(&str, &[&str]); 4] = [
        ("a", &[SESSION_KEY, KEY_2]),
        ("b", &[SESSION_KEY, KEY_2]),
        ("a", &[KEY_2, SESSION_KEY]),
        ("b", &[KEY_2, SESSION_KEY]),
    ];
    for (step, (which, k)) in steps.iter().enumerate() {
        let port = if *which == "a" { pa } else { pb };
        if *which == "a" {
            stop(&mut a);
            a = start(port, k);
            wait_ready(a.admin).await;
        } else {
            stop(&mut b);
            b = start(port, k);
            wait_ready(b.admin).await;
        }
        assert_eq!(who(&a, &old).await, Ok("alice".into()), "step {step}: old session on A");
        assert_eq!(who(&b, &old).await, Ok("alice".into()), "step {step}: old session on B");
        let (c, j) = jar_browser();
        let (first, second) = if *which == "a" { (&a, &b) } else { (&b, &a) };
        sign_in_across(&c, first, second, "bob").await;
        let fresh = session_cookie(&j, pa);
        assert_eq!(who(&a, &fresh).await, Ok("bob".into()), "step {step}: new session on A");
        assert_eq!(who(&b, &fresh).await, Ok("bob".into()), "step {step}: new session on B");
    }

    // Retiring the old key ends the sessions sealed with it (they would have expired by then): the keys matter.
    stop(&mut a);
    a = start(pa, &[KEY_2]);
    wait_ready(a.admin).await;
    assert_eq!(who(&a, &old).await, Err(ANONYMOUS));
    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", a.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["session_store"], "ok", "cookie mode needs no Redis");

    // The session API and the `sessions` command say what they need in cookie mode.
    let (ok, _, err) = sessions_command(&a, &["list"]);
    assert!(!ok && err.contains("session.store = \"redis\""), "{err}");
    let (status, problem) = admin_api(&a, reqwest::Method::GET, "/admin/sessions", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 409);
    assert!(
        problem["error"].as_str().unwrap().contains("session.store = \"redis\""),
        "{problem}"
    );
}
