//! Bodies stream through the proxy both ways without being buffered, and memory stays flat.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::sync::{mpsc, oneshot};

const TOTAL: usize = 256 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

type FrameResult = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

fn channel_body(rx: mpsc::Receiver<FrameResult>) -> Body {
    let mut rx = rx;
    StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed()
}

/// Chunk `i` is filled with one byte value, so the receiver can check order and content cheaply.
fn chunk(i: usize) -> Bytes {
    Bytes::from(vec![(i % 251) as u8; CHUNK])
}

/// Adds up the bytes of a body and checks each byte against the chunk pattern.
struct Tally {
    total: usize,
    bad: usize,
}

impl Tally {
    fn add(&mut self, data: &[u8]) {
        let mut offset = self.total;
        let mut rest = data;
        while !rest.is_empty() {
            let i = offset / CHUNK;
            let in_chunk = (CHUNK - offset % CHUNK).min(rest.len());
            let want = (i % 251) as u8;
            if rest[..in_chunk].iter().any(|b| *b != want) {
                self.bad += 1;
            }
            offset += in_chunk;
            rest = &rest[in_chunk..];
        }
        self.total += data.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_256_mib_streams_to_the_upstream_before_the_client_has_sent_it_all() {
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let first_tx = Arc::new(Mutex::new(Some(first_tx)));
    let upstream = spawn_upstream(move |req: Request<Incoming>| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut tally = Tally { total: 0, bad: 0 };
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    tally.add(data);
                    if let Some(tx) = first_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
            }
            Response::new(full(format!("{} {}", tally.total, tally.bad)))
        }
    })
    .await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));

    let (tx, rx) = mpsc::channel::<FrameResult>(4);
    let mut sender = connect(proxy.addr).await;
    let req = Request::put("/scm/proj/repo.git/git-receive-pack")
        .header("host", "localhost:8080")
        .header("content-type", "application/x-git-receive-pack-request")
        .body(channel_body(rx))
        .unwrap();
    let response = tokio::spawn(async move { sender.send_request(req).await });

    tx.send(Ok(Frame::data(chunk(0)))).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), first_rx)
        .await
        .expect("the upstream must receive the first chunk while the client still holds back the rest: the proxy buffered the request body")
        .unwrap();
    for i in 1..TOTAL / CHUNK {
        tx.send(Ok(Frame::data(chunk(i)))).await.unwrap();
    }
    drop(tx);

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{TOTAL} 0"),
        "upstream got every byte, in order"
    );

    let peak_mib = proxy.peak_rss_kib() / 1024;
    assert!(
        peak_mib < 64,
        "proxy peak RSS {peak_mib} MiB after a 256 MiB upload: the body was buffered"
    );
    let access = proxy.wait_for_log(|v| v["target"] == "access" && v["method"] == "PUT");
    assert_eq!(access["bytes_in"], TOTAL as u64);
    assert_eq!(access["route"], "api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_256_mib_reaches_the_client_before_the_upstream_has_sent_it_all() {
    let (got_first_tx, got_first_rx) = oneshot::channel::<()>();
    let got_first_rx = Arc::new(Mutex::new(Some(got_first_rx)));
    let upstream = spawn_upstream(move |_req: Request<Incoming>| {
        let got_first_rx = got_first_rx.clone();
        async move {
            let (tx, rx) = mpsc::channel::<FrameResult>(4);
            let wait = got_first_rx.lock().unwrap().take();
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(chunk(0)))).await.ok();
                if let Some(wait) = wait {
                    // Hold back the rest until the client confirms the first chunk arrived.
                    if tokio::time::timeout(Duration::from_secs(30), wait).await.is_err() {
                        return;
                    }
                }
                for i in 1..TOTAL / CHUNK {
                    if tx.send(Ok(Frame::data(chunk(i)))).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "application/x-git-upload-pack-result")
                .body(channel_body(rx))
                .unwrap()
        }
    })
    .await;
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));

    let mut sender = connect(proxy.addr).await;
    let req = Request::post("/scm/proj/repo.git/git-upload-pack")
        .header("host", "localhost:8080")
        .body(full("0000"))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut tally = Tally { total: 0, bad: 0 };
    let mut signal = Some(got_first_tx);
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("the client must receive the first chunk while the upstream still holds back the rest: the proxy buffered the response")
    {
        if let Some(data) = frame.unwrap().data_ref() {
            tally.add(data);
            if let Some(s) = signal.take() {
                let _ = s.send(());
            }
        }
    }
    assert_eq!(tally.total, TOTAL);
    assert_eq!(tally.bad, 0, "every byte arrived in order");

    let peak_mib = proxy.peak_rss_kib() / 1024;
    assert!(
        peak_mib < 64,
        "proxy peak RSS {peak_mib} MiB after a 256 MiB download: the body was buffered"
    );
    let access = proxy.wait_for_log(|v| v["target"] == "access" && v["method"] == "POST");
    assert_eq!(access["bytes_out"], TOTAL as u64);
}
