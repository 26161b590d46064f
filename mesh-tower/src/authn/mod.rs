//! Request authentication: Istio's `RequestAuthentication` JWT rules for
//! servers.
//!
//! [`RequestAuthnLayer`] goes on an axum `Router` or a tonic server,
//! outside the authorization layer, which reads the [`VerifiedJwt`] it
//! leaves in the request extensions. The behaviour is Istio's
//! (istio.io, "RequestAuthentication"; istiod configures Envoy's
//! `jwt_authn` filter with `allow_missing` requirements):
//!
//! - a request **without a token passes** (no `VerifiedJwt`): requiring a
//!   token is authorization's job (`requestPrincipals: ["*"]`, checklist
//!   B.6.7);
//! - a request with a token that does not verify is answered `401` (gRPC:
//!   `UNAUTHENTICATED`, status 16) with a fixed message that says nothing
//!   about keys or the reason; the reason is logged at debug level, never
//!   the token;
//! - tokens are looked for where the rules say (`fromHeaders` with
//!   `prefix`, `fromParams`, `fromCookies`), by default in
//!   `Authorization: Bearer <token>` and the `access_token` query
//!   parameter; a request with tokens in more than one place is rejected;
//! - the token's `iss` selects the rules that check it; a token of an
//!   issuer no rule names (at the place it was found) is rejected;
//! - the signature must verify with a key of the rule's set chosen by
//!   `kid`, with an allow-listed algorithm (RS256/384/512, PS256/384/512,
//!   ES256/384, EdDSA; never `none` or HMAC, checklist B.9.1);
//! - `exp` and `nbf` are checked with 60 s of clock skew (Envoy
//!   `jwt_authn` `clock_skew_seconds` default, envoyproxy/envoy#13872);
//!   `exp` is optional as in Envoy unless `require_expiration`, which
//!   istiod never sets;
//! - `aud` must contain one of `audiences` when the rule lists any;
//! - a verified token is removed from the request unless
//!   `forwardOriginalToken`, claims are copied to `outputClaimToHeaders`
//!   and the payload to `outputPayloadToHeader`. Inbound copies of those
//!   headers are removed from every request, so a client cannot forge
//!   them by sending no token.
//!
//! Key sets come from the rule (`jwks`), from an `https://` `jwksUri`, or
//! from a `file:///` `jwksUri`; see the `keys` module for caching,
//! rotation and failure handling. Signatures are verified with `ring`
//! (the provider rustls uses here), on keys decoded once per load.
//!
//! The rules come either from a static list ([`RequestAuthnLayer::new`])
//! or live from a [`Mesh`]'s store ([`RequestAuthnLayer::for_workload`]):
//! a task owned by the layer recompiles the workload's rules when the
//! snapshot changes and swaps them in; a request reads them with one
//! atomic load.
//!
//! # Example
//!
//! Authentication outside authorization, as Istio orders them, and a
//! handler that reads the verified token:
//!
//! ```no_run
//! use axum::Extension;
//! use mesh_core::model::{Labels, Workload};
//! use mesh_tower::Mesh;
//! use mesh_tower::authn::{AuthnOptions, RequestAuthnLayer, VerifiedJwt};
//! use mesh_tower::authz::AuthorizationLayer;
//!
//! # fn app(mesh: Mesh, roots: rustls::RootCertStore) -> axum::Router {
//! let workload = Workload::new("shop", Labels::new([("app", "cart")]));
//! let authn = RequestAuthnLayer::for_workload(
//!     &mesh,
//!     workload.clone(),
//!     AuthnOptions::new().with_root_store(roots),
//! );
//! axum::Router::new()
//!     .route(
//!         "/me",
//!         axum::routing::get(|jwt: Option<Extension<VerifiedJwt>>| async move {
//!             jwt.map_or("anonymous".to_owned(), |Extension(j)| j.principal)
//!         }),
//!     )
//!     .layer(AuthorizationLayer::for_workload(mesh, workload))
//!     .layer(authn)
//! # }
//! ```

mod fetch;
mod jwt;
mod keys;
mod policy;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, StatusCode, header};
#[doc(no_inline)]
pub use mesh_core::model::VerifiedJwt;
use mesh_core::model::security::JwtRule;
use mesh_core::model::{RequestAuthentication, Workload};

use crate::Mesh;
use crate::local_reply;
use policy::{Compiled, JwksCache, Outcome};

