//! The request body's read timeout: how long a client may pause between two parts of a body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::BoxError;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

/// A request body that fails with [`BodyPaused`] when nothing arrives for `timeout` while
/// it is read. Each wait has the whole `timeout`; a body that keeps arriving is never cut.
///
/// The timer is armed only when a read has to wait. Nearly every body arrives with its
/// headers and never waits; arming and dropping a timer for each one cost about 2% of an
/// in-memory ingest request.
pub struct ReadTimeoutBody {
    body: Body,
    timeout: Duration,
    wait: Option<Pin<Box<Sleep>>>,
}

impl ReadTimeoutBody {
    pub fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            wait: None,
        }
    }
}

impl http_body::Body for ReadTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.wait = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let wait = this
            .wait
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyPaused)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client paused longer than the body read timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body paused longer than its read timeout")]
pub struct BodyPaused;

#[cfg(test)]
mod tests {
    use futures::stream;
    use http_body_util::BodyExt;

    use super::*;

    /// A body whose parts arrive after the given delays, then ends.
    fn arriving_after(delays: &[u64]) -> Body {
        let delays = delays.to_vec();
        let parts = stream::unfold(delays.into_iter(), |mut delays| async move {
            let delay = delays.next()?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Some((Ok::<_, BoxError>(Bytes::from_static(b"part")), delays))
        });
        Body::from_stream(parts)
    }

    async fn read(body: Body, timeout_ms: u64) -> Result<Bytes, BoxError> {
        let timed = ReadTimeoutBody::new(body, Duration::from_millis(timeout_ms));
        timed.collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_arriving_is_read_whole_however_long_it_takes() {
        // 4 x 900 ms is far past the timeout of 1 s; no single pause is.
        let read = read(arriving_after(&[900, 900, 900, 900]), 1_000).await;
        assert_eq!(read.unwrap(), Bytes::from_static(b"partpartpartpart"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_past_the_timeout_fails_the_body() {
        let started = tokio::time::Instant::now();
        let err = read(arriving_after(&[10, 1_500]), 1_000).await.unwrap_err();
        assert!(err.is::<BodyPaused>(), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1_010) && waited < Duration::from_millis(1_100),
            "{waited:?}"
        );
    }

    #[test]
    fn a_body_that_is_already_here_arms_no_timer() {
        // Outside a runtime, where arming a timer would panic.
        let timed = ReadTimeoutBody::new(Body::from("{}"), Duration::from_millis(1));
        let read = futures::executor::block_on(timed.collect()).unwrap();
        assert_eq!(read.to_bytes(), Bytes::from_static(b"{}"));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_body_itself_pass_through() {
        let broken = Body::from_stream(stream::iter([Err::<Bytes, BoxError>("broken".into())]));
        let err = read(broken, 1_000).await.unwrap_err();
        assert_eq!(err.to_string(), "broken");
    }
}
