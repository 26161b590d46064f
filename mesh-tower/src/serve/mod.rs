//! Serving axum routers and tower HTTP services with Istio's
//! `PeerAuthentication` modes.
//!
//! [`serve`] accepts connections on a listener and serves each with
//! hyper-util's `auto` builder (HTTP/1.1 and HTTP/2, ALPN `h2` and
//! `http/1.1` offered by the TLS configs from `mesh_identity::tls`). The
//! transport depends on the [`TransportMode`], named after Istio's
//! `PeerAuthentication.mtls.mode` (istio.io, "PeerAuthentication"):
//!
//! - `STRICT`: mutual TLS only; a plaintext client or a client whose SVID
//!   does not verify fails the handshake and is closed.
//! - `PERMISSIVE`: mutual TLS and plaintext on one port. The first bytes
//!   decide: a TLS ClientHello goes to the mTLS path, anything else to
//!   plaintext (reference checklist B.5; see `detect.rs`).
//! - `DISABLE`: plaintext only.
//! - [`TransportMode::Policy`]: one of the three, chosen per new connection
//!   from the live config: the effective `PeerAuthentication` mode of the
//!   declared [`Workload`] on the listener's port (`portLevelMtls`), see
//!   [`mesh_core::model::security::effective_mtls_mode`]. Each accepted
//!   connection does one `ArcSwap` load of the store's snapshot. A policy
//!   change applies to connections accepted after it; an established
//!   connection keeps the mode it was accepted with (Envoy likewise applies
//!   a new listener filter chain to new connections and drains old ones).
//!   Bound how long old connections live with
//!   [`ServeConfig::with_max_connection_age`].
//!
//! **Max connection age** (gRFC A9, `MAX_CONNECTION_AGE` and
//! `MAX_CONNECTION_AGE_GRACE`; off by default, as gRPC's default is
//! infinite): once a connection has served for the age, with ±10% jitter
//! so that connections made together do not all leave together, it is shut
//! down gracefully: HTTP/2 sends GOAWAY and finishes the streams in flight,
//! HTTP/1 closes after the request in flight. After the grace period, if
//! set, it is closed whatever is still running. This bounds how long a
//! connection keeps a rotated-out certificate or an old transport mode
//! (reference checklist B.4.4, C.7.2).
//!
//! Every request carries a [`ConnectionSecurity`] extension: the mode the
//! connection was served with and the verified peer SPIFFE ID (none for
//! plaintext), for handlers and for an authorization layer.
//!
//! Detection and the TLS handshake share one deadline,
//! [`ServeConfig::with_handshake_timeout`] (default 10 s, Linkerd's
//! `detect_protocol_timeout` default, `linkerd/app/core/src/config.rs`), so a
//! slow or silent client holds a connection task for at most that long and
//! never the accept loop. Server-speaks-first protocols cannot be served
//! in PERMISSIVE mode (B.5.2): they would wait out this deadline.
//!
//! The helper lives in `mesh-tower`, not `mesh-identity`, because it is
//! HTTP serving (hyper, tower) and the authorization layer that reads the
//! extension will live here too; `mesh-identity` stays TLS and identity
//! only.

pub mod detect;
#[cfg(test)]
mod tests;
#[cfg(feature = "xds")]
pub mod xds;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::ConfigStore;
use mesh_core::model::Workload;
use mesh_core::model::security::{EffectiveMtlsMode, effective_mtls_mode};
use mesh_identity::tls::{PeerMatcher, server_config};
use mesh_identity::{CredentialStore, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};
use tracing::debug;

use crate::BoxError;
use detect::{Detected, Prefixed};