/// Options of the authentication layer that are not in the policy.
#[derive(Clone, Debug)]
pub struct AuthnOptions {
    roots: Arc<rustls::RootCertStore>,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    clock_skew: Duration,
    max_jwks_bytes: usize,
}

impl Default for AuthnOptions {
    fn default() -> Self {
        Self {
            roots: Arc::new(rustls::RootCertStore::empty()),
            refresh_interval: Self::DEFAULT_REFRESH_INTERVAL,
            min_refetch_interval: Self::DEFAULT_MIN_REFETCH_INTERVAL,
            clock_skew: Self::DEFAULT_CLOCK_SKEW,
            max_jwks_bytes: Self::DEFAULT_MAX_JWKS_BYTES,
        }
    }
}

impl AuthnOptions {
    /// How often a loaded remote set is reloaded: Istio's
    /// `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL` default.
    pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);
    /// The least time between two loads caused by unknown `kid`s or
    /// failures.
    pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
    /// Leeway on `exp` and `nbf`: Envoy's `clock_skew_seconds` default.
    pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
    /// The largest clock skew [`with_clock_skew`](Self::with_clock_skew) accepts.
    pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
    /// The largest key set document read.
    pub const DEFAULT_MAX_JWKS_BYTES: usize = 1 << 20;

    /// The defaults: no trusted roots (remote key sets cannot load until
    /// [`with_root_store`](Self::with_root_store) is called), 20 min
    /// refresh, 30 s minimum refetch interval, 60 s clock skew, 1 MiB
    /// documents.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the roots `https://` key set servers are verified against.
    pub fn with_root_store(mut self, roots: rustls::RootCertStore) -> Self {
        self.roots = Arc::new(roots);
        self
    }

    /// Sets how often a loaded remote or file set is reloaded.
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Sets the least time between two loads of one set caused by an
    /// unknown `kid` or a failed load.
    pub fn with_min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    /// Sets the leeway on `exp` and `nbf`, at most
    /// [`MAX_CLOCK_SKEW`](Self::MAX_CLOCK_SKEW) (larger values are
    /// lowered to it).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew.min(Self::MAX_CLOCK_SKEW);
        self
    }

    /// Sets the largest key set document read.
    pub fn with_max_jwks_bytes(mut self, max: usize) -> Self {
        self.max_jwks_bytes = max;
        self
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Verifies JWTs by Istio's `RequestAuthentication`; see the
/// [module docs](self).
#[derive(Clone)]
pub struct RequestAuthnLayer {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Static(Arc<Compiled>),
    Live(Arc<Live>),
}

struct Live {
    current: Arc<ArcSwap<Compiled>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for RequestAuthnLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = matches!(self.source, Source::Live(_));
        f.debug_struct("RequestAuthnLayer")
            .field("live", &live)
            .finish_non_exhaustive()
    }
}

impl RequestAuthnLayer {
    /// A layer enforcing every rule of `policies` (their scopes are not
    /// consulted), with default [`AuthnOptions`].
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime when a rule has a remote or file key set
    /// (its loading task is spawned here).
    pub fn new(policies: impl IntoIterator<Item = RequestAuthentication>) -> Self {
        Self::with_options(policies, AuthnOptions::default())
    }

    /// A layer enforcing every rule of `policies` with `options`.
    ///
    /// # Panics
    ///
    /// As [`new`](Self::new).
    pub fn with_options(
        policies: impl IntoIterator<Item = RequestAuthentication>,
        options: AuthnOptions,
    ) -> Self {
        let policies: Vec<RequestAuthentication> = policies.into_iter().collect();
        let rules = policies.iter().flat_map(|p| p.jwt_rules.iter());
        let compiled = Compiled::new(rules, &mut JwksCache::default(), &options);
        Self {
            source: Source::Static(Arc::new(compiled)),
        }
    }

