//! Header hygiene on real sockets: spoofed identity headers, the proxy's cookies, hop-by-hop headers, X-Forwarded-*.

mod common;

use common::*;
use hyper::body::Incoming;
use hyper::{Request, Response};

/// Spellings of the identity headers a client might use to impersonate someone.
const SPOOFED: &[&str] = &[
    "X-Forwarded-User",
    "x-forwarded-user",
    "X-FORWARDED-USER",
    "X_Forwarded_User",
    "x_forwarded_user",
    "X_FORWARDED_USER",
    "X-Forwarded_User",
    "x_forwarded-user",
    "X-forwarded_USER",
    "X-Bbsso-Assertion",
    "x-bbsso-assertion",
    "X_Bbsso_Assertion",
    "X-BBSSO_ASSERTION",
    "x_bbsso-ASSERTION",
    "X-Remote-User",
    "x_remote_user",
];

fn normalized(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

#[tokio::test]
async fn every_spoofed_identity_header_variant_is_removed_and_other_headers_survive() {
    let upstream = spawn_echo_headers().await;
    // A second configured header name proves the rule follows the configuration, not a hard-coded list.
    let proxy = ProxyProcess::start(&config(
        upstream,
        "",
        "",
        "[identity]\nuser_header = \"X-Remote-User\"\n",
    ));
    let protected = ["x-remote-user", "x-bbsso-assertion"];
    for variant in SPOOFED {
        let request = format!(
            "GET /projects HTTP/1.1\r\nHost: localhost:8080\r\n{variant}: admin\r\n{variant}: second-copy\r\nX-Custom-Header: keep-me\r\nConnection: close\r\n\r\n"
        );
        let response = raw_exchange(proxy.addr, &request).await;
        assert_eq!(response.status, 200);
        let headers = echoed_headers(&response.json());
        let leaked: Vec<_> = headers
            .iter()
            .filter(|(k, _)| protected.contains(&normalized(k).as_str()))
            .collect();
        assert!(leaked.is_empty(), "{variant} reached the upstream: {leaked:?}");
        if !protected.contains(&normalized(variant).as_str()) {
            // Not a configured identity header (the default name while another is configured): it passes.
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| normalized(k) == normalized(variant) && v == "admin"),
                "{variant} should pass"
            );
        }
        assert!(
            headers.iter().any(|(k, v)| k == "x-custom-header" && v == "keep-me"),
            "other headers survive"
        );
    }
}

#[tokio::test]
async fn default_identity_headers_are_stripped_in_every_spelling() {
    let upstream = spawn_echo_headers().await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));
    let mut request = String::from("GET /dashboard HTTP/1.1\r\nHost: localhost:8080\r\nConnection: close\r\n");
    for variant in SPOOFED {
        request.push_str(&format!("{variant}: admin\r\n"));
    }
    request.push_str("\r\n");
    let response = raw_exchange(proxy.addr, &request).await;
    let headers = echoed_headers(&response.json());
    for (k, _) in &headers {
        let n = normalized(k);
        assert!(
            n != "x-forwarded-user" && n != "x-bbsso-assertion",
            "{k} reached the upstream"
        );
    }
    // X-Remote-User is not configured here, so it is an ordinary header.
    assert_eq!(
        headers.iter().filter(|(k, _)| normalized(k) == "x-remote-user").count(),
        2
    );
}

