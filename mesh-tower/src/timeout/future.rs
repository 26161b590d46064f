use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

use crate::error::{BoxError, Elapsed, TimeoutReason};

/// The response future of [`Timeout`](super::Timeout).
#[pin_project::pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    #[pin]
    sleep: Option<Sleep>,
    after: Duration,
    reason: TimeoutReason,
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, timeout: Option<Duration>, reason: TimeoutReason) -> Self {
        Self {
            inner,
            sleep: timeout.map(tokio::time::sleep),
            after: timeout.unwrap_or_default(),
            reason,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Err(Box::new(Elapsed::because(*this.after, *this.reason))))
            }
            _ => Poll::Pending,
        }
    }
}