    /// A layer enforcing the `RequestAuthentication` policies of `mesh`'s
    /// config that apply to `workload` (its namespace, the root
    /// namespace, and selectors matching its labels; Istio merges the
    /// rules of all of them), following config changes.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn for_workload(mesh: &Mesh, workload: Workload, options: AuthnOptions) -> Self {
        let mut changes = mesh.store().subscribe();
        let mut cache = JwksCache::default();
        let rules_of = move |snapshot: &mesh_core::Snapshot| -> Vec<JwtRule> {
            snapshot
                .security()
                .request_authentications
                .iter()
                .filter(|p| p.scope.applies_to(&workload))
                .flat_map(|p| p.jwt_rules.iter().cloned())
                .collect()
        };
        let mut rules = rules_of(&changes.borrow_and_update());
        let current = Arc::new(ArcSwap::from_pointee(Compiled::new(
            &rules, &mut cache, &options,
        )));
        let task = tokio::spawn({
            let current = Arc::clone(&current);
            async move {
                // Ends when the store is gone or the layer aborts it.
                while changes.changed().await.is_ok() {
                    let next = rules_of(&changes.borrow_and_update());
                    if next == rules {
                        continue;
                    }
                    rules = next;
                    current.store(Arc::new(Compiled::new(&rules, &mut cache, &options)));
                    tracing::debug!(rules = rules.len(), "request authentication updated");
                }
            }
        });
        Self {
            source: Source::Live(Arc::new(Live { current, task })),
        }
    }
}

impl<S> tower::Layer<S> for RequestAuthnLayer {
    type Service = RequestAuthn<S>;

    fn layer(&self, inner: S) -> RequestAuthn<S> {
        RequestAuthn {
            inner,
            source: self.source.clone(),
        }
    }
}

/// The service [`RequestAuthnLayer`] makes.
#[derive(Clone)]
pub struct RequestAuthn<S> {
    inner: S,
    source: Source,
}

impl<S: std::fmt::Debug> std::fmt::Debug for RequestAuthn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAuthn")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> RequestAuthn<S> {
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
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> tower::Service<Request<B>> for RequestAuthn<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let compiled = match &self.source {
            Source::Static(c) => Arc::clone(c),
            Source::Live(live) => live.current.load_full(),
        };
        if compiled.is_empty() {
            return ResponseFuture::Inner {
                future: self.inner.call(req),
            };
        }
        match compiled.authenticate(&mut req, true) {
            Outcome::NoToken | Outcome::Verified => ResponseFuture::Inner {
                future: self.inner.call(req),
            },
            Outcome::Rejected(reason) => {
                tracing::debug!(reason = reason.as_str(), "jwt rejected");
                ResponseFuture::Reply {
                    response: Some(unauthenticated(&req)),
                }
            }
            Outcome::NeedKeys(jwks) => {
                // The ready service goes with the request; this handle
                // keeps a fresh clone (tower's "ready clone" pattern).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::Waiting {
                    future: Box::pin(async move {
                        jwks.refetch().await;
                        // The load waited for may have started before the
                        // issuer rotated (a scheduled reload); one more,
                        // if the rate limit allows, then decide.
                        let mut outcome = compiled.authenticate(&mut req, true);
                        if let Outcome::NeedKeys(jwks) = &outcome {
                            jwks.refetch().await;
                            outcome = compiled.authenticate(&mut req, false);
                        }
                        match outcome {
                            Outcome::NoToken | Outcome::Verified => inner.call(req).await,
                            Outcome::Rejected(reason) => {
                                tracing::debug!(reason = reason.as_str(), "jwt rejected");
                                Ok(unauthenticated(&req))
                            }
                            Outcome::NeedKeys(_) => Ok(unauthenticated(&req)),
                        }
                    }),
                }
            }
        }
    }
}

/// The 401 answer: `UNAUTHENTICATED` for gRPC callers. The message is
/// fixed (Envoy says "Jwt verification fails" too, though it adds the
/// reason, which this layer keeps to its logs).
fn unauthenticated<B, ResB: Default>(req: &Request<B>) -> Response<ResB> {
    let mut res = Response::new(ResB::default());
    if local_reply::is_grpc(req) {
        local_reply::grpc_headers(&mut res, 16, "Jwt verification fails");
    } else {
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    res
}

/// The future of [`RequestAuthn`].
#[pin_project::pin_project(project = Proj)]
pub enum ResponseFuture<F, ResB, E> {
    /// The inner service's future.
    Inner {
        /// The future.
        #[pin]
        future: F,
    },
    /// A local 401.
    Reply {
        /// The response, taken when ready.
        response: Option<Response<ResB>>,
    },
    /// Waiting for a key set load, then deciding.
    Waiting {
        /// The boxed rest of the request.
        future: BoxFuture<Result<Response<ResB>, E>>,
    },
}

impl<F, ResB, E> std::fmt::Debug for ResponseFuture<F, ResB, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self {
            Self::Inner { .. } => "Inner",
            Self::Reply { .. } => "Reply",
            Self::Waiting { .. } => "Waiting",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB, E>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner { future } => future.poll(cx),
            Proj::Reply { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            Proj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests;
