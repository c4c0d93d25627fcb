//! The minimum request-body data rate: a body must keep arriving at
//! `min_body_bytes_per_sec`, and may fall behind that rate by at most
//! `body_grace_secs` (its start and any pause count against it).
//!
//! The allowance is a bucket of seconds: it starts full (`grace`), drains
//! with time and fills by `bytes / rate` as data arrives, never above
//! `grace`. When it runs dry while the body waits for data, the body ends
//! with [`BodyTooSlow`] and the shared flag is set, so the connection layer
//! answers 408 whatever the handler made of the error. The clock starts when
//! the body is first read, so time a request waits before its handler reads
//! is not held against the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::time::{Instant, Sleep};

/// The slowest body accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rate {
    /// Bytes per second, at least 1.
    pub(super) bytes_per_sec: u64,
    /// How far behind the rate a body may fall.
    pub(super) grace: Duration,
}

/// The body arrived more slowly than `server.min_body_bytes_per_sec` allows.
#[derive(Debug, Error)]
#[error("the request body arrived more slowly than the minimum rate")]
pub(super) struct BodyTooSlow;

/// A request body held to a [`Rate`].
pub(super) struct RateLimited<B> {
    inner: B,
    rate: Rate,
    /// When the allowance runs dry; unset until the body is first read.
    deadline: Option<Pin<Box<Sleep>>>,
    tripped: Arc<AtomicBool>,
    cut: bool,
}

impl<B> RateLimited<B> {
    pub(super) fn new(inner: B, rate: Rate, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            rate,
            deadline: None,
            tripped,
            cut: false,
        }
    }

    /// `bytes` arrived: the allowance grows by the time they buy, up to `grace`.
    fn credit(&mut self, bytes: usize) {
        let Some(deadline) = self.deadline.as_mut() else {
            return;
        };
        let now = Instant::now();
        let left = deadline.deadline().saturating_duration_since(now);
        let bought = Duration::from_secs_f64(bytes as f64 / self.rate.bytes_per_sec.max(1) as f64);
        let allowance = left.saturating_add(bought).min(self.rate.grace);
        deadline.as_mut().reset(now + allowance);
    }
}

impl<B> Body for RateLimited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.cut {
            return Poll::Ready(None);
        }
        if this.deadline.is_none() {
            let grace = this.rate.grace;
            this.deadline = Some(Box::pin(tokio::time::sleep(grace)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.credit(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    this.cut = true;
                    this.tripped.store(true, Ordering::Release);
                    Poll::Ready(Some(Err(Box::new(BodyTooSlow))))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn rate(bytes_per_sec: u64, grace_ms: u64) -> Rate {
        Rate {
            bytes_per_sec,
            grace: Duration::from_millis(grace_ms),
        }
    }

    type Chunks = StreamBody<
        futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    /// A body of `chunks` chunks of `size` bytes, one every `every`.
    fn paced(chunks: usize, size: usize, every: Duration) -> Chunks {
        use futures::StreamExt;
        let stream = futures::stream::iter(0..chunks)
            .then(move |_| async move {
                tokio::time::sleep(every).await;
                Ok(Frame::data(Bytes::from(vec![b'x'; size])))
            })
            .boxed();
        StreamBody::new(stream)
    }

    #[tokio::test]
    async fn a_body_at_the_rate_arrives_whole() {
        let tripped = Arc::new(AtomicBool::new(false));
        // 100 bytes every 10 ms is 10,000 bytes/s, above 1,000.
        let body = RateLimited::new(
            paced(50, 100, Duration::from_millis(10)),
            rate(1000, 200),
            Arc::clone(&tripped),
        );
        let collected = body.collect().await.expect("whole body");
        assert_eq!(collected.to_bytes().len(), 5_000);
        assert!(!tripped.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_trickle_below_the_rate_is_cut_and_flagged() {
        let tripped = Arc::new(AtomicBool::new(false));
        // 10 bytes every 20 ms is 500 bytes/s: it falls 0.99 s behind each second.
        let body = RateLimited::new(
            paced(1000, 10, Duration::from_millis(20)),
            rate(100_000, 400),
            Arc::clone(&tripped),
        );
        let started = Instant::now();
        let error = body.collect().await.expect_err("cut");
        assert!(error.is::<BodyTooSlow>(), "{error}");
        assert!(tripped.load(Ordering::Acquire));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_fast_start_does_not_buy_a_long_pause() {
        use futures::StreamExt;
        let tripped = Arc::new(AtomicBool::new(false));
        // 1 MB at once would buy 1,000 s at 1,000 bytes/s; the allowance stops at 0.3 s.
        let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from(vec![b'x'; 1_000_000]),
        ))]);
        let stalled = stream.chain(futures::stream::pending()).boxed();
        let body = RateLimited::new(
            StreamBody::new(stalled),
            rate(1000, 300),
            Arc::clone(&tripped),
        );
        let started = Instant::now();
        assert!(body.collect().await.is_err());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert!(tripped.load(Ordering::Acquire));
    }
}
