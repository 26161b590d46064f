//! Traffic shaping: what a VirtualService route does to a request besides
//! choosing its cluster.
//!
//! [`Shaping`] sits right below [`Route`](crate::route::Route) and applies,
//! from the route in the request's [`RouteDecision`]:
//!
//! - `headers.request` edits (remove, then set, then add) and
//!   `headers.response` edits on the way back;
//! - `rewrite.uri`: the matched prefix is replaced (for an exact or regex
//!   match, the whole path; Envoy's `prefix_rewrite`), the query is kept;
//! - `rewrite.authority`: the URI's authority and any `Host` header;
//! - `mirror` / `mirrors`: a copy of the (edited) request for the share
//!   the percentage selects, sent fire-and-forget through the mesh's
//!   bounded mirror worker (see [`Mirrors`]);
//!
//! and answers, without any backend, a request whose route is a
//! `redirect` (`Location` built from the request, status 301 by default)
//! or a `directResponse` (status and body), which
//! [`Route`](crate::route::Route) marks with a
//! [`crate::route::LocalRoute`].
//!
//! A route with none of these costs one branch: nothing is cloned or
//! allocated.

mod future;
mod layer;
mod local;
mod mirror;

use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use mesh_core::RouteRequest;
use std::sync::Arc;

use mesh_core::model::{
    ForwardAction, HeaderMutations, PathMatch, Rewrite, Route as RouteConfig, RouteAction,
};

use future::Edits;
pub use future::ResponseFuture;
pub use layer::ShapingLayer;
pub use mirror::{
    DEFAULT_MIRROR_TIMEOUT, MAX_IN_FLIGHT, MirrorStats, Mirrors, QUEUE_CAPACITY, shadow_authority,
};

use crate::error::BoxError;
use crate::route::{LocalRoute, RouteDecision};

/// A static shaping policy, for [`Shaping`] used without the mesh's
/// routing (requests without a route decision).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticShaping {
    /// Rewrites (`path_prefix` replaces the leading `/`, as for a route
    /// without a path condition).
    pub rewrite: Option<Rewrite>,
    /// Request header edits.
    pub request_headers: HeaderMutations,
    /// Response header edits.
    pub response_headers: HeaderMutations,
}

/// Rewrites, header edits, mirrors and local answers; see the module docs.
#[derive(Clone, Debug)]
pub struct Shaping<S> {
    inner: S,
    mirrors: Mirrors,
    // The static policy as a route without matches.
    fixed: Option<Arc<RouteConfig>>,
}

impl<S> Shaping<S> {
    /// Shaping whose mirrored copies are dropped and counted.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            mirrors: Mirrors::default(),
            fixed: None,
        }
    }

    /// Shaping that sends mirrored copies through `mirrors`.
    pub fn with_mirrors(inner: S, mirrors: Mirrors) -> Self {
        Self {
            inner,
            mirrors,
            fixed: None,
        }
    }

    /// Shaping that applies `policy` to requests without a route
    /// decision.
    pub fn with_static(inner: S, policy: StaticShaping) -> Self {
        let action = ForwardAction {
            rewrite: policy.rewrite,
            request_headers: policy.request_headers,
            response_headers: policy.response_headers,
            ..ForwardAction::to("static")
        };
        Self {
            inner,
            mirrors: Mirrors::default(),
            fixed: Some(Arc::new(RouteConfig {
                name: None,
                matches: Arc::from([]),
                action: RouteAction::Forward(Box::new(action)),
            })),
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

fn has_request_work(f: &ForwardAction) -> bool {
    f.rewrite.is_some()
        || !f.request_headers.is_empty()
        || !f.mirrors.is_empty()
        || !f.target_headers.is_empty()
}

/// The header edits of the split target `cluster` (Istio
/// `route[].headers`), if the route has any.
pub(crate) fn target_edits<'a>(
    f: &'a ForwardAction,
    cluster: &mesh_core::ClusterName,
) -> Option<&'a (HeaderMutations, HeaderMutations)> {
    if f.target_headers.is_empty() {
        return None;
    }
    let i = f
        .clusters
        .targets()
        .iter()
        .position(|t| &t.cluster == cluster)?;
    f.target_headers.get(i)
}