/// How a server port treats transport security (Istio
/// `PeerAuthentication.mtls.mode`).
#[derive(Clone, Debug)]
pub enum TransportMode {
    /// Mutual TLS only (`STRICT`).
    Strict(Arc<rustls::ServerConfig>),
    /// Mutual TLS and plaintext on one port (`PERMISSIVE`).
    Permissive(Arc<rustls::ServerConfig>),
    /// Plaintext only (`DISABLE`).
    Disable,
    /// The mode the live config's `PeerAuthentication` policies give a
    /// workload on the listener's port, chosen per new connection.
    Policy(PolicyTransport),
}

/// [`TransportMode::Policy`]: a config store, the workload the server runs
/// as, and the TLS config for the modes that accept mutual TLS.
#[derive(Clone, Debug)]
pub struct PolicyTransport {
    store: ConfigStore,
    workload: Arc<Workload>,
    tls: Arc<rustls::ServerConfig>,
}

impl PolicyTransport {
    /// Follows the `PeerAuthentication` policies of `store` (a
    /// [`Mesh`](crate::Mesh)'s is `mesh.store().clone()`) for `workload`,
    /// with `tls` on the mutual TLS paths.
    pub fn new(store: ConfigStore, workload: Workload, tls: Arc<rustls::ServerConfig>) -> Self {
        Self {
            store,
            workload: Arc::new(workload),
            tls,
        }
    }

    /// As [`new`](Self::new), with the TLS config built from `credentials`
    /// (`mesh_identity::tls::server_config`): the store's current SVID on
    /// each handshake, so rotation applies to new connections, and any
    /// client SVID of a trust domain in its bundle (what an Istio server
    /// accepts before authorization).
    pub fn from_credentials(
        store: ConfigStore,
        workload: Workload,
        credentials: Arc<CredentialStore>,
    ) -> Result<Self, rustls::Error> {
        let tls = server_config(credentials, PeerMatcher::AnyTrusted)?;
        Ok(Self::new(store, workload, Arc::new(tls)))
    }

    /// The mode a connection accepted now on `port` gets.
    pub fn mode_for_port(&self, port: u16) -> EffectiveMtlsMode {
        let snapshot = self.store.load();
        effective_mtls_mode(snapshot.security(), &self.workload, port)
    }

    /// The workload the policies are selected for.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }
}

/// How one connection was secured: the request extension [`serve`] adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSecurity {
    mode: SecurityMode,
    peer: Option<SpiffeId>,
    remote: SocketAddr,
    local: SocketAddr,
}

/// The security of a served connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityMode {
    /// Mutual TLS with a verified client SVID.
    MutualTls,
    /// Plaintext (PERMISSIVE without a ClientHello, or DISABLE).
    Plaintext,
}

impl ConnectionSecurity {
    /// The security of a connection accepted by other means than
    /// [`serve`] (a custom acceptor, a test), for layers that read it.
    pub fn new(
        mode: SecurityMode,
        peer: Option<SpiffeId>,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        Self {
            mode,
            peer,
            remote,
            local,
        }
    }

    /// The connection's security mode.
    pub fn mode(&self) -> SecurityMode {
        self.mode
    }

    /// The verified SPIFFE ID of the client; `None` on plaintext.
    pub fn peer(&self) -> Option<&SpiffeId> {
        self.peer.as_ref()
    }

