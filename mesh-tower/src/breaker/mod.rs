//! Circuit breaking: per-cluster limits on requests, pending requests and
//! connections (Istio `DestinationRule.trafficPolicy.connectionPool`,
//! Envoy cluster `circuit_breakers`).
//!
//! Why a counter and not a queue: Envoy's circuit breakers are not rate
//! limiters. When a cluster already has `http2MaxRequests` requests in
//! flight, the next one fails at once with 503 (`UO`, upstream overflow)
//! instead of waiting, so an overloaded backend sheds load immediately and
//! the caller can try elsewhere or give up. The only wait Envoy allows is
//! for an HTTP/1.1 connection (one request per connection at a time):
//! while `tcp.maxConnections` connections are busy, up to
//! `http1MaxPendingRequests` requests wait, and the next one overflows.
//!
//! [`CircuitBreaker`] sits between Retry and Balance, so each attempt is
//! admitted on its own and an overflow is never retried (the retry layer
//! checks [`Error::is_circuit_open`](crate::Error::is_circuit_open)). In
//! the mesh client its [`BreakerState`] is the cluster's, from the
//! [`RouteDecision`]: one per cluster name in the process, shared by all
//! clients and kept across config pushes that keep the cluster (a push
//! that changes the limits starts new counters; requests admitted under
//! the old ones finish under them). Used alone, it enforces one state:
//!
//! ```
//! use mesh_core::model::{ConnectionLimits, Protocol};
//! use mesh_tower::breaker::{BreakerState, CircuitBreakerLayer};
//!
//! let limits = ConnectionLimits { max_requests: 100, ..ConnectionLimits::default() };
//! let state = BreakerState::new("backend", limits, Protocol::Http2);
//! let svc = tower::ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(state))
//!     .service_fn(|req: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! # let _ = svc;
//! ```
//!
//! A request holds its place until its response body ends (the
//! [`crate::ResponseBody`] carries the [`Permit`]), as
//! Envoy counts a stream until it completes. Admission costs two relaxed
//! atomic operations and allocates nothing; only a request that must wait
//! for an HTTP/1.1 connection allocates its wait.

mod future;
mod layer;
mod state;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};

pub use future::ResponseFuture;
pub use layer::CircuitBreakerLayer;
pub use state::{BreakerState, BreakerStats, Permit};

use crate::body::ResponseBody;
use crate::error::{BoxError, Error};
use crate::route::RouteDecision;
use state::{Admitted, Overflow};

/// Fails requests fast when their cluster's limits are reached; see the
/// module docs.
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    state: Option<Arc<BreakerState>>,
}

impl<S> CircuitBreaker<S> {
    /// Enforces `state` for every request.
    pub fn new(inner: S, state: Arc<BreakerState>) -> Self {
        Self {
            inner,
            state: Some(state),
        }
    }

    /// Enforces the limits of each request's routed cluster.
    pub fn from_route(inner: S) -> Self {
        Self { inner, state: None }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// A response that can keep a request's [`Permit`] until it is fully
/// received.
pub trait KeepPermit {
    /// Holds `permit` until the response ends; the default drops it now
    /// (the request counts until its response headers arrived).
    fn keep_permit(&mut self, permit: Permit) {
        drop(permit);
    }
}

impl KeepPermit for Response<ResponseBody> {
    fn keep_permit(&mut self, permit: Permit) {
        self.body_mut().keep_permit(permit);
    }
}

impl KeepPermit for Response<()> {}
impl KeepPermit for Response<String> {}
impl KeepPermit for Response<http_body_util::Empty<Bytes>> {}
impl KeepPermit for Response<http_body_util::Full<Bytes>> {}

fn overflow_error(state: &BreakerState, o: Overflow) -> Error {
    match o {
        Overflow::Requests(max) => Error::circuit_open(
            state.cluster(),
            format_args!("{max} requests in flight (http2MaxRequests)"),
        ),
        Overflow::Pending(max) => Error::circuit_open(
            state.cluster(),
            format_args!("{max} requests waiting for a connection (http1MaxPendingRequests)"),
        ),
    }
}

impl<S, B> tower::Service<Request<B>> for CircuitBreaker<S>
where
    S: tower::Service<Request<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: KeepPermit,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Overflow fails the request rather than holding back readiness:
        // the limits are per cluster and the cluster is known per request.
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = match &self.state {
            Some(s) => s,
            None => match req.extensions().get::<RouteDecision>() {
                Some(d) => d.cluster.breaker(),
                None => {
                    return ResponseFuture::failed(Error::invalid_request(
                        "no route decision: CircuitBreaker without a state must run below Route",
                    ));
                }
            },
        };
        match state.admit() {
            Err(o) => {
                tracing::debug!(cluster = state.cluster(), overflow = ?o, "circuit open");
                ResponseFuture::failed(overflow_error(state, o))
            }
            Ok(Admitted::Now(permit)) => ResponseFuture::sending(self.inner.call(req), permit),
            Ok(Admitted::Wait(permit, pending)) => {
                // Keep the service that was made ready for this request.
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                let Some(sem) = state.connections() else {
                    return ResponseFuture::sending(svc_call(svc, req), permit);
                };
                ResponseFuture::waiting(Arc::clone(sem), svc, req, permit, pending)
            }
        }
    }
}

fn svc_call<S: tower::Service<R>, R>(mut svc: S, req: R) -> S::Future {
    svc.call(req)
}
