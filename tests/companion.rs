//! Cross-language proof: assertions minted by the Rust proxy are verified by the Java companion authenticator,
//! which refuses each kind of bad one. Compiles the plugin with `bitbucket-plugin/test.sh` (javac against the
//! SPI stand-ins) and runs its verifier on the proxy's tokens.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bbsso::identity::Asserter;
use common::repo_path;
use serde_json::json;

const SECRET: &str = "cross-language-secret-0123456789abcdef";

fn craft(alg: jsonwebtoken::Algorithm, claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn verify_in_java(
    classes: &std::path::Path,
    secret: &str,
    issuer: &str,
    lines: &[(String, &str, &str)],
) -> Vec<String> {
    let mut child = Command::new("java")
        .args([
            "-cp",
            classes.to_str().unwrap(),
            "com.bbsso.bitbucket.VerifyCli",
            secret,
            issuer,
            "127.0.0.0/8, ::1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("java");
    let mut stdin = child.stdin.take().unwrap();
    for (token, user, addr) in lines {
        writeln!(stdin, "{token}\t{user}\t{addr}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn java_accepts_the_proxys_assertions_and_refuses_every_bad_one() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(repo_path("bitbucket-plugin/test.sh"))
        .arg("--compile-only")
        .env("OUT", out.path())
        .status()
        .expect("bash");
    assert!(status.success(), "the plugin compiles");
    let classes = std::env::join_paths([
        out.path().join("classes"),
        out.path().join("test-classes"),
        "/usr/share/java/servlet-api.jar".into(),
    ])
    .unwrap();
    let classes = std::path::PathBuf::from(classes);

    let url = url::Url::parse("https://bitbucket.example.com").unwrap();
    let issuer = "https://bitbucket.example.com/sso";
    let now = bbsso::session::now();
    let asserter = Asserter::new(&url, SECRET, Duration::from_secs(60));
    let good = asserter
        .mint("alice", Some("alice@example.com"), Some("Alice Example"), now)
        .unwrap();
    let expired = asserter.mint("alice", None, None, now - 3600).unwrap();
    let other_issuer = Asserter::new(
        &url::Url::parse("https://evil.example").unwrap(),
        SECRET,
        Duration::from_secs(60),
    )
    .mint("alice", None, None, now)
    .unwrap();
    let other_secret = Asserter::new(
        &url,
        "another-secret-another-secret-0123456789",
        Duration::from_secs(60),
    )
    .mint("alice", None, None, now)
    .unwrap();
    let claims =
        |aud: &str| json!({"iss": issuer, "aud": aud, "sub": "alice", "iat": now, "exp": now + 60, "jti": "j"});
    let wrong_aud = craft(jsonwebtoken::Algorithm::HS256, claims("jira"), SECRET);
    let hs512 = craft(jsonwebtoken::Algorithm::HS512, claims("bitbucket"), SECRET);
    let none = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(r#"{"alg":"none"}"#),
            e.encode(claims("bitbucket").to_string())
        )
    };

    let cases: Vec<(String, &str, &str, &str)> = vec![
        (good.clone(), "alice", "127.0.0.1", "ok"),
        (good.clone(), "alice", "::1", "ok"),
        (expired, "alice", "127.0.0.1", "refused: expired"),
        (wrong_aud, "alice", "127.0.0.1", "refused: wrong_audience"),
        (other_issuer, "alice", "127.0.0.1", "refused: wrong_issuer"),
        (other_secret, "alice", "127.0.0.1", "refused: bad_signature"),
        (good.clone(), "bob", "127.0.0.1", "refused: subject_mismatch"),
        (hs512, "alice", "127.0.0.1", "refused: algorithm_not_hs256"),
        (none, "alice", "127.0.0.1", "refused: algorithm_not_hs256"),
        (good.clone(), "alice", "10.9.9.9", "refused: untrusted_address"),
    ];
    let lines: Vec<(String, &str, &str)> = cases.iter().map(|(t, u, a, _)| (t.clone(), *u, *a)).collect();
    let got = verify_in_java(&classes, SECRET, issuer, &lines);
    let want: Vec<&str> = cases.iter().map(|c| c.3).collect();
    assert_eq!(got, want);

    let no_secret = verify_in_java(&classes, "-", issuer, &[(good, "alice", "127.0.0.1")]);
    assert_eq!(no_secret, vec!["refused: no_secret_configured"], "no secret: closed");
}
