//! Health, readiness, metrics and the access log, against the real binary.

mod common;

use common::*;

#[tokio::test]
async fn health_readiness_and_metrics_report_what_happened() {
    let upstream = spawn_echo_headers().await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));
    let (status, _, body) = get(proxy.admin, "/healthz", &[]).await;
    assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    let (status, _, body) = get(proxy.admin, "/readyz", &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    for path in ["/projects", "/rest/api/1.0/projects", "/status", "/sso/nothing-here"] {
        get(proxy.addr, path, &[]).await;
    }
    let (_, headers, body) = get(proxy.admin, "/metrics", &[]).await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8_lossy(&body);
    for line in [
        "bbsso_requests_total{route=\"page\",status=\"200\"} 1",
        "bbsso_requests_total{route=\"api\",status=\"200\"} 1",
        "bbsso_requests_total{route=\"public\",status=\"200\"} 1",
        "bbsso_requests_total{route=\"sso\",status=\"404\"} 1",
        "bbsso_request_duration_seconds_count{route=\"page\"} 1",
        "bbsso_requests_in_flight 0",
        "bbsso_connections_total 4",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    assert!(text.contains("bbsso_bytes_total{direction=\"out\"}"));
    let (status, _, _) = get(proxy.admin, "/other", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn one_access_event_per_request_and_no_secret_in_any_log_line() {
    let upstream = spawn_echo_headers().await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", "[log]\nlevel = \"debug\"\n"));
    let (status, headers, _) = get(
        proxy.addr,
        "/projects/ABC/repos?token=querysecret",
        &[
            ("authorization", "Basic dXNlcjpwYXNzd29yZHNlY3JldA=="),
            ("cookie", "bbsso=cookiesecret; BITBUCKETSESSIONID=sessionsecret"),
            ("user-agent", "git/2.47"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    let event = proxy.wait_for_log(|v| v["target"] == "access");
    assert_eq!(event["method"], "GET");
    assert_eq!(event["path"], "/projects/ABC/repos", "the query string is never logged");
    assert_eq!(event["status"], 200);
    assert_eq!(event["route"], "page");
    assert_eq!(event["client_ip"], "127.0.0.1");
    assert_eq!(event["request_id"], id.as_str());
    assert_eq!(event["bytes_in"], 0);
    assert!(event["bytes_out"].as_u64().unwrap() > 0);
    assert!(event["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(event["level"], "INFO");
    let logs = proxy.log_text();
    assert_eq!(logs.matches("\"target\":\"access\"").count(), 1);
    for secret in [
        "querysecret",
        "dXNlcjpwYXNzd29yZHNlY3JldA",
        "passwordsecret",
        "cookiesecret",
        "sessionsecret",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs:\n{logs}");
    }
}

#[tokio::test]
async fn with_sso_enabled_api_requests_without_a_session_pass_anonymously_with_hygiene() {
    let upstream = spawn_echo_headers().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npublic_url = \"http://localhost:8080\"\n\
         [upstream]\nurl = \"http://{upstream}\"\n\
         [identity]\nassertion_secret = \"${{TEST_ASSERTION_SECRET}}\"\n\
         [session]\nkeys = [\"q0Wbkz8pQfN3v0G9eUu7bBq8JrYI7bqZ2mXwVt5s1lY=\"]\n\
         [[providers]]\nid = \"idp\"\nissuer = \"http://127.0.0.1:1/\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"
    );
    let secret = "this-is-the-assertion-secret-0123456789";
    let proxy = ProxyProcess::start_with_env(&text, &[("TEST_ASSERTION_SECRET", secret)]);
    let (status, _, body) = get(proxy.addr, "/rest/api/1.0/projects", &[("x_forwarded_user", "admin")]).await;
    assert_eq!(status, 200);
    let seen = echoed_headers(&serde_json::from_slice(&body).unwrap());
    assert!(!seen.iter().any(|(k, _)| k.replace('_', "-") == "x-forwarded-user"));
    assert!(!proxy.log_text().contains(secret));
}
