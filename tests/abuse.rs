//! Abuse limits and page hardening: the sign-in rate limit answers 429 and recovers; every page of the proxy
//! carries the security headers; the new metrics count what happened.

mod common;

use std::time::Duration;

use common::idp::*;
use common::minting::MintingProvider;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_rate_limit_answers_429_and_recovers() {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let port = free_port();
    let upstream = spawn_identity_upstream(format!("http://127.0.0.1:{port}")).await;
    let text = sso_config(port, upstream, &provider.issuer, "oidc", "", "")
        .replace("rate_limit_per_minute = 0", "rate_limit_per_minute = 60");
    let proxy = ProxyProcess::start(&text);
    wait_ready(proxy.admin).await;
    let client = browser();
    let login = format!("http://{}/sso/login?rd=/", proxy.addr);
    let mut limited = None;
    for i in 0..70 {
        let r = client.get(&login).header("accept", "text/html").send().await.unwrap();
        if r.status() == 429 {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status(), 302);
    }
    let (count, r) = limited.expect("429 past the limit");
    assert!(
        (55..=61).contains(&count),
        "limited after about 60 requests, not {count}"
    );
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.text().await.unwrap().contains("Too many sign-in attempts"));
    // Pages that are not sign-in attempts are not limited.
    assert_eq!(
        client
            .get(format!("http://{}/status", proxy.addr))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(client.get(&login).send().await.unwrap().status(), 302, "recovered");
    let (_, _, metrics) = get(proxy.admin, "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("bbsso_rate_limited_total{route=\"sso\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_page_carries_the_security_headers_and_metrics_count_sign_ins() {
    let provider = MintingProvider::start(CLIENT_ID).await;
    let port = free_port();
    let closed = closed_addr();
    let text = sso_config(
        port,
        closed,
        &provider.issuer,
        "oidc",
        "",
        "[sso]\nauto_redirect_delay = \"3s\"\n",
    );
    let proxy = ProxyProcess::start(&text);
    let base = format!("http://{}", proxy.addr);
    let client = browser();
    // Not ready while Bitbucket is down; wait for the provider instead.
    proxy.wait_for_log(|v| v["message"] == "provider discovery and keys loaded");
    let pages = [
        format!("{base}/sso/login?cancelled=1"),
        format!("{base}/sso/logged-out"),
        format!("{base}/sso/callback?state=x&code=y"),
        format!("{base}/sso/callback?error=access_denied"),
        format!("{base}/sso/nothing"),
        format!("{base}/login"),
        format!("{base}/rest/api/1.0/x"),
    ];
    for url in pages {
        let r = client.get(&url).header("accept", "text/html").send().await.unwrap();
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"),
            "{url}: CSP {csp:?}"
        );
        assert!(!csp.contains("script-src 'unsafe"), "{url}: no inline script allowed");
        assert_eq!(h["cache-control"], "no-store", "{url}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{url}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{url}");
    }
    // A sign-in through the minting provider, then the counters.
    let done = walk(&client, client.get(format!("{base}/sso/login?rd=/x"))).await;
    assert_eq!(
        done.status, 502,
        "signed in, then Bitbucket (closed port) is unavailable"
    );
    let (_, _, metrics) = get(proxy.admin, "/metrics", &[]).await;
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "bbsso_logins_total{outcome=\"success\",reason=\"ok\"} 1",
        "bbsso_logins_total{outcome=\"failure\",reason=\"provider_error\"} 1",
        "bbsso_jwks_fetches_total{provider=\"idp\"} 1",
        "bbsso_upstream_errors_total{kind=\"connect_refused\"}",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}
