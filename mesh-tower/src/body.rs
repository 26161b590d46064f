//! Request and response bodies.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
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
/// Either the body of a response an endpoint sent, or the body of a
/// response the mesh answered itself (a redirect, a direct response, an
/// injected abort, a rate-limited request: Envoy's "local replies").
///
/// A received body counts as one request in flight at its endpoint until
/// the body ends or is dropped, so that `LEAST_REQUEST` sees streams that
/// are still open, as Envoy's active-request count does.
#[pin_project::pin_project]
pub struct ResponseBody {
    #[pin]
    inner: Inner,
    // The circuit breaker's place for this request, freed with the body.
    permit: Option<Permit>,
    // A frame the retry layer read to look for `grpc-status`, put back.
    peeked: Option<Frame<Bytes>>,
    // The endpoint that answered, kept for the retry layer.
    endpoint: Option<mesh_core::model::EndpointAddress>,
}

#[pin_project::pin_project(project = InnerProj)]
enum Inner {
    Remote {
        #[pin]
        body: hyper::body::Incoming,
        in_flight: Option<InFlight>,
    },
    Local {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl ResponseBody {
    pub(crate) fn new(inner: hyper::body::Incoming, in_flight: InFlight) -> Self {
        Self {
            inner: Inner::Remote {
                body: inner,
                in_flight: Some(in_flight),
            },
            permit: None,
            peeked: None,
            endpoint: None,
        }
    }

    pub(crate) fn keep_permit(&mut self, permit: Permit) {
        self.permit = Some(permit);
    }

    /// A local body holding `data` (nothing when empty).
    pub fn local(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            inner: Inner::Local {
                data: (!data.is_empty()).then_some(data),
                trailers: None,
            },
            permit: None,
            peeked: None,
            endpoint: None,
        }
    }

    /// An empty local body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Local {
                data: None,
                trailers: None,
            },
            permit: None,
            peeked: None,
            endpoint: None,
        }
    }

    /// Whether the mesh answered this response itself.
    pub fn is_local(&self) -> bool {
        matches!(self.inner, Inner::Local { .. })
    }
}

impl crate::retry::RetryBody for ResponseBody {
    fn prepend(mut self, frame: Frame<Bytes>) -> Self {
        if self.endpoint.is_none() {
            self.endpoint = self.remote_endpoint().cloned();
        }
        self.peeked = Some(frame);
        self
    }

    fn endpoint(&self) -> Option<&mesh_core::model::EndpointAddress> {
        self.remote_endpoint().or(self.endpoint.as_ref())
    }
}

impl ResponseBody {
    fn remote_endpoint(&self) -> Option<&mesh_core::model::EndpointAddress> {
        match &self.inner {
            Inner::Remote {
                in_flight: Some(g), ..
            } => Some(g.endpoint().address()),
            _ => None,
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for ResponseBody {
    fn from(data: Bytes) -> Self {
        Self::local(data)
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("local", &self.is_local())
            .finish_non_exhaustive()
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
        if let Some(frame) = this.peeked.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.inner.project() {
            InnerProj::Remote { body, in_flight } => {
                let res = body.poll_frame(cx);
                if matches!(res, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    in_flight.take();
                    this.permit.take();
                }
                res
            }
            InnerProj::Local { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.peeked.is_some() {
            return false;
        }
        match &self.inner {
            Inner::Remote { body, .. } => body.is_end_stream(),
            Inner::Local { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = match &self.inner {
            Inner::Remote { body, .. } => body.size_hint(),
            Inner::Local { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        };
        let peeked = self
            .peeked
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        // Upper first: `set_lower` asserts lower <= upper.
        if let Some(u) = hint.upper() {
            hint.set_upper(u + peeked);
        }
        hint.set_lower(hint.lower() + peeked);
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_bodies_yield_their_data_once() {
        let body = ResponseBody::local(Bytes::from_static(b"hello"));
        assert!(body.is_local());
        assert_eq!(body.size_hint().exact(), Some(5));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let empty = ResponseBody::empty();
        assert!(empty.is_end_stream());
    }
}