/// The path after `rewrite.uri`: the matched prefix of the clause that
/// took the request is replaced; for an exact or regex match (or a route
/// without a path condition, whose prefix is "/" in Envoy) the whole
/// matched part.
fn rewritten_path<B>(route: &RouteConfig, req: &Request<B>, to: &str) -> Option<PathAndQuery> {
    let path = req.uri().path();
    let rr = RouteRequest::from_parts(req.method(), req.uri(), req.headers())?;
    let clause = route.matches.iter().find(|m| m.matches(&rr));
    let rest = match clause.map(|c| &c.path) {
        Some(PathMatch::Prefix(p)) => &path[p.len().min(path.len())..],
        Some(PathMatch::Exact(_)) | Some(PathMatch::Regex(_)) => "",
        // No path condition: Envoy's implicit prefix "/".
        _ => path.strip_prefix('/').unwrap_or(path),
    };
    let mut s = String::with_capacity(to.len() + rest.len() + 16);
    s.push_str(to);
    s.push_str(rest);
    if s.is_empty() {
        s.push('/');
    }
    if let Some(q) = req.uri().query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s).ok()
}

/// Applies the request edits: the picked target's (`target`), then the
/// route's, as Envoy applies weighted-cluster edits before route edits;
/// then the rewrites.
fn apply_request_edits<B>(
    f: &ForwardAction,
    target: Option<&(HeaderMutations, HeaderMutations)>,
    route: &RouteConfig,
    req: &mut Request<B>,
) {
    if let Some((m, _)) = target {
        future::mutate(req.headers_mut(), m);
    }
    future::mutate(req.headers_mut(), &f.request_headers);
    let Some(rewrite) = &f.rewrite else { return };
    let mut parts = None;
    if let Some(to) = &rewrite.path_prefix
        && let Some(pq) = rewritten_path(route, req, to)
    {
        parts
            .get_or_insert_with(|| req.uri().clone().into_parts())
            .path_and_query = Some(pq);
    }
    if let Some(authority) = &rewrite.authority
        && let Ok(a) = http::uri::Authority::try_from(&**authority)
    {
        if let Ok(v) = http::HeaderValue::try_from(&**authority)
            && req.headers().contains_key(http::header::HOST)
        {
            req.headers_mut().insert(http::header::HOST, v);
        }
        parts
            .get_or_insert_with(|| req.uri().clone().into_parts())
            .authority = Some(a);
    }
    if let Some(parts) = parts
        && let Ok(uri) = Uri::from_parts(parts)
    {
        *req.uri_mut() = uri;
    }
}

impl<S, B, ResB> tower::Service<Request<B>> for Shaping<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    ResB: From<Bytes>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(local) = req.extensions().get::<LocalRoute>() {
            let res = match &local.route().action {
                RouteAction::Redirect(r) => local::redirect(r, &req),
                RouteAction::DirectResponse(d) => local::direct(d),
                _ => crate::local_reply::http(http::StatusCode::NOT_FOUND, ""),
            };
            return ResponseFuture::local(res);
        }
        let Some(decision) = req.extensions().get::<RouteDecision>() else {
            let Some(route) = &self.fixed else {
                return ResponseFuture::inner(self.inner.call(req), None);
            };
            let RouteAction::Forward(fwd) = &route.action else {
                return ResponseFuture::inner(self.inner.call(req), None);
            };
            apply_request_edits(fwd, None, route, &mut req);
            let keep = (!fwd.response_headers.is_empty()).then(|| Edits::Static(Arc::clone(route)));
            return ResponseFuture::inner(self.inner.call(req), keep);
        };
        let Some(fwd) = decision.forward() else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let edits_response = !fwd.response_headers.is_empty()
            || fwd.target_headers.iter().any(|(_, r)| !r.is_empty());
        if !has_request_work(fwd) {
            let keep = edits_response.then(|| Edits::Route(decision.clone()));
            return ResponseFuture::inner(self.inner.call(req), keep);
        }
        let decision = decision.clone();
        let Some(fwd) = decision.forward() else {
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let target = target_edits(fwd, &decision.cluster().name);
        apply_request_edits(fwd, target, decision.route(), &mut req);
        for m in fwd.mirrors.iter() {
            if !m.fraction.sample() {
                continue;
            }
            let empty = req.body().is_end_stream() || req.body().size_hint().exact() == Some(0);
            if !empty {
                self.mirrors.skip();
                continue;
            }
            match decision.runtime().clusters.get(&m.cluster) {
                Some(cluster) => self.mirrors.send(
                    Arc::clone(cluster),
                    &req,
                    fwd.timeout.unwrap_or(DEFAULT_MIRROR_TIMEOUT),
                ),
                None => self.mirrors.skip(),
            }
        }
        let keep = edits_response.then_some(Edits::Route(decision));
        ResponseFuture::inner(self.inner.call(req), keep)
    }
}

#[cfg(test)]
mod tests;
