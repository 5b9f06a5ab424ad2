//! WebSocket upgrades are bridged end to end.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_echo_works_through_the_proxy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = ProxyProcess::start(&config(upstream, "", "", ""));

    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/plugins/servlet/events", proxy.addr))
        .await
        .expect("handshake through the proxy");
    assert_eq!(response.status(), 101);
    for text in ["hello", "second message", &"x".repeat(100_000)] {
        ws.send(Message::text(text.to_owned())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();

    let access = proxy.wait_for_log(|v| v["target"] == "access");
    assert_eq!(access["status"], 101);
}
