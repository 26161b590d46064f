//! Routing: match the request against the live config and record the
//! decision in the request's extensions.
//!
//! [`Route`] loads the current runtime (one atomic load), finds the route
//! the way Envoy does (port → listener → route table, authority → virtual
//! host, first matching route), draws a cluster from the route's weighted
//! split, and inserts a [`RouteDecision`]. Every layer below reads its
//! per-request policy from that decision: the timeout from the route, the
//! endpoints from the cluster. A request no route takes fails with a
//! [`NoRoute`](mesh_core::NoRoute)-style error (404, or `UNAVAILABLE` for
//! gRPC as gRFC A28 specifies).

mod future;
mod layer;
mod target;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use mesh_core::model::{
    Cluster, ForwardAction, Route as RouteConfig, RouteAction, RouteTable, VirtualHost,
};
use mesh_core::{RouteRequest, Snapshot, Version};

pub use future::ResponseFuture;
pub use layer::RouteLayer;
pub use target::{InvalidTarget, Target};

use crate::error::{BoxError, Error};
use crate::mesh::Mesh;
use crate::runtime::{ClusterRuntime, Runtime};

/// Where a request goes, as decided by [`Route`]: the route that matched
/// and the cluster drawn from its split. Inserted into the request's
/// extensions for the layers below.
#[derive(Clone)]
pub struct RouteDecision {
    runtime: Arc<Runtime>,
    table: Arc<RouteTable>,
    virtual_host: u32,
    route: u32,
    pub(crate) cluster: Arc<ClusterRuntime>,
}

impl std::fmt::Debug for RouteDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteDecision")
            .field("route_table", self.table.name())
            .field("virtual_host", &self.virtual_host().name)
            .field("route", &self.route)
            .field("cluster", &self.cluster.config.name)
            .finish()
    }
}

impl RouteDecision {
    /// The route table the route came from.
    pub fn route_table(&self) -> &RouteTable {
        &self.table
    }

    /// The virtual host that served the authority.
    pub fn virtual_host(&self) -> &VirtualHost {
        &self.table.virtual_hosts()[self.virtual_host as usize]
    }

    /// The route that matched.
    pub fn route(&self) -> &RouteConfig {
        &self.virtual_host().routes[self.route as usize]
    }

    /// The index of the route within its virtual host.
    pub fn route_index(&self) -> usize {
        self.route as usize
    }

    /// The cluster drawn from the route's split.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster.config
    }

    /// The route timeout, if the route sets one.
    pub fn timeout(&self) -> Option<Duration> {
        match &self.route().action {
            RouteAction::Forward(f) => f.timeout,
            _ => None,
        }
    }

    /// The route's forwarding action with its policies (fault, rewrite,
    /// headers, mirrors, retries).
    pub fn forward(&self) -> Option<&ForwardAction> {
        match &self.route().action {
            RouteAction::Forward(f) => Some(f),
            _ => None,
        }
    }

    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The route's retry policy, if any.
    pub fn retry_policy(&self) -> Option<&mesh_core::model::RetryPolicy> {
        self.forward().and_then(|f| f.retry.as_ref())
    }

    /// The route's hedging policy, if any.
    pub fn hedge_policy(&self) -> Option<&mesh_core::model::HedgePolicy> {
        self.forward().and_then(|f| f.hedge.as_ref())
    }

    /// The config version the decision was made under.
    pub fn version(&self) -> Version {
        self.runtime.version()
    }

    /// The snapshot the decision was made under.
    pub fn snapshot(&self) -> &Snapshot {
        &self.runtime.snapshot
    }
}

/// A route that answers requests itself (a redirect or a direct
/// response), as decided by [`Route`]. Inserted into the request's
/// extensions instead of a [`RouteDecision`]; the
/// [`Shaping`](crate::shaping::Shaping) layer answers it.
#[derive(Clone)]
pub struct LocalRoute {
    runtime: Arc<Runtime>,
    table: Arc<RouteTable>,
    virtual_host: u32,
    route: u32,
}

impl std::fmt::Debug for LocalRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRoute")
            .field("route_table", self.table.name())
            .field("route", &self.route)
            .finish()
    }
}

impl LocalRoute {
    /// The route that matched.
    pub fn route(&self) -> &RouteConfig {
        &self.table.virtual_hosts()[self.virtual_host as usize].routes[self.route as usize]
    }

    /// The config version the decision was made under.
    pub fn version(&self) -> Version {
        self.runtime.version()
    }
}

