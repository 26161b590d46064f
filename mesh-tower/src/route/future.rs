use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::{BoxError, Error};

/// The response future of [`Route`](super::Route).
#[pin_project::pin_project(project = Proj)]
pub enum ResponseFuture<F> {
    /// Routing failed.
    #[doc(hidden)]
    Failed(Option<Error>),
    /// The inner service's future.
    #[doc(hidden)]
    Inner(#[pin] F),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(f: F) -> Self {
        Self::Inner(f)
    }

    pub(crate) fn error(e: Error) -> Self {
        Self::Failed(Some(e))
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner(f) => f.poll(cx).map_err(Into::into),
            Proj::Failed(e) => Poll::Ready(Err(match e.take() {
                Some(e) => Box::new(e),
                None => "polled after completion".into(),
            })),
        }
    }
}
