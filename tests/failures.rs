//! Slow clients, Bitbucket down or silent, and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_client_sending_headers_slowly_is_cut_off() {
    let upstream = spawn_echo_headers().await;
    let proxy = ProxyProcess::start(&config(upstream, "header_read_timeout = \"1s\"", "", ""));
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /projects HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    // Trickle a header byte now and then, never finishing the head.
    let outcome = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => return r,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    if stream.write_all(b"X").await.is_err() {
                        return Ok(0);
                    }
                }
            }
        }
    })
    .await
    .expect("the proxy must close a connection whose headers never complete");
    let n = outcome.unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || text.starts_with("HTTP/1.1 408"),
        "closed (or 408), got {text:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    // A normal request on a new connection still works.
    let (status, _, _) = get(proxy.addr, "/projects", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_refusing_connections_gives_502_as_a_page_or_json() {
    let closed = closed_addr();
    let proxy = ProxyProcess::start(&config(closed, "", "", ""));

    let (status, headers, body) = get(
        proxy.addr,
        "/projects",
        &[("accept", "text/html,application/xhtml+xml")],
    )
    .await;
    assert_eq!(status, 502);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = String::from_utf8_lossy(&body);
    assert!(page.contains("Bitbucket is unavailable"), "{page}");
    assert!(
        page.contains(headers["x-request-id"].to_str().unwrap()),
        "the page shows the reference id"
    );

    let (status, headers, body) = get(proxy.addr, "/rest/api/1.0/projects", &[("accept", "application/json")]).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "upstream_unavailable");
    assert_eq!(v["request_id"], headers["x-request-id"].to_str().unwrap());

    let metrics = reqwest_like_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("bbsso_upstream_errors_total{kind=\"connect_refused\"} 2"),
        "{metrics}"
    );
    let (ready_status, _, _) = get(proxy.admin, "/readyz", &[]).await;
    assert_eq!(ready_status, 503, "not ready while Bitbucket is down");
    let (health_status, _, _) = get(proxy.admin, "/healthz", &[]).await;
    assert_eq!(health_status, 200, "but alive");
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so connects hang.
fn black_hole() -> (std::net::SocketAddr, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let listener = socket.listen(1).unwrap();
    std::mem::forget(listener);
    let mut held = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return (addr, held),
        }
    }
    panic!("could not fill the accept queue of the test listener");
}

#[tokio::test]
async fn upstream_not_answering_the_connect_gives_504() {
    let (addr, _held) = black_hole();
    let proxy = ProxyProcess::start(&config(addr, "", "connect_timeout = \"1s\"", ""));
    let (status, headers, body) = get(proxy.addr, "/rest/api/1.0/projects", &[("accept", "application/json")]).await;
    assert_eq!(status, 504);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "upstream_timeout");
    assert_eq!(headers["content-type"], "application/json");
    let metrics = reqwest_like_get(proxy.admin, "/metrics").await;
    assert!(
        metrics.contains("bbsso_upstream_errors_total{kind=\"connect_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_silent_after_the_request_gives_504() {
    let upstream = spawn_upstream(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("too late"))
    })
    .await;
    let proxy = ProxyProcess::start(&config(upstream, "", "idle_timeout = \"1s\"", ""));
    let (status, _, body) = get(proxy.addr, "/projects", &[("accept", "text/html")]).await;
    assert_eq!(status, 504);
    assert!(String::from_utf8_lossy(&body).contains("Bitbucket is not responding"));
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_connections() {
    let (seen_tx, seen_rx) = tokio::sync::mpsc::channel::<()>(1);
    let upstream = spawn_upstream(move |_req: Request<Incoming>| {
        let seen_tx = seen_tx.clone();
        async move {
            let _ = seen_tx.send(()).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            Response::new(full("finished after shutdown began"))
        }
    })
    .await;
    let mut proxy = ProxyProcess::start(&config(upstream, "shutdown_grace = \"20s\"", "", ""));
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/projects", &[]).await });
    let mut seen_rx = seen_rx;
    tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
        .await
        .unwrap();

    proxy.signal("TERM");
    let refused = async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(1), refused)
        .await
        .expect("new connections are refused once SIGTERM arrives");

    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"finished after shutdown began");
    let exit = tokio::task::spawn_blocking(move || {
        let status = proxy.child.wait().unwrap();
        (status, proxy.log_text())
    })
    .await
    .unwrap();
    assert!(exit.0.success(), "clean exit after draining: {:?}\n{}", exit.0, exit.1);
    assert!(exit.1.contains("all connections closed"));
}

/// GET on the admin listener, body as text.
async fn reqwest_like_get(addr: std::net::SocketAddr, path: &str) -> String {
    let (_, _, body) = get(addr, path, &[]).await;
    String::from_utf8_lossy(&body).into_owned()
}