/// What [`Route`] decided: forward to a cluster, or answer locally.
pub(crate) enum Decided {
    Forward(RouteDecision),
    Local(LocalRoute),
}

/// Routes each request by the live config; see the module docs.
#[derive(Clone)]
pub struct Route<S> {
    inner: S,
    mesh: Mesh,
    target: Option<Arc<Target>>,
}

impl<S> Route<S> {
    /// Routes requests by their own authority.
    pub fn new(inner: S, mesh: Mesh) -> Self {
        Self {
            inner,
            mesh,
            target: None,
        }
    }

    /// Routes every request as if addressed to `target`, and sets its URI's
    /// scheme and authority accordingly.
    pub fn with_target(inner: S, mesh: Mesh, target: Target) -> Self {
        Self {
            inner,
            mesh,
            target: Some(Arc::new(target)),
        }
    }

    pub(crate) fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    pub(crate) fn target(&self) -> Option<&Target> {
        self.target.as_deref()
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

/// Decides where `req` goes under `runtime`, without sending it; a route
/// that answers locally is an error here.
pub(crate) fn decide<B>(
    runtime: &Arc<Runtime>,
    target: Option<&Target>,
    req: &mut Request<B>,
) -> Result<RouteDecision, Error> {
    match decide_any(runtime, target, req)? {
        Decided::Forward(d) => Ok(d),
        Decided::Local(_) => Err(Error::no_route(
            "the route answers locally (redirect or direct response)",
        )),
    }
}

/// Decides where `req` goes under `runtime`, or that its route answers it.
pub(crate) fn decide_any<B>(
    runtime: &Arc<Runtime>,
    target: Option<&Target>,
    req: &mut Request<B>,
) -> Result<Decided, Error> {
    let hit = {
        let rr = match target {
            Some(t) => {
                t.apply(req)?;
                let (authority, port) = t.authority_and_port();
                RouteRequest {
                    method: req.method(),
                    authority,
                    port,
                    path: req.uri().path(),
                    headers: req.headers(),
                }
            }
            None => {
                target::ensure_absolute(req)?;
                RouteRequest::from_parts(req.method(), req.uri(), req.headers())
                    .ok_or_else(|| Error::invalid_request("the request names no authority"))?
            }
        };
        let snap = &runtime.snapshot;
        let hit = match target.and_then(Target::listener) {
            Some(listener) => snap.route_via(listener, &rr),
            None => snap.route(&rr),
        };
        hit.map_err(Error::no_route)?
    };
    let fwd = match &hit.route().action {
        RouteAction::Forward(fwd) => fwd,
        RouteAction::Redirect(_) | RouteAction::DirectResponse(_) => {
            return Ok(Decided::Local(LocalRoute {
                runtime: Arc::clone(runtime),
                table: Arc::clone(hit.table),
                virtual_host: hit.virtual_host_index as u32,
                route: hit.route_index as u32,
            }));
        }
        _ => return Err(Error::no_route("the route's action is not supported")),
    };
    let target = &fwd.clusters.targets()[fwd.clusters.pick()];
    let cluster = runtime.clusters.get(&target.cluster).ok_or_else(|| {
        Error::no_route(format_args!(
            "cluster {:?} has no runtime",
            target.cluster.as_str()
        ))
    })?;
    Ok(Decided::Forward(RouteDecision {
        runtime: Arc::clone(runtime),
        table: Arc::clone(hit.table),
        virtual_host: hit.virtual_host_index as u32,
        route: hit.route_index as u32,
        cluster: Arc::clone(cluster),
    }))
}

impl<S, B> tower::Service<Request<B>> for Route<S>
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
        let runtime = self.mesh.runtime().load_full();
        match decide_any(&runtime, self.target.as_deref(), &mut req) {
            Ok(Decided::Forward(decision)) => {
                let metrics = Arc::clone(decision.cluster.istio());
                req.extensions_mut().insert(decision);
                ResponseFuture::inner(self.inner.call(req), metrics)
            }
            Ok(Decided::Local(local)) => {
                req.extensions_mut().insert(local);
                let metrics = Arc::clone(self.mesh.metrics().unrouted());
                ResponseFuture::inner(self.inner.call(req), metrics)
            }
            Err(e) => {
                tracing::debug!(error = %e, "request not routed");
                ResponseFuture::error(e, Arc::clone(self.mesh.metrics().unrouted()))
            }
        }
    }
}