    /// The client's address (authorization's `source.ip`).
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The address the connection was accepted on (authorization's
    /// `destination.port`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Options of [`serve`].
#[derive(Clone, Debug)]
pub struct ServeConfig {
    mode: TransportMode,
    handshake_timeout: Duration,
    max_connection_age: Option<MaxConnectionAge>,
    metrics: Option<Arc<crate::metrics::IstioMetrics>>,
    drain_grace: Duration,
}

/// gRFC A9's `MAX_CONNECTION_AGE` and `MAX_CONNECTION_AGE_GRACE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxConnectionAge {
    /// How long a connection serves before it is drained (±10% jitter).
    pub age: Duration,
    /// How long draining may take before the connection is closed;
    /// `None` waits for the requests in flight however long they take
    /// (gRPC's default).
    pub grace: Option<Duration>,
}

impl MaxConnectionAge {
    /// The age with A9's jitter: uniform in 90% to 110% of `age`.
    fn jittered(&self) -> Duration {
        self.age.mul_f64(0.9 + 0.2 * fastrand::f64())
    }
}

/// Linkerd's `detect_protocol_timeout` default.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// gRFC A36's default drain grace period for a listener update.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(600);

/// Tells a connection to drain once the server's drain generation passes
/// the one it was accepted in (an xDS server listener update, A9.2).
pub(crate) struct Drain {
    pub(crate) rx: tokio::sync::watch::Receiver<u64>,
    pub(crate) accepted: u64,
    pub(crate) grace: Duration,
}

impl Drain {
    /// Returns once the connection must drain; never if the server is
    /// gone (its connections are aborted with it).
    async fn wait(&mut self) {
        let accepted = self.accepted;
        if self.rx.wait_for(|g| *g > accepted).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl ServeConfig {
    /// Serves with `mode` and the default 10 s handshake timeout.
    pub fn new(mode: TransportMode) -> Self {
        Self {
            mode,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_connection_age: None,
            metrics: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }

    /// How long a connection drained by an xDS listener update may finish
    /// its requests before it is closed (gRFC A36; default 10 minutes).
    /// Used by `serve_xds` (feature `xds`).
    pub fn with_drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// The drain grace period.
    pub fn drain_grace(&self) -> Duration {
        self.drain_grace
    }

    /// Counts every connection served (once its transport is set up: after
    /// the mTLS handshake, if any) in Istio's
    /// `istio_tcp_connections_opened_total` / `_closed_total` with
    /// `reporter="destination"`, the peer's principal and
    /// `connection_security_policy`, into `metrics` (a mesh's:
    /// `Arc::clone(mesh.metrics())`). Off unless set.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::IstioMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Drains each connection after it has served for `age` (±10%
    /// jitter) and closes it `grace` later if requests are still in flight
    /// (`None`: no limit). See the module docs; default: no maximum age.
    pub fn with_max_connection_age(mut self, age: Duration, grace: Option<Duration>) -> Self {
        self.max_connection_age = Some(MaxConnectionAge { age, grace });
        self
    }

    /// The maximum connection age, if any.
    pub fn max_connection_age(&self) -> Option<MaxConnectionAge> {
        self.max_connection_age
    }

    /// Sets the deadline for protocol detection plus the TLS handshake,
    /// from accept; a connection that has not finished both by then is
    /// closed.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The transport mode.
    pub fn mode(&self) -> &TransportMode {
        &self.mode
    }

    /// The detection and handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// Accepts connections on `listener` and serves `service` on each, as
/// `config` says (see the module docs). Runs until dropped; dropping it
/// closes the listener and aborts every connection task (they are owned
/// by a `JoinSet` here). Graceful draining is not part of this helper yet.
///
/// `service` is cloned per request, as tower services are; an axum
/// `Router` fits as is.
pub async fn serve<S, B>(listener: TcpListener, config: ServeConfig, service: S)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let config = Arc::new(config);
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead
                // of spinning (hyper's old `AddrIncoming` slept 1 s; a
                // shorter pause keeps a transient error cheap).
                debug!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let config = Arc::clone(&config);
        let service = service.clone();
        connections.spawn(async move {
            if let Err(error) = connection(stream, &config, service, None).await {
                debug!(%remote, %error, "connection ended with an error");
            }
        });
    }
}

async fn connection<S, B>(
    stream: TcpStream,
    config: &ServeConfig,
    service: S,
    drain: Option<Drain>,
) -> Result<(), BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let deadline = Instant::now() + config.handshake_timeout;
    let addrs = (stream.peer_addr()?, stream.local_addr()?);
    let age = Served {
        age: config.max_connection_age,
        metrics: config.metrics.as_ref(),
        drain,
    };
    let (mode, tls) = match &config.mode {
        TransportMode::Disable => (EffectiveMtlsMode::Disable, None),
        TransportMode::Strict(tls) => (EffectiveMtlsMode::Strict, Some(tls)),
        TransportMode::Permissive(tls) => (EffectiveMtlsMode::Permissive, Some(tls)),
        TransportMode::Policy(policy) => (policy.mode_for_port(addrs.1.port()), Some(&policy.tls)),
    };
    match (mode, tls) {
        (EffectiveMtlsMode::Strict, Some(tls)) => {
            let acceptor = TlsAcceptor::from(Arc::clone(tls));
            mtls(acceptor, stream, addrs, deadline, age, service).await
        }
        (EffectiveMtlsMode::Permissive, Some(tls)) => {
            let mut stream = stream;
            let Some((found, prefix)) = timeout_at(deadline, detect::detect(&mut stream))
                .await
                .map_err(|_| "protocol detection timed out")??
            else {
                return Ok(());
            };
            let io = Prefixed::new(prefix, stream);
            match found {
                Detected::Plaintext => http(io, plaintext(addrs), age, service).await,
                Detected::Tls => {
                    let acceptor = TlsAcceptor::from(Arc::clone(tls));
                    mtls(acceptor, io, addrs, deadline, age, service).await
                }
            }
        }
        _ => http(stream, plaintext(addrs), age, service).await,
    }
}

/// What `http` needs of the config besides the transport.
struct Served<'a> {
    age: Option<MaxConnectionAge>,
    metrics: Option<&'a Arc<crate::metrics::IstioMetrics>>,
    drain: Option<Drain>,
}

fn plaintext((remote, local): (SocketAddr, SocketAddr)) -> ConnectionSecurity {
    ConnectionSecurity {
        mode: SecurityMode::Plaintext,
        peer: None,
        remote,
        local,
    }
}

async fn mtls<I, S, B>(
    acceptor: TlsAcceptor,
    io: I,
    (remote, local): (SocketAddr, SocketAddr),
    deadline: Instant,
    age: Served<'_>,
    service: S,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tls = timeout_at(deadline, acceptor.accept(io))
        .await
        .map_err(|_| "TLS handshake timed out")??;
    let peer = mesh_identity::tls::peer_identity(tls.get_ref().1.peer_certificates());
    let security = ConnectionSecurity {
        mode: SecurityMode::MutualTls,
        peer,
        remote,
        local,
    };
    http(tls, security, age, service).await
}

async fn http<I, S, B>(
    io: I,
    security: ConnectionSecurity,
    served: Served<'_>,
    service: S,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Counted closed when this function returns, however it ends.
    let _tcp = served.metrics.map(|m| m.accepted(m.peer(Some(&security))));
    let age = served.age;
    let mut drain = served.drain;
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(security.clone());
        service.clone().oneshot(request)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    if age.is_none() && drain.is_none() {
        return connection.await;
    }
    let mut connection = std::pin::pin!(connection);
    let aged = async {
        match age {
            Some(age) => sleep(age.jittered()).await,
            None => std::future::pending().await,
        }
    };
    let drained = async {
        match drain.as_mut() {
            Some(d) => d.wait().await,
            None => std::future::pending().await,
        }
    };
    let grace = tokio::select! {
        result = connection.as_mut() => return result,
        () = aged => {
            debug!("max connection age reached; draining the connection");
            age.and_then(|a| a.grace)
        }
        () = drained => {
            debug!("server listener updated; draining the connection");
            drain.as_ref().map(|d| d.grace)
        }
    };
    // HTTP/2: GOAWAY, then the streams in flight finish; HTTP/1: the
    // request in flight finishes and the connection closes.
    connection.as_mut().graceful_shutdown();
    match grace {
        None => connection.await,
        Some(grace) => match timeout(grace, connection).await {
            Ok(result) => result,
            Err(_) => {
                debug!("drain grace elapsed; closing the connection");
                Ok(())
            }
        },
    }
}
