//! Local rate limiting, client side per cluster and server side per
//! listener.
//!
//! Both sides use `mesh_core`'s lock-free
//! [`TokenBucketState`] with the semantics of Envoy's local rate limit
//! filter (`envoy.filters.http.local_ratelimit`): one token per request,
//! and a request that finds the bucket empty is answered locally, never
//! sent:
//!
//! - HTTP: `429 Too Many Requests` with the body `local_rate_limited`
//!   (Envoy's);
//! - gRPC: a Trailers-Only `RESOURCE_EXHAUSTED` (Envoy answers that with
//!   `rate_limited_as_resource_exhausted: true`; its default,
//!   `UNAVAILABLE`, would invite retries, so the mesh always answers
//!   `RESOURCE_EXHAUSTED`);
//! - both with the `x-ratelimit-limit` (the bucket size),
//!   `x-ratelimit-remaining` and `x-ratelimit-reset` (seconds until the
//!   next fill) headers of Envoy's `enable_x_ratelimit_headers:
//!   DRAFT_VERSION_03` (IETF draft-polli-ratelimit-headers-03). They go
//!   on limited responses only: formatting them on every response would
//!   cost an allocation per request.
//!
//! [`RateLimit`] is the client side: it reads the cluster in the
//! [`RouteDecision`] and takes a token from that cluster's bucket, which
//! the mesh runtime keeps by cluster name for as long as the cluster's
//! `rate_limit` config is unchanged (a push that changes only other
//! fields does not refill it). [`ServerRateLimit`] is the server side,
//! made by [`Mesh::server_rate_limit`](crate::Mesh::server_rate_limit) for
//! a [`Workload`] (its port and labels): each request takes a token from
//! the bucket of the first server listener (by name) whose port is the
//! workload's (or 0, every port) and whose workload selector the
//! workload's labels satisfy, read live from the runtime.
//!
//! Standalone, both take a static bucket: `RateLimitLayer::new(bucket)`.

mod future;
mod server;

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use mesh_core::Snapshot;
use mesh_core::model::{Labels, ListenerKind, TokenBucket};
use mesh_core::ratelimit::{Admission, TokenBucketState};

pub use future::ResponseFuture;
pub use server::{ServerRateLimit, ServerRateLimitLayer, ServerResponseFuture, Workload};

use crate::error::BoxError;
use crate::local_reply;
use crate::route::RouteDecision;

/// The body of a rate-limited HTTP response (Envoy's).
const LIMITED_BODY: &str = "local_rate_limited";

/// gRPC `RESOURCE_EXHAUSTED`.
const RESOURCE_EXHAUSTED: i32 = 8;

/// Envoy's draft-03 header names (`enable_x_ratelimit_headers`).
pub const X_RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
/// Tokens left.
pub const X_RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");
/// Seconds until the next fill.
pub const X_RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset");

/// The local reply for a limited request.
pub(crate) fn limited<ResB>(
    body: ResB,
    bucket: &TokenBucket,
    admission: &Admission,
    grpc: bool,
) -> Response<ResB> {
    let mut res = Response::new(body);
    res.extensions_mut()
        .insert(crate::metrics::ResponseFlag::RateLimited);
    if grpc {
        local_reply::grpc_headers(&mut res, RESOURCE_EXHAUSTED, LIMITED_BODY);
    } else {
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    }
    let h = res.headers_mut();
    h.insert(X_RATELIMIT_LIMIT, HeaderValue::from(bucket.max_tokens));
    h.insert(
        X_RATELIMIT_REMAINING,
        HeaderValue::from(admission.remaining),
    );
    // Whole seconds, rounded up: the draft's delta-seconds.
    let reset = admission.reset.as_secs() + u64::from(admission.reset.subsec_nanos() > 0);
    h.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
    res
}

/// The bucket for `config`, reusing `previous` when its config is the
/// same, so that a config push does not refill it.
pub(crate) fn carry(
    config: Option<TokenBucket>,
    previous: Option<&Arc<TokenBucketState>>,
) -> Option<Arc<TokenBucketState>> {
    let config = config?;
    Some(match previous {
        Some(p) if *p.config() == config => Arc::clone(p),
        _ => Arc::new(TokenBucketState::new(config)),
    })
}

/// One server listener's rate limit, as the runtime holds it.
#[derive(Debug)]
pub(crate) struct ServerLimit {
    name: mesh_core::ListenerName,
    port: u16,
    selector: Labels,
    bucket: Arc<TokenBucketState>,
}

impl ServerLimit {
    fn applies_to(&self, w: &Workload) -> bool {
        (self.port == 0 || self.port == w.port) && w.labels.matches(&self.selector)
    }
}

/// The server limits of `snapshot`, in listener-name order, keeping the
/// buckets of listeners whose name and bucket config are unchanged.
pub(crate) fn server_limits(snapshot: &Snapshot, previous: &[ServerLimit]) -> Arc<[ServerLimit]> {
    let mut out: Vec<ServerLimit> = snapshot
        .listeners()
        .filter_map(|l| match &l.kind {
            ListenerKind::Server(policy) => {
                let old = previous
                    .iter()
                    .find(|p| p.name == l.name)
                    .map(|p| &p.bucket);
                Some(ServerLimit {
                    name: l.name.clone(),
                    port: l.port,
                    selector: policy.workload_selector.clone(),
                    bucket: carry(policy.rate_limit, old)?,
                })
            }
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.into()
}

/// Limits requests by their cluster's token bucket; see the module docs.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    bucket: Option<Arc<TokenBucketState>>,
}

impl<S> RateLimit<S> {
    /// Limits requests without a route decision by `bucket`.
    pub fn new(inner: S, bucket: Arc<TokenBucketState>) -> Self {
        Self {
            inner,
            bucket: Some(bucket),
        }
    }

    /// Only the routed cluster's `rate_limit` applies.
    pub fn from_route(inner: S) -> Self {
        Self {
            inner,
            bucket: None,
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

/// Applies [`RateLimit`] to a service.
#[derive(Clone, Debug, Default)]
pub struct RateLimitLayer {
    bucket: Option<Arc<TokenBucketState>>,
}

impl RateLimitLayer {
    /// One bucket for every request without a route decision.
    pub fn new(bucket: Arc<TokenBucketState>) -> Self {
        Self {
            bucket: Some(bucket),
        }
    }

    /// Only the routed cluster's `rate_limit` applies.
    pub fn from_route() -> Self {
        Self::default()
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
        }
    }
}

impl<S, B, ResB> tower::Service<Request<B>> for RateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let bucket = match req.extensions().get::<RouteDecision>() {
            Some(d) => d.cluster.rate_limiter.as_deref(),
            None => self.bucket.as_deref(),
        };
        if let Some(bucket) = bucket {
            let admission = bucket.try_acquire();
            if !admission.allowed {
                let grpc = local_reply::is_grpc(&req);
                let body = if grpc {
                    Bytes::new()
                } else {
                    Bytes::from_static(LIMITED_BODY.as_bytes())
                };
                tracing::debug!("request rate limited");
                return ResponseFuture::limited(limited(
                    ResB::from(body),
                    bucket.config(),
                    &admission,
                    grpc,
                ));
            }
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests;
