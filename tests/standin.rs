//! The Bitbucket stand-in follows bitbucket-facts.md: REST admin endpoints and the companion authenticator.

mod common;

use bbsso::standin::{Settings, Standin};
use common::idp::ASSERTION_SECRET;
use serde_json::{Value, json};

async fn start() -> (Standin, String) {
    let s = Standin::new(Settings {
        admin_user: "admin".into(),
        admin_password: "pw".into(),
        assertion_secret: ASSERTION_SECRET.into(),
        issuer: "http://bb.example/sso".into(),
        user_header: "X-Forwarded-User".into(),
        assertion_header: "X-Bbsso-Assertion".into(),
        trusted: vec!["127.0.0.0/8".parse().unwrap()],
        max_users: 3,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(s.clone().serve(listener));
    (s, base)
}

fn admin(c: &reqwest::Client, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
    c.request(method, url)
        .basic_auth("admin", Some("pw"))
        .header("x-atlassian-token", "no-check")
}

fn assertion(sub: &str, secret: &str, iss: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": iss, "aud": "bitbucket", "sub": sub, "iat": now, "exp": now + 60, "jti": "x"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn rest_admin_endpoints_behave_as_documented() {
    let (s, base) = start().await;
    let c = reqwest::Client::new();
    let rest = format!("{base}/rest/api/1.0");
    assert_eq!(c.get(format!("{rest}/admin/users")).send().await.unwrap().status(), 401);
    assert_eq!(
        c.post(format!("{rest}/admin/groups?name=g"))
            .basic_auth("admin", Some("pw"))
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "XSRF check"
    );

    let create = |name: &str| {
        admin(
            &c,
            reqwest::Method::POST,
            format!(
                "{rest}/admin/users?name={name}&displayName=D&emailAddress={name}@x.example&password=p&addToDefaultGroup=false"
            ),
        )
    };
    assert_eq!(create("u1").send().await.unwrap().status(), 204);
    assert_eq!(
        create("U1").send().await.unwrap().status(),
        409,
        "names are case-insensitive"
    );
    assert_eq!(
        admin(
            &c,
            reqwest::Method::POST,
            format!("{rest}/admin/users?name=u2&displayName=D&emailAddress=e")
        )
        .send()
        .await
        .unwrap()
        .status(),
        400,
        "a password is required"
    );
    assert_eq!(create("u2").send().await.unwrap().status(), 204);
    assert_eq!(
        create("u3").send().await.unwrap().status(),
        403,
        "licence limit (3 users with the admin)"
    );

    for i in 0..30 {
        assert_eq!(
            admin(
                &c,
                reqwest::Method::POST,
                format!("{rest}/admin/groups?name=grp-{i:02}")
            )
            .send()
            .await
            .unwrap()
            .status(),
            200
        );
    }
    assert_eq!(
        admin(&c, reqwest::Method::POST, format!("{rest}/admin/groups?name=grp-00"))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    let first: Value = admin(&c, reqwest::Method::GET, format!("{rest}/admin/groups?filter=grp"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            first["size"].as_u64(),
            first["isLastPage"].as_bool(),
            first["nextPageStart"].as_u64()
        ),
        (Some(25), Some(false), Some(25))
    );
    let second: Value = admin(
        &c,
        reqwest::Method::GET,
        format!("{rest}/admin/groups?filter=grp&start=25"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (second["size"].as_u64(), second["isLastPage"].as_bool()),
        (Some(5), Some(true))
    );

    let add = admin(&c, reqwest::Method::POST, format!("{rest}/admin/users/add-groups"))
        .json(&json!({"user": "u1", "groups": ["grp-01", "nope"]}));
    assert_eq!(
        add.send().await.unwrap().status(),
        404,
        "an unknown group: nothing added"
    );
    assert!(s.user("u1").unwrap().groups.is_empty());
    let add = admin(&c, reqwest::Method::POST, format!("{rest}/admin/users/add-groups"))
        .json(&json!({"user": "u1", "groups": ["grp-01", "grp-02"]}));
    assert_eq!(add.send().await.unwrap().status(), 200);
    let mine: Value = admin(
        &c,
        reqwest::Method::GET,
        format!("{rest}/admin/users/more-members?context=u1"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(mine["values"].as_array().unwrap().len(), 2);
    let rm = admin(&c, reqwest::Method::POST, format!("{rest}/admin/users/remove-group"))
        .json(&json!({"context": "u1", "itemName": "grp-01"}));
    assert_eq!(rm.send().await.unwrap().status(), 200);
    assert_eq!(
        s.user("u1").unwrap().groups.into_iter().collect::<Vec<_>>(),
        vec!["grp-02"]
    );

    let found: Value = admin(&c, reqwest::Method::GET, format!("{rest}/admin/users?filter=U1@X"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        found["values"][0]["name"], "u1",
        "filter is a case-insensitive substring of name, display name or email"
    );
    assert_eq!(found["values"][0]["mutableDetails"], true);
    let put = admin(&c, reqwest::Method::PUT, format!("{rest}/admin/users"))
        .json(&json!({"name": "u1", "displayName": "New", "email": "new@x.example"}));
    assert_eq!(put.send().await.unwrap().status(), 200);
    assert_eq!(s.user("u1").unwrap().display_name, "New");
    s.add_user("ldap", "L", "l@x", "p", false, &[]);
    let put = admin(&c, reqwest::Method::PUT, format!("{rest}/admin/users"))
        .json(&json!({"name": "ldap", "displayName": "X"}));
    assert_eq!(put.send().await.unwrap().status(), 400, "read-only directory");
}

#[tokio::test]
async fn the_companion_authenticator_logs_in_only_verified_identities_and_binds_the_session() {
    let (s, base) = start().await;
    s.add_user("alice", "Alice", "a@x", "p", true, &["devs"]);
    s.add_user("bob", "Bob", "b@x", "p", true, &[]);
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let iss = "http://bb.example/sso";
    let who = |resp: reqwest::Response| async move {
        if resp.status() == 302 || resp.status() == 401 {
            return None;
        }
        resp.json::<Value>()
            .await
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_owned))
    };
    let page = |user: &str, token: &str, cookie: &str| {
        c.get(format!("{base}/projects"))
            .header("accept", "application/json")
            .header("x-forwarded-user", user)
            .header("x-bbsso-assertion", token)
            .header("cookie", cookie)
    };
    let good = assertion("alice", ASSERTION_SECRET, iss);
    let r = page("alice", &good, "").send().await.unwrap();
    let session = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(who(r).await.as_deref(), Some("alice"));
    assert_eq!(
        who(page("bob", &good, "").send().await.unwrap()).await,
        None,
        "sub must equal the username header"
    );
    assert_eq!(
        who(page(
            "alice",
            &assertion("alice", "another-secret-another-secret-xx", iss),
            ""
        )
        .send()
        .await
        .unwrap())
        .await,
        None,
        "wrong secret"
    );
    assert_eq!(
        who(
            page("alice", &assertion("alice", ASSERTION_SECRET, "http://evil/sso"), "")
                .send()
                .await
                .unwrap()
        )
        .await,
        None,
        "wrong issuer"
    );
    assert_eq!(
        who(page("ghost", &assertion("ghost", ASSERTION_SECRET, iss), "")
            .send()
            .await
            .unwrap())
        .await,
        None,
        "unknown user"
    );

    // The session bound to alice ends when a request of it names nobody, or someone else.
    let anonymous = c
        .get(format!("{base}/projects"))
        .header("accept", "application/json")
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 302, "session ended: back to the login page");
    let r = page("alice", &good, "").send().await.unwrap();
    let session = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = page("bob", &assertion("bob", ASSERTION_SECRET, iss), &session)
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["set-cookie"].to_str().unwrap() != session,
        "a new session for bob"
    );
    assert_eq!(who(r).await.as_deref(), Some("bob"));

    let rest = c.get(format!("{base}/rest/api/1.0/projects")).send().await.unwrap();
    assert_eq!(rest.status(), 401, "REST answers 401 without identity");
    let status: Value = c
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "RUNNING");
}

#[tokio::test]
async fn identities_from_untrusted_addresses_are_ignored() {
    let s = Standin::new(Settings {
        admin_user: "admin".into(),
        admin_password: "pw".into(),
        assertion_secret: ASSERTION_SECRET.into(),
        issuer: "http://bb.example/sso".into(),
        user_header: "X-Forwarded-User".into(),
        assertion_header: "X-Bbsso-Assertion".into(),
        trusted: vec![],
        max_users: 10,
    });
    s.add_user("alice", "Alice", "a@x", "p", true, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(s.clone().serve(listener));
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/projects"))
        .header("x-forwarded-user", "alice")
        .header(
            "x-bbsso-assertion",
            assertion("alice", ASSERTION_SECRET, "http://bb.example/sso"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "an empty trusted list refuses everyone");
}
