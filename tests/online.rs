//! `check-config --online` against the real test provider and the Bitbucket stand-in.

mod common;

use std::process::Command;

use bbsso::standin::Standin;
use common::idp::*;
use common::*;

async fn standin() -> std::net::SocketAddr {
    let s = Standin::new(standin_settings(
        "svc",
        "svc-password",
        "http://127.0.0.1:1/sso".to_owned(),
        &[],
        10,
    ));
    s.add_user("plain", "Plain User", "plain@example.com", "plain-password", true, &[]);
    serve_standin(&s).await
}

fn run(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bbsso.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--online", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_green_and_each_failure_with_its_remedy() {
    let port = free_port();
    let provider = RealProvider::start(port, &[]);
    let bitbucket = standin().await;
    let good = sso_config(
        port,
        bitbucket,
        &provider.issuer,
        "cognito",
        "",
        "[bitbucket]\nadmin_user = \"svc\"\nadmin_password = \"svc-password\"\n",
    );

    let (code, out) = run(&good);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✓ provider idp: issuer matches")
            && out.contains("signing key(s)")
            && out.contains("accepts the client"),
        "{out}"
    );
    assert!(out.contains(&format!(
        "register the callback URL http://127.0.0.1:{port}/sso/callback"
    )));
    assert!(
        out.contains("✓ Bitbucket REST API: svc is an admin") && out.contains("probes passed"),
        "{out}"
    );

    let cases = [
        (
            good.replace(&provider.issuer, "http://127.0.0.1:9"),
            "✗ provider idp: discovery",
            "fix: check providers[].issuer",
        ),
        (
            good.replace(
                &format!("issuer = \"{}\"", provider.issuer),
                &format!("issuer = \"{}\"", provider.issuer.replace("127.0.0.1", "localhost")),
            ),
            "✗ provider idp: discovery says the issuer is",
            "fix: copy the issuer",
        ),
        (
            good.replace(CLIENT_SECRET, "wrong-secret"),
            "refused the client",
            "fix: check providers[].client_id and client_secret",
        ),
        (
            good.replace("svc-password", "wrong-password"),
            "✗ Bitbucket REST API: Bitbucket refused the service account (401)",
            "fix: fix bitbucket.admin_user / admin_password",
        ),
        (
            good.replace(
                "admin_user = \"svc\"\nadmin_password = \"svc-password\"",
                "admin_user = \"plain\"\nadmin_password = \"plain-password\"",
            ),
            "(403)",
            "fix: give the service account the global Admin permission",
        ),
    ];
    // With the Redis store: a running Redis passes, a closed port fails with the fix.
    let redis = common::redis_server::Redis::shared();
    let session_line = format!("keys = [\"{SESSION_KEY}\"]");
    let with_redis = good.replacen(
        &session_line,
        &format!("{session_line}\n{}", redis.session_settings()),
        1,
    );
    let (code, out) = run(&with_redis);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✓ Redis session store answers (PING)"), "{out}");
    let closed = format!("redis://{}", common::closed_addr());
    let mut cases = cases.to_vec();
    cases.push((
        with_redis.replace(&redis.url, &closed),
        "✗ Redis session store: session store unavailable",
        "fix: check session.redis_url",
    ));
    for (text, failure, remedy) in cases {
        let (code, out) = run(&text);
        assert_eq!(code, 1, "{failure}: {out}");
        assert!(
            out.contains(failure) && out.contains(remedy),
            "{failure} / {remedy}:\n{out}"
        );
        assert!(out.contains("probes failed"));
    }
}
