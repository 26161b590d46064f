//! Fault injection: delay or abort a share of a route's requests.
//!
//! Istio's `VirtualService.http[].fault` (Envoy's `envoy.filters.http.fault`)
//! tests how callers cope with a slow or failing dependency without
//! touching it. [`Fault`] reads the route's [`FaultPolicy`] from the
//! [`RouteDecision`] and, for the requests its percentages select:
//!
//! - waits `fixedDelay` before passing the request on (the delay comes
//!   first when both are set, as in Envoy's fault filter);
//! - answers an abort locally: the HTTP status with the body `fault filter
//!   abort`, or for `grpcStatus` a gRPC Trailers-Only response (HTTP 200
//!   with `grpc-status`); an HTTP status aborting a gRPC request is mapped
//!   to its gRPC code, as Envoy's local replies are.
//!
//! The layer sits above the retry and timeout layers, where Istio applies
//! faults (the fault filter runs before the router): an injected abort is
//! an answer, never retried, and an injected delay does not count against
//! the route timeout. Each percentage is drawn independently with
//! [`Fraction::sample`](mesh_core::model::Fraction::sample), one random
//! number per configured fault and no allocation.
//!
//! Standalone, in a plain `ServiceBuilder`, it injects a static policy:
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::model::{FaultDelay, FaultPolicy, Fraction};
//! use mesh_tower::fault::FaultLayer;
//!
//! let policy = FaultPolicy {
//!     delay: Some(FaultDelay { delay: Duration::from_secs(1), fraction: Fraction::ALL }),
//!     abort: None,
//! };
//! let svc = tower::ServiceBuilder::new()
//!     .layer(FaultLayer::new(policy))
//!     .service_fn(|_: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::new()))
//!     });
//! # let _ = svc;
//! ```

mod future;
mod layer;

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::model::FaultPolicy;

pub use future::ResponseFuture;
pub use layer::FaultLayer;

use crate::error::BoxError;
use crate::local_reply;
use crate::route::RouteDecision;

/// Delays or aborts a share of requests; see the module docs.
#[derive(Clone, Debug)]
pub struct Fault<S> {
    inner: S,
    policy: Option<FaultPolicy>,
}

impl<S> Fault<S> {
    /// Injects `policy` into requests without a route decision.
    pub fn new(inner: S, policy: FaultPolicy) -> Self {
        Self {
            inner,
            policy: Some(policy),
        }
    }

    /// Only the route's `fault` applies.
    pub fn from_route(inner: S) -> Self {
        Self {
            inner,
            policy: None,
        }
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

impl<S, B, ResB> tower::Service<Request<B>> for Fault<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let policy = match req.extensions().get::<RouteDecision>() {
            Some(d) => d.forward().and_then(|f| f.fault),
            None => self.policy,
        };
        let Some(policy) = policy else {
            return ResponseFuture::inner(self.inner.call(req));
        };
        let delay = policy
            .delay
            .filter(|d| d.fraction.sample())
            .map(|d| d.delay);
        let abort = policy
            .abort
            .filter(|a| a.fraction.sample())
            .map(|a| (a.status, local_reply::is_grpc(&req)));
        match (delay, abort) {
            (None, None) => ResponseFuture::inner(self.inner.call(req)),
            (None, Some((status, grpc))) => {
                tracing::debug!(?status, "fault: abort injected");
                ResponseFuture::abort(status, grpc)
            }
            (Some(delay), abort) => {
                tracing::debug!(?delay, "fault: delay injected");
                // The readied service goes with the request; a clone takes
                // its place (tower's pattern for calling later).
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::delay(tokio::time::sleep(delay), svc, req, abort)
            }
        }
    }
}

#[cfg(test)]
mod tests;
