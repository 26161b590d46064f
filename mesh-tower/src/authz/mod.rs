//! Authorization for servers: Istio's `AuthorizationPolicy` enforced
//! in-process, as Envoy's RBAC filter enforces it in a sidecar.
//!
//! [`AuthorizationLayer`] goes on an axum `Router` or a tonic server,
//! inside the request authentication layer (which puts the
//! [`VerifiedJwt`] into the request extensions) and behind
//! [`serve`](crate::serve::serve) (which puts the [`ConnectionSecurity`]
//! there: the verified peer SPIFFE ID and the addresses). For each request
//! it:
//!
//! 1. reads the policies of its workload: one `ArcSwap` load of the mesh's
//!    runtime, plus one of a cache keyed by the snapshot version that
//!    holds the workload's compiled [`PolicySet`] (rebuilt only when the
//!    version changes, never under a lock); a workload without policies
//!    passes straight through;
//! 2. normalizes the path as [`PathNormalization`] says (default `BASE`)
//!    and answers **400** to a path that cannot be authorized (an escaped
//!    slash, a malformed escape; see [`mesh_core::authz`]);
//! 3. evaluates the policies in Istio's order (DENY, then ALLOW) on the
//!    method, `:authority`/`Host`, normalized path, headers, peer
//!    principal and namespace, peer address, local port and JWT;
//! 4. answers a denial with **403** and the body `RBAC: access denied`,
//!    Envoy's, or for gRPC (`content-type: application/grpc*`) with a
//!    Trailers-Only `grpc-status: 7` (PERMISSION_DENIED) and the same
//!    message; nothing in the answer names the policy (it is logged at
//!    `debug`);
//! 5. forwards an allowed request with the **normalized** path, so the
//!    application serves exactly the path that was authorized (Envoy
//!    forwards its normalized path too; CVE-2019-9901).
//!
//! AUDIT policies put an [`AuditedBy`] extension on the request and log
//! at `info` with the policy's name. Dry-run policies (annotation
//! `istio.io/dry-run: "true"`) and a dry-run layer
//! ([`AuthorizationLayer::with_dry_run`]) evaluate and log the would-be
//! denial at `info` without enforcing it. [`AuthzStats`] counts the
//! outcomes with atomics.
//!
//! A request with more than one `Host` header is answered 400 when
//! policies apply: which one a policy should see is ambiguous (gRFC A41
//! rejects such requests).

mod future;
mod layer;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use mesh_core::authz::{AuthzRequest, PolicySet, Verdict, normalize_path};
use mesh_core::model::VerifiedJwt;
use mesh_core::model::security::PolicyScope;

use crate::local_reply;
use crate::serve::ConnectionSecurity;

pub use future::{AuthzBody, ResponseFuture};
pub use layer::AuthorizationLayer;
use layer::Shared;
pub use mesh_core::authz::PathNormalization;

/// Envoy's RBAC denial body (and gRPC message).
pub const DENIED_BODY: &str = "RBAC: access denied";

/// gRPC `PERMISSION_DENIED`.
const PERMISSION_DENIED: i32 = 7;

/// The request extension an AUDIT policy's match adds: which policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedBy {
    /// The policy's namespace.
    pub namespace: Arc<str>,
    /// The policy's name.
    pub name: Arc<str>,
}

/// Counts of authorization outcomes, shared by every service of one
/// [`AuthorizationLayer`].
#[derive(Debug, Default)]
pub struct AuthzStats {
    allowed: AtomicU64,
    denied: AtomicU64,
    audited: AtomicU64,
    dry_run_denied: AtomicU64,
    rejected: AtomicU64,
}

impl AuthzStats {
    /// Requests allowed (including those a dry-run layer would deny).
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Requests answered 403 / PERMISSION_DENIED.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Requests an AUDIT policy matched.
    pub fn audited(&self) -> u64 {
        self.audited.load(Ordering::Relaxed)
    }

    /// Requests that dry-run policies, or the policies of a dry-run
    /// layer, would have denied.
    pub fn dry_run_denied(&self) -> u64 {
        self.dry_run_denied.load(Ordering::Relaxed)
    }

    /// Requests answered 400 because their path cannot be authorized.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Enforces `AuthorizationPolicy` on a service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Authorization<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Authorization<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The layer's counters.
    pub fn stats(&self) -> &Arc<AuthzStats> {
        &self.shared.stats
    }
}

/// What the request is answered with when it does not reach the service.
enum Local {
    Denied,
    BadRequest,
}

