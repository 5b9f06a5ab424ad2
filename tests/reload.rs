//! SIGHUP reloads the configuration: a valid change applies to new requests while a streaming request in flight
//! finishes on the old one; an invalid change is refused and the old configuration keeps serving.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};

async fn named_upstream(name: &'static str) -> std::net::SocketAddr {
    spawn_upstream(move |req: Request<Incoming>| async move {
        if req.uri().path() == "/stream" {
            // Ten chunks over about two seconds.
            let stream = futures_util::stream::unfold(0u32, move |i| async move {
                if i == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                Some((
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(format!("{name}{i};")))),
                    i + 1,
                ))
            });
            return Response::new(StreamBody::new(stream).boxed());
        }
        Response::new(full(name))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_config_and_keeps_the_old_one_on_errors() {
    let a = named_upstream("A").await;
    let b = named_upstream("B").await;
    let proxy = ProxyProcess::start(&config(a, "", "", ""));
    let path = proxy.dir.path().join("proxy.toml");
    let (_, _, body) = get(proxy.addr, "/page", &[]).await;
    assert_eq!(&body[..], b"A");

    // A long response is streaming from A when the configuration switches to B.
    let mut sender = connect(proxy.addr).await;
    let response = sender
        .send_request(
            Request::get("/stream")
                .header("host", "localhost")
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let mut stream = response.into_body();
    let first = stream.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"A0;");

    std::fs::write(&path, config(b, "", "", "")).unwrap();
    proxy.signal("HUP");
    let reloaded = proxy.wait_for_log(|v| v["target"] == "audit" && v["event"] == "config_reloaded");
    assert!(reloaded["changed"].as_str().unwrap().contains("upstream"), "{reloaded}");
    let (_, _, body) = get(proxy.addr, "/page", &[]).await;
    assert_eq!(&body[..], b"B", "new requests use the new configuration");

    let mut rest = first.to_vec();
    while let Some(frame) = stream.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(
        String::from_utf8(rest).unwrap(),
        "A0;A1;A2;A3;A4;A5;A6;A7;A8;A9;",
        "the request in flight finished on the old configuration"
    );

    // A broken file is refused, with every problem logged, and B keeps serving.
    std::fs::write(&path, config(a, "listn = \"oops\"", "", "")).unwrap();
    proxy.signal("HUP");
    let refused = proxy.wait_for_log(|v| v["target"] == "audit" && v["event"] == "config_reload_failed");
    assert!(
        refused["problems"].as_str().unwrap().contains("server.listn"),
        "{refused}"
    );
    let (_, _, body) = get(proxy.addr, "/page", &[]).await;
    assert_eq!(&body[..], b"B");
}
