use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mesh_core::ClusterName;

use crate::error::{BoxError, Error};

/// The response future of [`Route`](super::Route).
#[pin_project::pin_project(project = Proj)]
pub enum ResponseFuture<F> {
    /// Routing failed.
    #[doc(hidden)]
    Failed(Option<Error>),
    /// The inner service's future, and the cluster routed to.
    #[doc(hidden)]
    Inner(#[pin] F, Option<ClusterName>),
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(f: F, cluster: Option<ClusterName>) -> Self {
        Self::Inner(f, cluster)
    }

    /// The cluster the request was routed to (none when routing failed or
    /// the route answers locally).
    pub(crate) fn cluster(&self) -> Option<&ClusterName> {
        match self {
            Self::Inner(_, c) => c.as_ref(),
            Self::Failed(_) => None,
        }
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
            Proj::Inner(f, _) => f.poll(cx).map_err(Into::into),
            Proj::Failed(e) => Poll::Ready(Err(match e.take() {
                Some(e) => Box::new(e),
                None => "polled after completion".into(),
            })),
        }
    }
}