impl<S, B, ResB> tower::Service<Request<B>> for Authorization<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<AuthzBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let set = self.shared.policies();
        if set.is_empty() {
            return ResponseFuture::inner(self.inner.call(req));
        }
        match authorize(&self.shared, &set, &mut req) {
            Ok(()) => ResponseFuture::inner(self.inner.call(req)),
            Err(local) => {
                let grpc = local_reply::is_grpc(&req);
                ResponseFuture::local(local_response(local, grpc))
            }
        }
    }
}

/// Evaluates `req`; on success the request may go on (its path possibly
/// rewritten to the normalized one).
fn authorize<B>(shared: &Shared, set: &PolicySet, req: &mut Request<B>) -> Result<(), Local> {
    let stats = &shared.stats;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        bump(&stats.rejected);
        tracing::debug!("request with several Host headers rejected");
        return Err(Local::BadRequest);
    }
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => host_header.and_then(|h| h.to_str().ok()),
    };
    let path = match normalize_path(req.uri().path(), shared.normalization) {
        Ok(p) => p,
        Err(error) => {
            bump(&stats.rejected);
            tracing::debug!(%error, "request path cannot be authorized");
            return Err(Local::BadRequest);
        }
    };
    let security = req.extensions().get::<ConnectionSecurity>();
    let mut q = AuthzRequest::new(req.method().as_str(), &path, req.headers());
    if let Some(peer) = security.and_then(ConnectionSecurity::peer) {
        q = q.with_principal(peer.as_str());
    }
    q.host = host;
    q.source_ip = security.map(|s| s.remote_addr().ip());
    q.destination_ip = security.map(|s| s.local_addr().ip());
    q.destination_port = security.map(|s| s.local_addr().port());
    q.jwt = req.extensions().get::<VerifiedJwt>();
    let decision = set.evaluate(&q);

    let audited = decision.audit.map(|p| {
        bump(&stats.audited);
        tracing::info!(
            policy.namespace = %p.namespace,
            policy.name = %p.name,
            method = %req.method(),
            path = %path,
            "request audited"
        );
        AuditedBy {
            namespace: Arc::clone(&p.namespace),
            name: Arc::clone(&p.name),
        }
    });
    if let Some(Verdict::Deny { policy }) = decision.dry_run {
        bump(&stats.dry_run_denied);
        tracing::info!(
            policy = %PolicyName(policy),
            method = %req.method(),
            path = %path,
            "dry-run policies would deny the request"
        );
    }
    let allowed = match decision.verdict {
        Verdict::Allow => true,
        Verdict::Deny { policy } if shared.dry_run => {
            bump(&stats.dry_run_denied);
            tracing::info!(
                policy = %PolicyName(policy),
                method = %req.method(),
                path = %path,
                "dry run: the request would be denied"
            );
            true
        }
        Verdict::Deny { policy } => {
            tracing::debug!(
                policy = %PolicyName(policy),
                method = %req.method(),
                path = %path,
                "request denied"
            );
            false
        }
    };
    if !allowed {
        bump(&stats.denied);
        return Err(Local::Denied);
    }
    bump(&stats.allowed);
    let rewritten = match path {
        std::borrow::Cow::Owned(p) => Some(p),
        std::borrow::Cow::Borrowed(_) => None,
    };
    if let Some(audited) = audited {
        req.extensions_mut().insert(audited);
    }
    if let Some(p) = rewritten {
        rewrite_path(req, &p)?;
    }
    Ok(())
}

/// Replaces the request's path with the normalized one, keeping the
/// query.
fn rewrite_path<B>(req: &mut Request<B>, path: &str) -> Result<(), Local> {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| Local::BadRequest)?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Local::BadRequest)?;
    Ok(())
}

/// `ns/name` of a policy, or `-` for "no ALLOW policy matched".
struct PolicyName<'a>(Option<&'a PolicyScope>);

impl std::fmt::Display for PolicyName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}/{}", p.namespace, p.name),
            None => f.write_str("-"),
        }
    }
}

fn local_response<ResB>(local: Local, grpc: bool) -> Response<AuthzBody<ResB>> {
    let (status, code, message) = match local {
        Local::Denied => (StatusCode::FORBIDDEN, PERMISSION_DENIED, DENIED_BODY),
        Local::BadRequest => (
            StatusCode::BAD_REQUEST,
            local_reply::grpc_code_for_http(400),
            "Bad Request",
        ),
    };
    if grpc {
        let mut res = Response::new(AuthzBody::empty());
        local_reply::grpc_headers(&mut res, code, message);
        return res;
    }
    let mut res = Response::new(AuthzBody::local(Bytes::from_static(message.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    res
}
