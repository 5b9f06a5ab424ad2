//! The sign-in experience over HTTP: login page and routing, remember me, countdown, backdoor, global switch,
//! templates, the test configuration page, error pages with their reference.

mod common;

use bbsso::standin::Standin;
use common::idp::*;
use common::*;

const ADMIN: &str = "sso-provisioner";
const ADMIN_PASSWORD: &str = "provisioner-password";

struct Env {
    _providers: Vec<RealProvider>,
    standin: Standin,
    proxy: ProxyProcess,
    base: String,
}

/// Two providers ("idp", "partner"), the stand-in as Bitbucket, and extra configuration `rest`.
async fn env(two_providers: bool, rest: &str) -> Env {
    let port = free_port();
    let mut providers = vec![RealProvider::start(port, &[])];
    if two_providers {
        providers.push(RealProvider::start(port, &[]));
    }
    let standin = Standin::new(standin_settings(
        ADMIN,
        ADMIN_PASSWORD,
        format!("http://127.0.0.1:{port}/sso"),
        &["127.0.0.0/8"],
        1000,
    ));
    standin.add_group("stash-users");
    let upstream = serve_standin(&standin).await;
    let mut text = sso_config(
        port,
        upstream,
        &providers[0].issuer,
        "cognito",
        "display_name = \"Corporate\"",
        &format!("[bitbucket]\nadmin_user = \"{ADMIN}\"\nadmin_password = \"{ADMIN_PASSWORD}\"\n\n{rest}"),
    );
    if two_providers {
        text = with_partner_provider(&text, &providers[1].issuer);
    }
    // Revalidation is tested elsewhere; here it would only race with the provider's own session handling.
    let text = text.replace("revalidate_every = \"2s\"", "revalidate_every = \"0s\"");
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;
    let base = format!("http://{}", proxy.addr);
    Env {
        _providers: providers,
        standin,
        proxy,
        base,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_page_offers_every_provider_and_routes_by_email_domain() {
    let e = env(
        true,
        "[[sso.redirection_rules]]\nemail_domain = \"partner.example\"\nprovider = \"partner\"\n",
    )
    .await;
    let client = browser();
    let page = walk(&client, client.get(format!("{}/projects", e.base))).await;
    assert_eq!(page.status, 200);
    assert!(
        page.url.contains("/sso/login?rd="),
        "a choice is needed, so the login page: {}",
        page.url
    );
    assert!(
        page.body.contains("value=\"idp\"") && page.body.contains("(Corporate)") && page.body.contains("(Partner)")
    );
    assert!(
        page.body.contains("name=\"login_hint\""),
        "the email form, since rules exist"
    );
    assert!(page.body.contains("name=\"remember_me\""));

    let to = |hint: &str| {
        let client = client.clone();
        let url = format!("{}/sso/login?rd=%2Fprojects&login_hint={hint}", e.base);
        async move {
            client.get(url).send().await.unwrap().headers()["location"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert!(
        to("carol%40Partner.Example").await.starts_with(&e._providers[1].issuer),
        "the partner's domain goes to the partner"
    );
    assert!(
        to("alice%40example.com").await.starts_with(&e._providers[0].issuer),
        "other domains go to the default provider"
    );
    assert!(
        to("alice").await.starts_with(&e._providers[0].issuer),
        "a username goes to the default provider"
    );
    assert!(
        to("x%40evil-partner.example")
            .await
            .starts_with(&e._providers[0].issuer),
        "the domain must match exactly"
    );

    // Signing in through the partner: the session remembers which provider to log out of.
    let login = walk(
        &client,
        client.get(format!("{}/sso/login?rd=%2Fdashboard&provider=partner", e.base)),
    )
    .await;
    let landed = sign_in(&client, &login, "carol", "carol-password").await;
    assert!(
        landed.body.contains("<strong id=\"user\">carol</strong>"),
        "{}",
        landed.body
    );
    let logout = client.get(format!("{}/sso/logout", e.base)).send().await.unwrap();
    assert!(
        logout.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with(&e._providers[1].issuer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remember_me_makes_the_cookie_persistent() {
    let e = env(false, "").await;
    for (remember, persistent) in [("1", true), ("0", false)] {
        let client = browser();
        let start = walk(
            &client,
            client.get(format!("{}/sso/login?rd=%2F&remember_me={remember}", e.base)),
        )
        .await;
        let form_action = start
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let post = client
            .post(reqwest::Url::parse(&start.url).unwrap().join(&form_action).unwrap())
            .form(&[("username", "alice"), ("password", "alice-password")]);
        let mut r = post.send().await.unwrap();
        let mut cookie = None;
        for _ in 0..10 {
            if let Some(c) = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .find(|c| c.starts_with("bbsso=") && !c.contains("Max-Age=0"))
            {
                cookie = Some(c);
                break;
            }
            let Some(next) = r
                .headers()
                .get("location")
                .map(|l| r.url().join(l.to_str().unwrap()).unwrap())
            else {
                break;
            };
            r = client.get(next).send().await.unwrap();
        }
        let cookie = cookie.expect("a session cookie");
        assert_eq!(
            cookie.contains("Max-Age="),
            persistent,
            "remember_me={remember}: {cookie}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_countdown_page_and_its_cancel() {
    let e = env(false, "[sso]\nauto_redirect_delay = \"5s\"\n").await;
    let client = browser();
    let r = client
        .get(format!("{}/login?next=%2Fprojects%2FABC", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'sha256-") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let body = r.text().await.unwrap();
    assert!(body.contains("<progress") && body.contains("href=\"/sso/login?rd=%2Fprojects%2FABC\""));
    assert!(
        body.contains("id=\"cancel\" href=\"/sso/login?cancelled=1&amp;rd=%2Fprojects%2FABC\""),
        "{body}"
    );
    let cancelled = client
        .get(format!("{}/sso/login?cancelled=1&rd=%2Fprojects", e.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cancelled.status(),
        200,
        "cancel shows the login page, not Bitbucket's form"
    );
    assert!(
        cancelled
            .text()
            .await
            .unwrap()
            .contains("Automatic sign-in was cancelled")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backdoor_admits_only_the_right_key_from_an_allowed_network() {
    let e = env(false, "[sso.backdoor]\nenabled = true\nquery = \"backdoor\"\nkey = \"emergency-key-0123456789\"\nallowed_networks = [\"127.0.0.0/8\"]\n").await;
    e.standin
        .add_user("localadmin", "Local Admin", "la@x", "local-password", true, &[]);
    let client = browser();
    let granted = client
        .get(format!("{}/login?backdoor=emergency-key-0123456789", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200, "Bitbucket's own login form");
    assert!(granted.text().await.unwrap().contains("j_atl_security_check"));
    e.proxy
        .wait_for_log(|v| v["target"] == "audit" && v["event"] == "backdoor_used");
    let post = client
        .post(format!("{}/j_atl_security_check", e.base))
        .form(&[("j_username", "localadmin"), ("j_password", "local-password")])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 302, "the form post reaches Bitbucket");
    let page = client
        .get(format!("{}/dashboard", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("<strong id=\"user\">localadmin</strong>"),
        "Bitbucket's own session works"
    );

    for (query, reason) in [("backdoor=wrong-key", "wrong_key"), ("backdoor=", "missing_key")] {
        let fresh = browser();
        let r = fresh
            .get(format!("{}/login?{query}", e.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{query}: into SSO");
        assert!(r.headers()["location"].to_str().unwrap().starts_with("/sso/login"));
        e.proxy
            .wait_for_log(|v| v["target"] == "audit" && v["event"] == "backdoor_refused" && v["reason"] == reason);
        let post = fresh
            .post(format!("{}/j_atl_security_check", e.base))
            .form(&[("j_username", "localadmin"), ("j_password", "local-password")])
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 401, "no pass: Bitbucket's form post is refused");
    }

    let other = env(
        false,
        "[sso.backdoor]\nenabled = true\nkey = \"emergency-key-0123456789\"\nallowed_networks = [\"10.0.0.0/8\"]\n",
    )
    .await;
    let r = browser()
        .get(format!("{}/login?backdoor=emergency-key-0123456789", other.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "the right key from another network is refused");
    other
        .proxy
        .wait_for_log(|v| v["target"] == "audit" && v["event"] == "backdoor_refused" && v["reason"] == "network");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_switch_passes_everything_to_bitbucket_with_hygiene() {
    let e = env(false, "[sso]\nenabled = false\n").await;
    let client = browser();
    let r = client
        .get(format!("{}/login", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text().await.unwrap().contains("j_atl_security_check"),
        "Bitbucket's own login"
    );
    let spoof = client
        .get(format!("{}/rest/api/1.0/x", e.base))
        .header("x_forwarded_user", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(spoof.status(), 401, "a spoofed identity is stripped even with SSO off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_can_be_overridden() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("error.html"),
        "<html><body><h1>ACME: {{title}}</h1><p>{{message}}</p><p>ref={{reference}}</p></body></html>",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("logged_out.html"),
        "<html><body>ACME bye: {{title}}</body></html>",
    )
    .unwrap();
    let e = env(false, &format!("[ui]\ntemplates_dir = \"{}\"\n", dir.path().display())).await;
    let client = browser();
    let r = client
        .get(format!("{}/sso/callback?state=x&code=y", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(
        body.contains("ACME: Your sign-in has to start again") && body.contains("ref="),
        "{body}"
    );
    let out = client
        .get(format!("{}/sso/logged-out", e.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(out, "<html><body>ACME bye: You are signed out</body></html>");
    let login = client
        .get(format!("{}/sso/login?cancelled=1", e.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        login.contains("Sign in to Bitbucket"),
        "templates not overridden stay built-in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_page_shows_claims_and_the_mapping_to_admins_only() {
    let e = env(false, "[admin]\ntest_page_groups = [\"bitbucket-admins\"]\n\n[groups]\nenabled = true\ndefault_groups = [\"stash-users\"]\n[groups.map]\n\"bitbucket-admins\" = [\"admins\"]\n\"bitbucket-developers\" = [\"dev\"]\n").await;
    e.standin.add_user(
        "bob",
        "Bob Builder",
        "bob@example.com",
        "x",
        true,
        &["bitbucket-admins", "stash-users"],
    );
    let admin = browser();
    let page = walk(&admin, admin.get(format!("{}/dashboard", e.base))).await;
    assert!(
        sign_in(&admin, &page, "bob", "bob-password")
            .await
            .body
            .contains("id=\"user\">bob<")
    );
    let users_before = e.standin.user_count();

    let test = walk(&admin, admin.get(format!("{}/sso/test?provider=idp", e.base))).await;
    assert!(
        test.url.contains("prompt=login") || test.visited.iter().any(|u| u.contains("prompt=login")),
        "the provider asks again"
    );
    let mut report = sign_in(&admin, &test, "alice", "alice-password").await;
    // oidc-provider ends bob's provider session before alice's, with a self-submitting form (a browser would
    // run it); submit it as the browser would.
    if report.body.contains("Submitting Callback") {
        let action = report
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        let xsrf = report
            .body
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        report = walk(
            &admin,
            admin.post(action).form(&[("xsrf", xsrf.as_str()), ("logout", "yes")]),
        )
        .await;
    }
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(
        report.body.contains("cognito:username") && report.body.contains("alice@example.com"),
        "the claim table: {}",
        report.body
    );
    assert!(
        report
            .body
            .contains("creates the Bitbucket user <strong>alice</strong>")
    );
    assert!(
        report
            .body
            .contains("<td id=\"add\">bitbucket-developers, stash-users</td>"),
        "{}",
        report.body
    );
    assert!(!report.body.contains("eyJ"), "never a raw token");
    assert_eq!(e.standin.user_count(), users_before, "Bitbucket was not changed");
    let still = admin
        .get(format!("{}/dashboard", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        still.contains("id=\"user\">bob<"),
        "the admin is still signed in as themselves"
    );

    let user = browser();
    let page = walk(&user, user.get(format!("{}/dashboard", e.base))).await;
    sign_in(&user, &page, "alice", "alice-password").await;
    let refused = user
        .get(format!("{}/sso/test?provider=idp", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "not in test_page_groups");
    let anonymous = browser()
        .get(format!("{}/sso/test", e.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
