//! End to end with a real OpenID provider (panva/oidc-provider, Cognito-shaped): sign in, reach Bitbucket as
//! yourself, reuse and revalidate the session, log out through the provider and back.

mod common;

use std::time::Duration;

use common::idp::*;
use common::*;

async fn setup(provider_extra: &str, rest: &str, provider_env: &[(&str, &str)]) -> (RealProvider, ProxyProcess) {
    let port = free_port();
    let provider = RealProvider::start(port, provider_env);
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let proxy = ProxyProcess::start(&sso_config(
        port,
        upstream,
        &provider.issuer,
        "cognito",
        provider_extra,
        rest,
    ));
    wait_ready(proxy.admin).await;
    (provider, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_signs_in_reaches_bitbucket_as_itself_revalidates_and_logs_out() {
    let (provider, proxy) = setup("", "", &[("ROTATE_REFRESH", "1")]).await;
    let base = format!("http://{}", proxy.addr);
    let client = browser();

    // No session: a page request is sent to the provider's login form, by way of /sso/login.
    let page = walk(&client, client.get(format!("{base}/projects/ABC?tab=repos"))).await;
    assert_eq!(page.status, 200);
    assert!(
        page.visited[1].starts_with(&format!("{base}/sso/login?rd=%2Fprojects%2FABC%3Ftab%3Drepos")),
        "{:?}",
        page.visited
    );
    let authorize = reqwest::Url::parse(&page.visited[2]).unwrap();
    assert_eq!(
        authorize.path(),
        "/oauth2/authorize",
        "Cognito's authorize path on the cognito_domain"
    );
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 22 && q["nonce"].len() >= 22);
    assert_eq!(q["scope"], "openid email profile");
    assert!(page.body.contains("Sign in"), "the provider's login form");

    // Sign in: back through the callback to the page first asked for, as alice.
    let landed = sign_in(&client, &page, "alice", "alice-password").await;
    assert_eq!(landed.status, 200, "{}", landed.body);
    assert!(
        landed
            .visited
            .iter()
            .any(|u| u.starts_with(&format!("{base}/sso/callback?")))
    );
    assert_eq!(
        landed.url,
        format!("{base}/projects/ABC?tab=repos"),
        "the return path survives with its query"
    );
    let seen: serde_json::Value = serde_json::from_str(&landed.body).unwrap();
    assert_eq!(seen["user"], "alice");
    assert_eq!(seen["assertion"], "valid");
    assert!(
        !seen["cookie"].as_str().unwrap().contains("bbsso"),
        "the proxy's cookies never reach Bitbucket"
    );
    let success = proxy.wait_for_log(|v| v["target"] == "audit" && v["event"] == "login_success");
    assert_eq!(success["user"], "alice");
    assert_eq!(success["provider"], "idp");
    assert_eq!(success["subject"], "7d3f1c2a-0001-4000-8000-000000000001");

    // The session is reused: no provider round trip, identity on every request, XHR included.
    let again = client
        .get(format!("{base}/dashboard"))
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let seen: serde_json::Value = again.json().await.unwrap();
    assert_eq!(
        (seen["user"].as_str(), seen["assertion"].as_str()),
        (Some("alice"), Some("valid"))
    );
    let access = proxy.wait_for_log(|v| v["target"] == "access" && v["path"] == "/dashboard");
    assert_eq!(access["user"], "alice");

    // Revalidation: after revalidate_every, concurrent requests share one refresh at the provider.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = provider.refreshes().await;
    let mut burst = Vec::new();
    for _ in 0..5 {
        let c = client.clone();
        let url = format!("{base}/rest/api/1.0/profile");
        burst.push(tokio::spawn(async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }));
    }
    for b in burst {
        assert_eq!(b.await.unwrap()["user"], "alice");
    }
    assert_eq!(
        provider.refreshes().await - before,
        1,
        "one refresh-token redemption for the whole burst"
    );
    // The provider rotates refresh tokens: the next revalidation works only if the rotated one was stored.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = client.get(format!("{base}/rest/api/1.0/profile")).send().await.unwrap();
    assert_eq!(later.json::<serde_json::Value>().await.unwrap()["user"], "alice");
    assert_eq!(
        provider.refreshes().await - before,
        2,
        "a second revalidation with the rotated refresh token"
    );

    // Logout: proxy session, Bitbucket's cookies, then the provider's logout, which returns to /sso/logged-out.
    let logout = client
        .get(format!("{base}/j_atl_security_logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 302);
    let set_cookies: Vec<String> = logout
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        set_cookies
            .iter()
            .any(|c| c.starts_with("bbsso=;") && c.contains("Max-Age=0")),
        "{set_cookies:?}"
    );
    assert!(
        set_cookies
            .iter()
            .any(|c| c.starts_with("BITBUCKETSESSIONID=;") && c.contains("Max-Age=0"))
    );
    assert!(
        set_cookies
            .iter()
            .any(|c| c.starts_with("_atl_bitbucket_remember_me=;"))
    );
    let target = reqwest::Url::parse(logout.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(target.path(), "/logout");
    let q: std::collections::HashMap<_, _> = target.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["logout_uri"], format!("{base}/sso/logged-out"));
    let confirm = walk(&client, client.get(target)).await;
    let action = confirm
        .body
        .split("action=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("provider's logout form")
        .to_owned();
    let xsrf = confirm
        .body
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("xsrf")
        .to_owned();
    let url = reqwest::Url::parse(&confirm.url).unwrap().join(&action).unwrap();
    let done = walk(
        &client,
        client.post(url).form(&[("xsrf", xsrf.as_str()), ("logout", "yes")]),
    )
    .await;
    assert_eq!(done.url, format!("{base}/sso/logged-out"));
    assert!(done.body.contains("You are signed out"));
    proxy.wait_for_log(|v| v["target"] == "audit" && v["event"] == "logout" && v["user"] == "alice");

    // Signed out everywhere: the next page asks for a password again at the provider.
    let after = walk(&client, client.get(format!("{base}/projects"))).await;
    assert!(
        after.body.contains("Sign in") && after.url.contains("/interaction/"),
        "provider session ended too: {}",
        after.url
    );
    assert!(!proxy.log_text().contains("alice-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_disabled_at_the_provider_loses_the_session_at_the_next_revalidation() {
    let (provider, proxy) = setup("", "", &[]).await;
    let base = format!("http://{}", proxy.addr);
    let client = browser();
    let page = walk(&client, client.get(format!("{base}/projects"))).await;
    let landed = sign_in(&client, &page, "bob", "bob-password").await;
    assert_eq!(landed.status, 200);
    provider.set_enabled("bob", false).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = client
        .get(format!("{base}/projects"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "session ended, so back into the sign-in");
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/sso/login"));
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("bbsso=;"))
    );
    let ended = proxy.wait_for_log(|v| v["target"] == "audit" && v["event"] == "session_ended");
    assert_eq!(ended["user"], "bob");
    assert!(ended["reason"].as_str().unwrap().starts_with("provider_refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_api_and_xhr_clients_are_never_redirected() {
    let (_provider, proxy) = setup("", "", &[]).await;
    let base = format!("http://{}", proxy.addr);
    let client = browser();
    let xhr = client
        .get(format!("{base}/projects"))
        .header("accept", "text/html")
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(xhr.status(), 401);
    let body: serde_json::Value = xhr.json().await.unwrap();
    assert_eq!(body["error"], "unauthenticated");
    let json = client
        .get(format!("{base}/projects"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 401);
    let post = client
        .post(format!("{base}/projects/ABC/settings"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401, "a form post without a session is not a navigation");

    let git = client
        .get(format!("{base}/scm/abc/repo.git/info/refs?service=git-upload-pack"))
        .header("user-agent", "git/2.47.3")
        .send()
        .await
        .unwrap();
    assert_eq!(
        git.status(),
        200,
        "reaches Bitbucket, which asks git for credentials itself"
    );
    let seen: serde_json::Value = git.json().await.unwrap();
    assert_eq!(seen["user"], serde_json::Value::Null);
    assert_eq!(seen["assertion"], "absent");

    let basic = client
        .get(format!("{base}/projects"))
        .header("accept", "text/html")
        .header("authorization", "Basic YWxpY2U6dG9rZW4=")
        .header("x-forwarded-user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let seen: serde_json::Value = basic.json().await.unwrap();
    assert_eq!(
        seen["user"],
        serde_json::Value::Null,
        "no identity, and the spoofed one is gone"
    );

    let status = client
        .get(format!("{base}/status"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200, "public paths pass without a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_sign_in_at_once_and_a_replayed_or_stale_state_restarts_once() {
    let (_provider, proxy) = setup("", "", &[]).await;
    let base = format!("http://{}", proxy.addr);
    let client = browser();
    // Two tabs start signing in before either finishes.
    let tab_a = client.get(format!("{base}/sso/login?rd=/a")).send().await.unwrap();
    let tab_b = client.get(format!("{base}/sso/login?rd=/b")).send().await.unwrap();
    let to_a = tab_a.headers()["location"].to_str().unwrap().to_owned();
    let to_b = tab_b.headers()["location"].to_str().unwrap().to_owned();
    let page_b = walk(&client, client.get(&to_b)).await;
    let landed_b = sign_in(&client, &page_b, "alice", "alice-password").await;
    assert_eq!(landed_b.url, format!("{base}/b"));
    // Tab A finishes afterwards: the provider session signs it in without a form.
    let landed_a = walk(&client, client.get(&to_a)).await;
    assert_eq!(landed_a.url, format!("{base}/a"), "{:?}", landed_a.visited);
    let callback_a = landed_a
        .visited
        .iter()
        .find(|u| u.contains("/sso/callback?"))
        .unwrap()
        .clone();

    // Replaying a finished callback: its state is gone, so the sign-in restarts once, with a page that says so.
    let fresh = browser();
    let replay = fresh
        .get(&callback_a)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    let restarted_cookie = replay
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("bbsso_restarted=1"));
    assert!(restarted_cookie);
    let text = replay.text().await.unwrap();
    assert!(
        text.contains("has to start again") && text.contains("http-equiv=\"refresh\""),
        "{text}"
    );
    // A second failure in a row does not loop: it explains and stops.
    let second = fresh
        .get(format!("{base}/sso/callback?state=bogus&code=x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 400);
    let text = second.text().await.unwrap();
    assert!(text.contains("could not be completed") && !text.contains("http-equiv=\"refresh\""));
    let failure = proxy.wait_for_log(|v| v["target"] == "audit" && v["event"] == "login_failure");
    assert!(failure["reason"].as_str().unwrap().starts_with("state_"));

    // Duplicated parameters are refused outright.
    let dup = fresh
        .get(format!("{base}/sso/callback?state=a&state=b&code=c"))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 400);
    // The provider's own error is explained.
    let denied = fresh
        .get(format!("{base}/sso/callback?error=access_denied&state=zzz"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert!(denied.text().await.unwrap().contains("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_provider_with_client_secret_post_and_userinfo_and_rp_initiated_logout() {
    let port = free_port();
    let provider = RealProvider::start(port, &[("AUTH_METHOD", "client_secret_post")]);
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let text = sso_config(
        port,
        upstream,
        &provider.issuer,
        "oidc",
        "token_auth_method = \"client_secret_post\"\nuserinfo = true",
        "[mapping]\ndisplay_name_claim = \"custom:department\"\n",
    );
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;
    let base = format!("http://{}", proxy.addr);
    let client = browser();
    let page = walk(&client, client.get(format!("{base}/projects"))).await;
    let landed = sign_in(&client, &page, "carol", "carol-password").await;
    assert_eq!(
        landed.status, 200,
        "client_secret_post accepted by a provider that requires it: {}",
        landed.body
    );
    let seen: serde_json::Value = serde_json::from_str(&landed.body).unwrap();
    assert_eq!(seen["user"], "carol");
    assert_eq!(seen["name"], "Engineering", "a claim only userinfo has was merged");

    let logout = client.post(format!("{base}/sso/logout")).send().await.unwrap();
    let target = reqwest::Url::parse(logout.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = target.query_pairs().into_owned().collect();
    assert_eq!(
        q["post_logout_redirect_uri"],
        format!("{base}/sso/logged-out"),
        "standard RP-initiated logout"
    );
    assert_eq!(q["client_id"], CLIENT_ID);
}
