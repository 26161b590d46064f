//! The mesh client: the client-side stack as one `tower::Service`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::model::EndpointAddress;

use crate::balance::Balance;
use crate::body::{self, ResponseBody};
use crate::breaker::CircuitBreaker;
use crate::endpoint::EndpointState;
use crate::error::{BoxError, Error};
use crate::fault::{self, Fault};
use crate::mesh::Mesh;
use crate::ratelimit::RateLimit;
use crate::retry::{Hedge, Retry};
use crate::route::{self, Route, RouteDecision};
pub use crate::route::{InvalidTarget, Target};
use crate::shaping::{self, Shaping};
use crate::timeout::Timeout;

/// The stack below [`Shaping`]: fault injection, the rate limit, the route timeout
/// over everything below it, then retries.
type Leaf = Fault<RateLimit<Timeout<Hedge<Retry<CircuitBreaker<Balance>>>>>>;

type LeafFuture = fault::ResponseFuture<
    RateLimit<Timeout<Hedge<Retry<CircuitBreaker<Balance>>>>>,
    body::BoxBody,
    ResponseBody,
>;

/// A client whose requests are routed, split, bounded and balanced by the
/// mesh config, live.
///
/// The stack, outermost first, is the order Envoy applies the same
/// policies in: [`Route`] (match, draw a cluster) → [`Shaping`]
/// (rewrites, header edits, mirrors, redirects and direct responses) →
/// [`Fault`] (injected delays and aborts) → [`RateLimit`] (the cluster's
/// local rate limit) → [`Timeout`] (the route's timeout, over the whole
/// call) → [`Hedge`] (the route's hedging policy) → [`Retry`] (the
/// route's retry policy, per-try timeouts, the cluster's retry budget) →
/// [`CircuitBreaker`] (the cluster's limits) → [`Balance`] (pick an
/// endpoint, send on its pooled connection). It is `Clone`, cheap to
/// clone, and every clone shares the
/// mesh's per-endpoint state.
///
/// Accepts `http::Request<B>` for any body `B` of `Bytes` and answers
/// `http::Response<ResponseBody>`, so it works with hyper-style code and as
/// the transport of a tonic-generated client:
///
/// ```no_run
/// # async fn f(mesh: mesh_tower::Mesh) -> Result<(), Box<dyn std::error::Error>> {
/// use tower::ServiceExt;
/// let client = mesh.client();
/// let req = http::Request::get("http://reviews:9080/reviews/1")
///     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
/// let res = client.oneshot(req).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeshClient {
    inner: Route<Shaping<Leaf>>,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient").finish_non_exhaustive()
    }
}

/// Where a request would be sent: its route decision and endpoint.
#[derive(Clone)]
pub struct Decision {
    route: RouteDecision,
    endpoint: Arc<EndpointState>,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("route", &self.route)
            .field("endpoint", self.endpoint.address())
            .finish()
    }
}

impl Decision {
    /// The route decision.
    pub fn route(&self) -> &RouteDecision {
        &self.route
    }

    /// The endpoint picked.
    pub fn endpoint(&self) -> &EndpointAddress {
        self.endpoint.address()
    }
}

impl MeshClient {
    pub(crate) fn new(mesh: Mesh, target: Option<Target>) -> Self {
        let leaf = Shaping::with_mirrors(
            Fault::from_route(RateLimit::from_route(Timeout::from_route(Hedge::new(
                Retry::new(CircuitBreaker::from_route(Balance::new())),
            )))),
            mesh.mirrors().clone(),
        );
        let inner = match target {
            Some(t) => Route::with_target(leaf, mesh, t),
            None => Route::new(leaf, mesh),
        };
        Self { inner }
    }

    /// Makes the routing and balancing decision for `req` without sending
    /// it: which route, which cluster, which endpoint. The request's URI is
    /// completed as sending would complete it.
    pub fn decide<B>(&self, req: &mut Request<B>) -> Result<Decision, Error> {
        let mesh = self.inner_mesh();
        let runtime = mesh.runtime().load_full();
        let route = route::decide(&runtime, self.inner_target(), req)?;
        let endpoint = route
            .cluster
            .pick(route.cluster.request_hash(req))
            .cloned()
            .ok_or_else(|| Error::no_endpoints(route.cluster().name.as_str()))?;
        Ok(Decision { route, endpoint })
    }

    fn inner_mesh(&self) -> &Mesh {
        self.inner.mesh()
    }

    fn inner_target(&self) -> Option<&Target> {
        self.inner.target()
    }
}

impl<B> tower::Service<Request<B>> for MeshClient
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        tower::Service::<Request<body::BoxBody>>::poll_ready(&mut self.inner, cx)
            .map_err(Error::from_box)
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        ResponseFuture {
            inner: self.inner.call(req.map(body::boxed)),
            grpc,
        }
    }
}

/// The response future of [`MeshClient`].
#[pin_project::pin_project]
pub struct ResponseFuture {
    #[pin]
    inner: route::ResponseFuture<shaping::ResponseFuture<LeafFuture, ResponseBody>>,
    grpc: bool,
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.inner.poll(cx).map_err(|e| {
            let e = Error::from_box(e);
            if *this.grpc { e.for_grpc() } else { e }
        })
    }
}
