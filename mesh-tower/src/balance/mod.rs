//! Load balancing: send each request to one endpoint of the cluster its
//! route chose.
//!
//! [`Balance`] is the leaf of the client stack. It reads the cluster from
//! the [`RouteDecision`], picks an endpoint with
//! the cluster's policy (weighted round robin, weighted random, or power of
//! two choices on requests in flight, from `mesh_core::lb`), and sends the
//! request on that endpoint's pooled connection. The pick and the send
//! happen in one `call`, so a request can never be sent to an endpoint
//! other than the one picked (tower#856).
//!
//! Ejected endpoints (outlier detection, `mesh_core::outlier`) are
//! skipped unless the cluster is in panic; the response future records
//! each attempt's outcome (the status, or a connect error or reset as a
//! local-origin failure) at the endpoint it went to.

mod future;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use mesh_core::lb::hash::hash64;
use mesh_core::model::HashKey;

pub use future::ResponseFuture;

use crate::body::{BoxBody, ResponseBody};
use crate::endpoint::{EndpointState, InFlight};
use crate::error::{BoxError, Error};
use crate::retry::TriedEndpoints;
use crate::route::RouteDecision;
use crate::runtime::ClusterRuntime;

/// How many times a retry re-picks to avoid endpoints already tried: the
/// `host_selection_retry_max_attempts` Istio sets with
/// `retryIgnorePreviousHosts` (Envoy's default is 1).
const HOST_SELECTION_RETRY_MAX_ATTEMPTS: usize = 5;

/// Picks an endpoint not in `tried` with the cluster's policy, re-picking up
/// to [`HOST_SELECTION_RETRY_MAX_ATTEMPTS`] times (Envoy's
/// `previous_hosts` retry predicate). Where Envoy would then settle for a
/// tried endpoint, the first untried candidate is taken: a retry reaching
/// a host it already failed at when another exists helps no one, and it
/// makes the avoidance deterministic. Only when every candidate was tried
/// does a tried one get the retry.
fn pick_avoiding<'a>(
    cluster: &'a ClusterRuntime,
    tried: &TriedEndpoints,
    hash: Option<u64>,
) -> Option<&'a Arc<EndpointState>> {
    let mut pick = cluster.pick(hash)?;
    for _ in 1..HOST_SELECTION_RETRY_MAX_ATTEMPTS {
        if !tried.contains(pick.address()) {
            return Some(pick);
        }
        pick = cluster.pick(hash)?;
    }
    if !tried.contains(pick.address()) {
        return Some(pick);
    }
    // The first untried candidate, best locality group first.
    cluster.pick_avoiding(hash, |e| tried.contains(e.address()))
}

/// Sends each request to an endpoint of its routed cluster.
#[derive(Clone, Copy, Debug, Default)]
pub struct Balance {
    _priv: (),
}

impl Balance {
    /// The balancer. It keeps no state of its own: endpoint state lives in
    /// the mesh runtime the route decision points into.
    pub fn new() -> Self {
        Self::default()
    }
}

impl tower::Service<Request<BoxBody>> for Balance {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per endpoint and the endpoint is known only per
        // request; limits are the circuit breaker's, above.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> ResponseFuture {
        let Some(decision) = req.extensions().get::<RouteDecision>() else {
            return ResponseFuture::failed(Error::invalid_request(
                "no route decision: Balance must run below Route",
            ));
        };
        let cluster = Arc::clone(&decision.cluster);
        let (hash, set_cookie) = match cluster.hash_key() {
            None => (None, None),
            Some(key) => match cluster.request_hash(&req) {
                Some(h) => (Some(h), None),
                None => new_cookie(key, &mut req),
            },
        };
        let picked = match req.extensions().get::<TriedEndpoints>() {
            Some(tried) => pick_avoiding(&cluster, tried, hash),
            None => cluster.pick(hash),
        };
        let Some(endpoint) = picked else {
            return ResponseFuture::failed(Error::no_endpoints(cluster.config.name.as_str()));
        };
        // Each attempt is a span of its own, a child of the logical call;
        // recorded when the call is (sampled, with an exporter).
        let span = crate::trace::attempt(req.headers_mut()).and_then(|s| {
            let route = req
                .extensions()
                .get::<RouteDecision>()
                .and_then(|d| d.route().name.clone());
            crate::trace::span::attempt(
                &s,
                &req,
                route.as_deref(),
                cluster.config.name.as_str(),
                endpoint,
            )
        });
        let in_flight = InFlight::start(Arc::clone(endpoint));
        // Outcomes are recorded where the response (or the connect error
        // or reset) is seen, for outlier detection and peak EWMA.
        let observe = cluster
            .observes()
            .then(|| (Arc::clone(&cluster), tokio::time::Instant::now()));
        let fut = in_flight.endpoint().send(req);
        ResponseFuture::sending(fut, in_flight, observe, set_cookie).with_span(span)
    }
}

/// For a cookie hash key and a request without the cookie: a new cookie
/// value, its hash, and the `Set-Cookie` header for the response (Istio
/// `httpCookie`: "if the cookie is not present, it will be generated").
/// The request also carries the cookie, so it is hashed as later requests
/// with the cookie will be.
fn new_cookie(key: &HashKey, req: &mut Request<BoxBody>) -> (Option<u64>, Option<HeaderValue>) {
    let HashKey::Cookie { name, path, ttl } = key else {
        return (None, None);
    };
    let value = format!("{:016x}", fastrand::u64(..));
    let mut set = format!("{name}={value}");
    if let Some(p) = path {
        set.push_str("; Path=");
        set.push_str(p);
    }
    if let Some(ttl) = ttl {
        set.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    set.push_str("; HttpOnly");
    if let Ok(v) = HeaderValue::from_str(&format!("{name}={value}")) {
        req.headers_mut().append(http::header::COOKIE, v);
    }
    (
        Some(hash64(value.as_bytes())),
        HeaderValue::from_str(&set).ok(),
    )
}