#[tokio::test]
async fn the_proxy_cookies_are_removed_and_other_cookies_pass_unchanged() {
    let upstream = spawn_echo_headers().await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));
    let (status, _, body) = get(
        proxy.addr,
        "/projects",
        &[
            (
                "cookie",
                "BITBUCKETSESSIONID=B1; bbsso=sessionsecret; _atl_bitbucket_remember_me=R1",
            ),
            (
                "cookie",
                "__Host-bbsso=hostsecret; bbsso_login_abc=statesecret; bbssofan=keep; theme=dark",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let cookies: Vec<String> = echoed_headers(&v)
        .into_iter()
        .filter(|(k, _)| k == "cookie")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        cookies,
        vec!["BITBUCKETSESSIONID=B1; _atl_bitbucket_remember_me=R1; bbssofan=keep; theme=dark".to_owned()]
    );
    assert!(
        !proxy.log_text().contains("secret"),
        "cookie values never reach the logs"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_cross_the_proxy_in_either_direction() {
    let upstream = spawn_upstream(|req: Request<Incoming>| async move {
        let seen: Vec<String> = req.headers().keys().map(|k| k.as_str().to_owned()).collect();
        Response::builder()
            .header("connection", "X-Hop-Response")
            .header("x-hop-response", "must not reach the client")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=x")
            .header("trailer", "X-Checksum")
            .header("x-end-to-end", "kept")
            .body(full(serde_json::to_string(&seen).unwrap()))
            .unwrap()
    })
    .await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));
    let request = "GET /projects HTTP/1.1\r\nHost: localhost:8080\r\nConnection: keep-alive, X-Hop-Request\r\nX-Hop-Request: secret-hop\r\n\
                   Keep-Alive: timeout=300\r\nTE: trailers\r\nTrailer: X-Checksum\r\nProxy-Authorization: Basic cHJveHk6cGFzcw==\r\n\
                   Proxy-Connection: keep-alive\r\nX-End-To-End: yes\r\n\r\n";
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"]") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let seen: Vec<String> = serde_json::from_str(body).unwrap();
    for hop in [
        "connection",
        "x-hop-request",
        "keep-alive",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(!seen.iter().any(|h| h == hop), "{hop} reached the upstream: {seen:?}");
    }
    assert!(seen.iter().any(|h| h == "x-end-to-end"));
    for hop in ["x-hop-response", "keep-alive:", "proxy-authenticate", "trailer:"] {
        assert!(!head.contains(hop), "{hop} reached the client:\n{head}");
    }
    assert!(head.contains("x-end-to-end: kept"));
}

#[tokio::test]
async fn forwarded_headers_are_replaced_for_untrusted_peers_and_appended_for_trusted_ones() {
    let upstream = spawn_echo_headers().await;
    let spoof = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=6.6.6.6"),
        ("x-request-id", "abc-123"),
    ];

    let untrusted = ProxyProcess::start(&config(upstream, "trusted_proxies = [\"10.0.0.0/8\"]", "", ""));
    let (_, headers, body) = get(untrusted.addr, "/projects", &spoof).await;
    let seen = echoed_headers(&serde_json::from_slice(&body).unwrap());
    let one = |name: &str| {
        seen.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(one("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(one("x-forwarded-proto"), vec!["http"]);
    assert_eq!(one("x-forwarded-host"), vec!["localhost:8080"]);
    assert_eq!(one("host"), vec!["localhost:8080"], "Host is preserved");
    assert!(one("forwarded").is_empty());
    assert_eq!(one("x-request-id"), vec!["abc-123"], "a sane client request id is kept");
    assert_eq!(headers["x-request-id"], "abc-123");
    let access = untrusted.wait_for_log(|v| v["target"] == "access");
    assert_eq!(access["client_ip"], "127.0.0.1");

    let trusted = ProxyProcess::start(&config(upstream, "trusted_proxies = [\"127.0.0.0/8\"]", "", ""));
    let (_, _, body) = get(trusted.addr, "/projects", &spoof).await;
    let seen = echoed_headers(&serde_json::from_slice(&body).unwrap());
    let one = |name: &str| {
        seen.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(one("x-forwarded-for"), vec!["6.6.6.6, 127.0.0.1"]);
    assert_eq!(one("x-forwarded-proto"), vec!["https"]);
    assert_eq!(one("x-forwarded-host"), vec!["evil.example"]);
    let access = trusted.wait_for_log(|v| v["target"] == "access");
    assert_eq!(access["client_ip"], "6.6.6.6");

    // A request id with odd characters is replaced by a generated one.
    let (_, headers, body) = get(untrusted.addr, "/projects", &[("x-request-id", "bad id<script>")]).await;
    let seen = echoed_headers(&serde_json::from_slice(&body).unwrap());
    let forwarded_id = seen
        .iter()
        .find(|(k, _)| k == "x-request-id")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_ne!(forwarded_id, "bad id<script>");
    assert_eq!(headers["x-request-id"], forwarded_id.as_str());
}
