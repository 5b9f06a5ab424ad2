//! Provisioning end to end: the real OpenID provider, the proxy, and the Bitbucket stand-in (REST API and
//! companion authenticator) as the upstream.

mod common;

use std::time::Duration;

use bbsso::standin::Standin;
use common::idp::*;
use common::*;

const ADMIN: &str = "sso-provisioner";
const ADMIN_PASSWORD: &str = "provisioner-password";

struct Env {
    _provider: RealProvider,
    standin: Standin,
    proxy: ProxyProcess,
}

/// `prepare` sets up Bitbucket before the proxy starts; `rest` adds `[mapping]`/`[groups]`/`[bitbucket]` lines.
async fn env(rest: &str, admin_password: &str, prepare: impl FnOnce(&Standin)) -> Env {
    let port = free_port();
    let provider = RealProvider::start(port, &[]);
    let standin = Standin::new(standin_settings(
        ADMIN,
        ADMIN_PASSWORD,
        format!("http://127.0.0.1:{port}/sso"),
        &["127.0.0.0/8"],
        1000,
    ));
    prepare(&standin);
    let upstream = serve_standin(&standin).await;
    let text = sso_config(
        port,
        upstream,
        &provider.issuer,
        "cognito",
        "",
        &format!(
            "[bitbucket]\nadmin_user = \"{ADMIN}\"\nadmin_password = \"{admin_password}\"\ntimeout = \"3s\"\n\n{rest}"
        ),
    );
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;
    Env {
        _provider: provider,
        standin,
        proxy,
    }
}

/// Signs `user` in and returns the page Bitbucket shows.
async fn sign_in_as(e: &Env, user: &str) -> Walk {
    let client = browser();
    let page = walk(&client, client.get(format!("http://{}/dashboard", e.proxy.addr))).await;
    sign_in(&client, &page, user, &format!("{user}-password")).await
}

fn groups(e: &Env, user: &str) -> Vec<String> {
    e.standin
        .user(user)
        .map(|u| u.groups.into_iter().collect())
        .unwrap_or_default()
}

