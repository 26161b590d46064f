//! Request and response bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::breaker::Permit;
use crate::endpoint::InFlight;
use crate::error::BoxError;

/// The request body the mesh sends: any body, boxed once at the client's
/// edge so that one connection pool per endpoint serves every caller.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`BoxBody`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The body of a response received through the mesh.
///
/// Counts as one request in flight at its endpoint until the body ends or
/// is dropped, so that `LEAST_REQUEST` sees streams that are still open,
/// as Envoy's active-request count does.
#[pin_project::pin_project]
pub struct ResponseBody {
    #[pin]
    inner: hyper::body::Incoming,
    in_flight: Option<InFlight>,
    // The circuit breaker's place for this request, freed with the body.
    permit: Option<Permit>,
}

impl ResponseBody {
    pub(crate) fn new(inner: hyper::body::Incoming, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
            permit: None,
        }
    }

    pub(crate) fn keep_permit(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.in_flight.take();
            this.permit.take();
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
