//! Streaming bodies: an idle timeout instead of a total deadline, and a byte count.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The boxed error type bodies carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that went silent for longer than the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}: the peer stopped sending")]
pub struct IdleTimeout(pub Duration);

pin_project! {
    /// Passes frames through, counts data bytes, and fails when no frame arrives within `idle`.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        idle: Duration,
        bytes: Option<Arc<AtomicU64>>,
    }
}

impl<B> IdleBody<B> {
    /// Wraps `inner`; `bytes` receives the running count of data bytes.
    pub fn new(inner: B, idle: Duration, bytes: Option<Arc<AtomicU64>>) -> Self {
        IdleBody {
            inner,
            deadline: tokio::time::sleep(idle),
            idle,
            bytes,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(bytes)) = (frame.data_ref(), this.bytes.as_ref()) {
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                this.deadline.reset(Instant::now() + *this.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(this.deadline.poll(cx));
                Poll::Ready(Some(Err(Box::new(IdleTimeout(*this.idle)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn silence_longer_than_the_idle_timeout_fails_but_slow_streams_pass() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream_from(rx);
        let count = Arc::new(AtomicU64::new(0));
        let mut body = std::pin::pin!(IdleBody::new(
            StreamBody::new(stream),
            Duration::from_secs(10),
            Some(count.clone())
        ));
        let sender = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"abcd")))).await.ok();
            }
            tokio::time::sleep(Duration::from_secs(11)).await;
            drop(tx);
        });
        for _ in 0..5 {
            let frame = body.as_mut().frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap().len(), 4);
        }
        let err = body.as_mut().frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("no data for"));
        assert_eq!(count.load(Ordering::Relaxed), 20);
        sender.await.unwrap();
    }

    fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
