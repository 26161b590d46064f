//! Retries: send a failed request again, within limits that keep a failing
//! backend from being buried under its own retries.
//!
//! [`Retry`] sits below the route [`Timeout`](crate::timeout::Timeout)
//! (which bounds the whole call, retries included) and above the balancer,
//! the order Envoy's router applies them in. Per request it reads the
//! route's [`RetryPolicy`] from the [`RouteDecision`] (or, used alone in a
//! `ServiceBuilder`, the layer's own policy) and:
//!
//! - classifies each attempt with Envoy's `retryOn` conditions, the gRPC
//!   ones included, reading `grpc-status` from the response headers
//!   (Trailers-Only) or, when the policy has gRPC conditions, from the
//!   trailers of a response with an empty body: the first body frame is
//!   peeked and handed back in front of the body, so streaming responses
//!   arrive intact (their headers reach the caller with the first message);
//! - bounds each attempt by the route's `perTryTimeout`;
//! - waits Envoy's fully jittered exponential backoff (25 ms base, 250 ms
//!   max by default) or what the server asked for (`retry-after`,
//!   `grpc-retry-pushback-ms`; a negative or invalid pushback stops
//!   retrying, gRFC A6);
//! - prefers an endpoint not tried before (Istio
//!   `retryIgnorePreviousHosts`): the tried endpoints travel to the
//!   balancer in a request extension, and it picks again up to 5 times,
//!   the `host_selection_retry_max_attempts` Istio configures;
//! - takes each retry from the cluster's [budget](RetryState) and its
//!   `http.maxRetries` concurrent-retry limit, both shared by every client
//!   of the process; when either refuses, the call fails with an error for
//!   which [`Error::is_budget_exhausted`](crate::Error::is_budget_exhausted)
//!   holds;
//! - replays the request body when it was complete and small when sent
//!   (64 KiB by default); otherwise the request is sent once, intact;
//! - retries non-idempotent requests only when the server never saw them
//!   (connect failure, refused stream), unless the policy says otherwise.
//!
//! Nothing is retried once response headers were handed to the caller,
//! and errors that are final by nature (no endpoints, an open circuit, a
//! bad request) are never retried.
//!
//! Used alone:
//!
//! ```
//! use mesh_core::model::RetryPolicy;
//! use mesh_tower::retry::RetryLayer;
//! use mesh_tower::body::BoxBody;
//!
//! let svc = tower::ServiceBuilder::new()
//!     .layer(RetryLayer::new().with_policy(RetryPolicy::istio_default()))
//!     .service_fn(|req: http::Request<BoxBody>| async move {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(req.into_body()))
//!     });
//! # let _ = svc;
//! ```

mod budget;
mod future;
mod hedge;

mod layer;
pub(crate) mod policy;
mod replay;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use mesh_core::model::{ConnectionLimits, EndpointAddress, RetryBudget, RetryPolicy};

pub use budget::RetryState;
pub use future::ResponseFuture;
pub use hedge::{Hedge, HedgeFuture, HedgeLayer, Hedging};

pub use layer::RetryLayer;
pub use replay::DEFAULT_MAX_REPLAY_BYTES;

use crate::body::BoxBody;
use crate::error::BoxError;
use crate::route::RouteDecision;

/// A response body the retry layer can look into: it may read the first
/// frame (to find `grpc-status` in trailers) and must then put it back.
pub trait RetryBody: Body<Data = Bytes> + Unpin + Sized {
    /// The body with `frame`, read from it, in front again.
    fn prepend(self, frame: Frame<Bytes>) -> Self;

    /// The endpoint that answered, for previous-host avoidance.
    fn endpoint(&self) -> Option<&EndpointAddress> {
        None
    }
}

impl RetryBody for BoxBody {
    fn prepend(self, frame: Frame<Bytes>) -> Self {
        replay::prepend(frame, self)
    }
}

/// The endpoints a request was already sent to, for the balancer to avoid
/// (inserted into retried requests' extensions).
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(pub(crate) Vec<EndpointAddress>);

impl TriedEndpoints {
    /// Whether `endpoint` was tried.
    pub fn contains(&self, endpoint: &EndpointAddress) -> bool {
        self.0.contains(endpoint)
    }
}

/// Retries requests by their route's policy; see the module docs.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The layer's own settings, for requests without a route decision.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policy: Option<RetryPolicy>,
    pub(crate) budget: RetryBudget,
    pub(crate) max_retries: u32,
    pub(crate) max_replay_bytes: usize,
    pub(crate) state: Arc<RetryState>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            policy: None,
            budget: RetryBudget::default(),
            max_retries: ConnectionLimits::default().max_retries,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            state: Arc::new(RetryState::new()),
        }
    }
}

impl<S> Retry<S> {
    /// Retries by the route's policy only, with the default replay bound.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            shared: Arc::default(),
        }
    }

    pub(crate) fn with_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The retry state of requests without a route decision (the layer's
    /// own budget).
    pub fn state(&self) -> &RetryState {
        &self.shared.state
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

/// Where a request's policy and budget come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// The route decision: the route's policy, the cluster's budget.
    Route(RouteDecision),
    /// The layer's own settings.
    Layer(Arc<Shared>),
}

impl Source {
    pub(crate) fn of(decision: Option<&RouteDecision>, shared: &Arc<Shared>) -> Option<Self> {
        match decision {
            Some(d) if d.retry_policy().is_some() => Some(Self::Route(d.clone())),
            _ if shared.policy.is_some() => Some(Self::Layer(Arc::clone(shared))),
            _ => None,
        }
    }

    pub(crate) fn policy(&self) -> Option<&RetryPolicy> {
        match self {
            Self::Route(d) => d.retry_policy(),
            Self::Layer(s) => s.policy.as_ref(),
        }
    }

    pub(crate) fn budget(&self) -> &RetryBudget {
        match self {
            Self::Route(d) => &d.cluster().retry_budget,
            Self::Layer(s) => &s.budget,
        }
    }

    pub(crate) fn max_retries(&self) -> u32 {
        match self {
            Self::Route(d) => d.cluster().limits.max_retries,
            Self::Layer(s) => s.max_retries,
        }
    }

    pub(crate) fn state(&self) -> &Arc<RetryState> {
        match self {
            Self::Route(d) => d.cluster.retry_state(),
            Self::Layer(s) => &s.state,
        }
    }

    pub(crate) fn cluster_name(&self) -> &str {
        match self {
            Self::Route(d) => d.cluster().name.as_str(),
            Self::Layer(_) => "(retry layer)",
        }
    }

    pub(crate) fn decision(&self) -> Option<&RouteDecision> {
        match self {
            Self::Route(d) => Some(d),
            Self::Layer(_) => None,
        }
    }
}

impl<S, B> tower::Service<Request<BoxBody>> for Retry<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: RetryBody,
    B::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let source = Source::of(req.extensions().get::<RouteDecision>(), &self.shared);
        match source {
            None => ResponseFuture::passthrough(self.inner.call(req)),
            Some(source) => {
                future::start(&mut self.inner, req, source, self.shared.max_replay_bytes)
            }
        }
    }
}
