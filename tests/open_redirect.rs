//! Open redirect: hundreds of `rd` payloads, each through a whole sign-in, never leave the origin; good paths
//! with queries survive intact.

mod common;

use common::idp::*;
use common::minting::MintingProvider;
use common::*;

/// The data file, plus each entry behind common prefixes and in encoded forms.
fn payloads() -> Vec<String> {
    let text = std::fs::read_to_string(repo_path("tests/data/open-redirect-payloads.txt")).unwrap();
    let base: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut all = base.clone();
    for p in &base {
        let encoded: String = url::form_urlencoded::byte_serialize(p.as_bytes()).collect();
        all.push(encoded);
        all.push(p.replace('/', "%2F"));
        all.push(p.replace('/', "\\"));
        all.push(format!("/{p}"));
    }
    all.sort();
    all.dedup();
    all
}

/// Where the browser is sent after signing in with `rd`.
async fn landing(proxy: &ProxyProcess, rd: &str) -> String {
    let client = browser();
    let rd: String = url::form_urlencoded::byte_serialize(rd.as_bytes()).collect();
    let start = client
        .get(format!("http://{}/sso/login?rd={rd}", proxy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 302);
    let authorize = start.headers()["location"].to_str().unwrap().to_owned();
    let back = client.get(authorize).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    let done = client.get(callback).send().await.unwrap();
    assert_eq!(done.status(), 302, "signed in");
    done.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_return_path_leaves_the_origin() {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let port = free_port();
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let proxy = ProxyProcess::start(&sso_config(port, upstream, &provider.issuer, "oidc", "", ""));
    wait_ready(proxy.admin).await;
    let origin = reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();

    let all = payloads();
    assert!(all.len() >= 200, "{} payloads", all.len());
    let mut escaped = Vec::new();
    for payload in &all {
        let location = landing(&proxy, payload).await;
        let resolved = origin.join(&location).unwrap();
        let ok = location.starts_with('/')
            && !location.starts_with("//")
            && !location.contains('\\')
            && resolved.origin() == origin.origin()
            && !resolved.path().starts_with("/sso/");
        if !ok {
            escaped.push(format!("{payload:?} -> {location:?}"));
        }
    }
    assert!(escaped.is_empty(), "left the origin:\n{}", escaped.join("\n"));

    for good in [
        "/projects",
        "/projects/ABC/repos/web/browse?at=refs%2Fheads%2Fmain&until=abc",
        "/plugins/servlet/ssh/account/keys",
        "/users/j%C3%BCrgen?x=1&y=%2F",
    ] {
        assert_eq!(landing(&proxy, good).await, good, "good paths survive intact");
    }
}
