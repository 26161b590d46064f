use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use crate::metrics::SeriesTable;

use crate::error::{BoxError, Error};

/// The response future of [`Route`](super::Route).
#[pin_project::pin_project(project = Proj)]
pub enum ResponseFuture<F> {
    /// Routing failed.
    #[doc(hidden)]
    Failed(Option<Error>, Arc<SeriesTable>),
    /// The inner service's future, and the metrics of the cluster routed
    /// to (of the requests not routed, for a local route).
    #[doc(hidden)]
    Inner(#[pin] F, Arc<SeriesTable>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(f: F, metrics: Arc<SeriesTable>) -> Self {
        Self::Inner(f, metrics)
    }

    /// The standard metrics of the cluster the request was routed to (of
    /// the requests not routed, when routing failed or the route answers
    /// locally).
    pub(crate) fn metrics(&self) -> &SeriesTable {
        match self {
            Self::Inner(_, m) | Self::Failed(_, m) => m,
        }
    }

    pub(crate) fn error(e: Error, metrics: Arc<SeriesTable>) -> Self {
        Self::Failed(Some(e), metrics)
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
            Proj::Inner(f, _) => f.poll(cx).map_err(Into::into),
            Proj::Failed(e, _) => Poll::Ready(Err(match e.take() {
                Some(e) => Box::new(e),
                None => "polled after completion".into(),
            })),
        }
    }
}