const MANUAL: &str = r#"[groups]
enabled = true
mode = "manual"
default_groups = ["stash-users"]
exclude = ["local-admins"]
[groups.map]
"bitbucket-developers" = ["dev", "engineering"]
"bitbucket-admins" = ["admins"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_is_created_with_profile_and_mapped_groups_and_bitbucket_logs_them_in() {
    let e = env(MANUAL, ADMIN_PASSWORD, |s| s.add_group("stash-users")).await;
    let page = sign_in_as(&e, "bob").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<strong id=\"user\">bob</strong>"),
        "Bitbucket's authenticator logged bob in: {}",
        page.body
    );
    let bob = e.standin.user("bob").expect("created");
    assert_eq!(
        (bob.display_name.as_str(), bob.email.as_str()),
        ("Bob Builder", "bob@example.com")
    );
    assert_eq!(
        groups(&e, "bob"),
        vec!["bitbucket-admins", "bitbucket-developers", "stash-users"]
    );
    assert!(
        e.standin.has_group("bitbucket-admins"),
        "a mapped group that did not exist was created"
    );
    assert!(
        e.standin
            .requests()
            .iter()
            .any(|r| r.starts_with("POST /rest/api/1.0/admin/users?") && r.contains("addToDefaultGroup=false"))
    );
    for event in ["user_created", "group_created", "group_added"] {
        e.proxy
            .wait_for_log(|v| v["target"] == "audit" && v["event"] == event && v["user"] == "bob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_fly_groups_use_the_same_names_and_are_created_only_when_asked() {
    let fly = "[groups]\nenabled = true\nmode = \"on_the_fly\"\n";
    let e = env(fly, ADMIN_PASSWORD, |s| s.add_group("dev")).await;
    assert_eq!(sign_in_as(&e, "bob").await.status, 200);
    assert_eq!(
        groups(&e, "bob"),
        vec!["dev"],
        "admins does not exist and is not created"
    );

    let e = env(&format!("{fly}create_missing = true\n"), ADMIN_PASSWORD, |s| {
        s.add_group("dev")
    })
    .await;
    assert_eq!(sign_in_as(&e, "bob").await.status, 200);
    assert_eq!(groups(&e, "bob"), vec!["admins", "dev"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_users_are_matched_by_email_or_username_and_read_only_users_are_left_alone() {
    let by_email = "[mapping]\nmatch_by = \"email\"\n";
    let e = env(by_email, ADMIN_PASSWORD, |s| {
        s.add_user(
            "carol.p",
            "Carol P.",
            "carol@partner.example",
            "x",
            true,
            &["stash-users"],
        )
    })
    .await;
    let page = sign_in_as(&e, "carol").await;
    assert!(
        page.body.contains("<strong id=\"user\">carol.p</strong>"),
        "matched by email, case-insensitively: {}",
        page.body
    );
    assert!(e.standin.user("carol").is_none(), "no second account");
    assert_eq!(
        e.standin.user("carol.p").unwrap().display_name,
        "Carol Partner",
        "profile updated"
    );

    let e = env("[mapping]\nupdate_profile = true\n", ADMIN_PASSWORD, |s| {
        s.add_user("alice", "Old Name", "old@example.com", "x", true, &[]);
        s.add_user("bob", "LDAP Bob", "ldap-bob@example.com", "x", false, &[]);
    })
    .await;
    assert!(
        sign_in_as(&e, "alice")
            .await
            .body
            .contains("<strong id=\"user\">alice</strong>")
    );
    let alice = e.standin.user("alice").unwrap();
    assert_eq!(
        (alice.display_name.as_str(), alice.email.as_str()),
        ("Alice Example", "alice@example.com")
    );
    assert!(
        sign_in_as(&e, "bob")
            .await
            .body
            .contains("<strong id=\"user\">bob</strong>")
    );
    assert_eq!(
        e.standin.user("bob").unwrap().display_name,
        "LDAP Bob",
        "read-only directory users are not changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_restriction_and_no_user_creation_refuse_with_a_page() {
    let e = env(
        "[mapping]\nallowed_email_domains = [\"example.com\"]\nallow_user_creation = false\n",
        ADMIN_PASSWORD,
        |s| {
            s.add_user("alice", "Alice Example", "alice@example.com", "x", true, &[]);
        },
    )
    .await;
    let carol = sign_in_as(&e, "carol").await;
    assert_eq!(carol.status, 403);
    assert!(carol.body.contains("not from a domain"), "{}", carol.body);
    e.proxy
        .wait_for_log(|v| v["target"] == "audit" && v["reason"] == "email_domain_not_allowed");
    let bob = sign_in_as(&e, "bob").await;
    assert_eq!(bob.status, 403);
    assert!(bob.body.contains("no Bitbucket account for you"));
    e.proxy
        .wait_for_log(|v| v["target"] == "audit" && v["reason"] == "user_not_found");
    assert!(e.standin.user("bob").is_none());
    assert_eq!(
        sign_in_as(&e, "alice").await.status,
        200,
        "an existing user of an allowed domain gets in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_the_provider_dropped_are_removed_across_many_pages_but_excluded_ones_stay() {
    let sync = MANUAL.replace("[groups.map]", "keep_existing = false\n[groups.map]");
    let legacy: Vec<String> = (0..130).map(|i| format!("legacy-{i:03}")).collect();
    let e = env(&sync, ADMIN_PASSWORD, |s| {
        let mut gs: Vec<&str> = legacy.iter().map(String::as_str).collect();
        gs.extend(["bitbucket-admins", "local-admins", "stash-users"]);
        s.add_user("alice", "Alice Example", "alice@example.com", "x", true, &gs);
    })
    .await;
    let page = sign_in_as(&e, "alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        groups(&e, "alice"),
        vec!["bitbucket-developers", "local-admins", "stash-users"]
    );
    assert!(
        e.standin
            .requests()
            .iter()
            .any(|r| r.contains("more-members") && r.contains("start=100")),
        "the second page was read"
    );
    e.proxy
        .wait_for_log(|v| v["target"] == "audit" && v["event"] == "group_removed" && v["group"] == "legacy-129");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_first_sign_ins_at_once_both_succeed() {
    let e = env(MANUAL, ADMIN_PASSWORD, |s| s.add_group("stash-users")).await;
    let (a, b) = tokio::join!(sign_in_as(&e, "alice"), sign_in_as(&e, "alice"));
    assert_eq!((a.status, b.status), (200, 200), "{}\n{}", a.body, b.body);
    assert!(
        a.body.contains("<strong id=\"user\">alice</strong>") && b.body.contains("<strong id=\"user\">alice</strong>")
    );
    assert_eq!(e.standin.user_count(), 2, "the admin and one alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_on_create_from_a_concurrent_sign_in_is_handled() {
    let e = env(MANUAL, ADMIN_PASSWORD, |s| {
        s.add_group("stash-users");
        s.simulate_concurrent_create();
    })
    .await;
    let page = sign_in_as(&e, "alice").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<strong id=\"user\">alice</strong>"));
    assert_eq!(
        groups(&e, "alice"),
        vec!["bitbucket-developers", "stash-users"],
        "groups synced against the user the other sign-in created"
    );
    assert!(
        !e.proxy.log_text().contains("\"event\":\"user_created\""),
        "this sign-in did not create the user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bitbucket_down_or_a_wrong_service_account_refuses_cleanly_and_grants_nothing() {
    let e = env(MANUAL, "wrong-password", |_| {}).await;
    let page = sign_in_as(&e, "alice").await;
    assert_eq!(page.status, 502);
    assert!(page.body.contains("could not be prepared"), "{}", page.body);
    let failure = e
        .proxy
        .wait_for_log(|v| v["target"] == "audit" && v["reason"] == "provisioning_failed");
    assert!(
        failure["detail"]
            .as_str()
            .unwrap()
            .contains("check bitbucket.admin_user")
    );
    assert!(e.standin.user("alice").is_none());

    let e = env(MANUAL, ADMIN_PASSWORD, |s| s.set_rest_down(true)).await;
    let client = browser();
    let page = walk(&client, client.get(format!("http://{}/dashboard", e.proxy.addr))).await;
    let refused = sign_in(&client, &page, "alice", "alice-password").await;
    assert_eq!(refused.status, 502);
    assert!(e.standin.user("alice").is_none(), "nothing half-done");
    let no_session = client
        .get(format!("http://{}/dashboard", e.proxy.addr))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(no_session.status(), 302, "no session was opened");
    // Bitbucket is back: the next sign-in works.
    e.standin.set_rest_down(false);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(sign_in_as(&e, "alice").await.status, 200);
}
