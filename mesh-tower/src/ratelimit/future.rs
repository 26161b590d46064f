use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::error::BoxError;

/// The response future of [`RateLimit`](super::RateLimit).
#[pin_project::pin_project(project = Proj)]
pub enum ResponseFuture<F, ResB> {
    /// Admitted: the inner service's future.
    #[doc(hidden)]
    Inner(#[pin] F),
    /// Limited: the local reply.
    #[doc(hidden)]
    Limited(Option<Response<ResB>>),
}

impl<F, ResB> ResponseFuture<F, ResB> {
    pub(crate) fn inner(f: F) -> Self {
        Self::Inner(f)
    }

    pub(crate) fn limited(res: Response<ResB>) -> Self {
        Self::Limited(Some(res))
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner(f) => f.poll(cx).map_err(Into::into),
            Proj::Limited(res) => {
                Poll::Ready(res.take().ok_or_else(|| "polled after completion".into()))
            }
        }
    }
}
