//! Route timeouts.
//!
//! [`Timeout`] bounds how long a request may take until its response
//! headers arrive. The bound is the route's `timeout` from the
//! [`RouteDecision`] when the route sets one
//! (Istio `VirtualService.http[].timeout`, Envoy `RouteAction.timeout`),
//! otherwise the layer's own default, otherwise none. Placed outside the
//! retry layer it bounds the whole call including retries, as Envoy
//! places the route timeout (gRFC A44 and reference rule C4.5). The
//! timer is `tokio::time`, so tests run on paused time.
//!
//! Deadlines bound the call too: a gRPC request's own `grpc-timeout`
//! (gRPC over HTTP/2: the caller's deadline) and the deadline inherited
//! from the inbound request being handled (see [`crate::deadline`]).
//! The tightest of these and the route timeout applies, the error names
//! which one it was ([`crate::TimeoutReason`]), and a gRPC
//! request is sent with `grpc-timeout` rewritten to the time that remains,
//! so the server stops when the caller stops waiting.
//!
//! Used alone, in a plain `ServiceBuilder`, it is a static timeout:
//!
//! ```
//! use std::time::Duration;
//! use mesh_tower::timeout::TimeoutLayer;
//!
//! let svc = tower::ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(2)))
//!     .service_fn(|req: http::Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     });
//! # let _ = svc;
//! ```

mod future;
mod layer;

use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;

pub use future::ResponseFuture;
pub use layer::TimeoutLayer;

use crate::deadline;
use crate::error::{BoxError, TimeoutReason};
use crate::route::RouteDecision;

/// Fails requests whose response takes longer than the route's timeout.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    default: Option<Duration>,
}

impl<S> Timeout<S> {
    /// A timeout of `default` for requests whose route sets none.
    pub fn new(inner: S, default: Duration) -> Self {
        Self {
            inner,
            default: Some(default),
        }
    }

    /// Only the route's timeout applies.
    pub fn from_route(inner: S) -> Self {
        Self {
            inner,
            default: None,
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

impl<S, B> tower::Service<Request<B>> for Timeout<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let route = req
            .extensions()
            .get::<RouteDecision>()
            .and_then(RouteDecision::timeout)
            .or(self.default);
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let own = if grpc {
            deadline::grpc_timeout(req.headers())
        } else {
            None
        };
        let inherited =
            deadline::current().map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let caller = match (own, inherited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (timeout, reason) = match (route, caller) {
            (Some(r), Some(c)) if c < r => (Some(c), TimeoutReason::Deadline),
            (Some(r), _) => (Some(r), TimeoutReason::Route),
            (None, Some(c)) => (Some(c), TimeoutReason::Deadline),
            (None, None) => (None, TimeoutReason::Route),
        };
        if grpc && let Some(t) = timeout {
            req.headers_mut()
                .insert(deadline::GRPC_TIMEOUT, deadline::format_grpc_timeout(t));
        }
        ResponseFuture::new(self.inner.call(req), timeout, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Service, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn fails_slow_responses_with_elapsed() {
        let mut svc = Timeout::new(
            tower::service_fn(|_: Request<()>| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Infallible>(())
            }),
            Duration::from_secs(1),
        );
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap_err();
        let elapsed = err.downcast::<crate::Elapsed>().unwrap();
        assert_eq!(elapsed.after(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_fast_responses_and_unbounded_requests() {
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, Infallible>("done")
        });
        let mut svc = Timeout::from_route(slow);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res, "done", "no route timeout and no default: no bound");
    }
}
