//! Endpoints: the connection pool and load gauge of one address.
//!
//! Each endpoint owns a connection pool whose connector always dials the
//! endpoint's own address, whatever the request URI says: our own for
//! HTTP/2 (`h2`: one multiplexed connection, more when its streams run
//! out, `maxConnections` / `maxRequestsPerConnection` / `idleTimeout`
//! enforced), hyper-util's for HTTP/1.1. The URI keeps
//! the authority the caller addressed (`reviews:9080`), so HTTP/1.1 sends
//! it as `Host` and HTTP/2 as `:authority`, as a sidecar preserves the
//! original host. An endpoint that disappears from the config is simply
//! dropped from the runtime: requests still holding it finish on its
//! connections, and the pool closes when the last of them ends.
//!
//! Connections are plaintext or TLS as the cluster's `tls` says (`tls`);
//! the TLS settings are part of the [`Transport`], so a change gives the
//! endpoint a new pool and no connection made under the old settings is
//! reused.

mod connect;
mod h2;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::lb::EwmaState;
use mesh_core::model::{Cluster, Endpoint, EndpointAddress, Protocol, UpstreamTls};
use mesh_core::outlier::HostOutlier;
use tokio::time::Instant;

pub use connect::ConnectError;
pub(crate) use connect::Connector;
pub(crate) use h2::StreamGuard;
pub(crate) use tls::UpstreamTlsConfig;

use crate::access_log::Upstream;
use crate::body::BoxBody;
use crate::error::BoxError;
use h2::{H2Pool, H2Settings};

/// The longest a pooled connection stays idle, whatever `http.idleTimeout`
/// says (Istio's default is 1h): below the 5 minute keep-alive most
/// servers use, so the client closes first rather than reusing a
/// connection the server is closing (hyper#3640).
const MAX_IDLE: Duration = Duration::from_secs(90);

/// What decides whether an endpoint's connections can be reused after a
/// config change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transport {
    protocol: Protocol,
    connect_timeout: Duration,
    idle_timeout: Duration,
    reuse: bool,
    max_requests_per_connection: Option<u32>,
    max_connections: u32,
    max_concurrent_streams: Option<u32>,
    tls: TransportTls,
}

/// The cluster's TLS settings (what decides reuse) and the config built
/// from them once per cluster config version.
#[derive(Clone, Debug)]
struct TransportTls {
    settings: Option<UpstreamTls>,
    config: Option<Arc<UpstreamTlsConfig>>,
}

impl PartialEq for TransportTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl Eq for TransportTls {}

impl Transport {
    /// The transport of `cluster`, with its TLS `config` (built by
    /// [`UpstreamTlsConfig::build`], `None` for plaintext).
    pub(crate) fn of(cluster: &Cluster, config: Option<Arc<UpstreamTlsConfig>>) -> Self {
        Self {
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.limits.idle_timeout.min(MAX_IDLE),
            // `maxRequestsPerConnection: 1` disables keep-alive (Istio
            // `ConnectionPoolSettings.HTTPSettings`).
            reuse: cluster.limits.max_requests_per_connection != Some(1),
            max_requests_per_connection: cluster.limits.max_requests_per_connection,
            max_connections: cluster.limits.max_connections,
            max_concurrent_streams: cluster.limits.max_concurrent_streams,
            tls: TransportTls {
                settings: cluster.tls.clone(),
                config,
            },
        }
    }
}

/// The runtime state of one endpoint: its connections and its load.
pub(crate) struct EndpointState {
    address: EndpointAddress,
    endpoint: Endpoint,
    transport: Transport,
    in_flight: AtomicU64,
    outlier: HostOutlier,
    ewma: EwmaState,
    added: Option<Instant>,
    // Consecutive connect failures, and when the last one happened
    // (nanoseconds since `created`).
    connect_failures: AtomicU32,
    connect_failed_at: AtomicU64,
    created: Instant,
    pool: Pool,
}

/// HTTP/1.1 on hyper-util's pool; HTTP/2 on our own (see `h2`). One per
/// endpoint, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Pool {
    Http1(Client<Connector, BoxBody>),
    Http2(Arc<H2Pool>),
}

/// A request on its way to an endpoint.
pub(crate) struct Sending {
    kind: SendingKind,
    /// For the access log, when it is on: attached to the response.
    upstream: Option<Upstream>,
}

enum SendingKind {
    Http1(hyper_util::client::legacy::ResponseFuture),
    Http2(h2::SendFuture),
}

impl Future for Sending {
    type Output = Result<(Response<Incoming>, Option<StreamGuard>), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = std::task::ready!(match &mut this.kind {
            SendingKind::Http1(f) => Pin::new(f).poll(cx).map(|r| {
                r.map(|res| (res, None))
                    .map_err(|e| Box::new(e) as BoxError)
            }),
            SendingKind::Http2(f) => f
                .as_mut()
                .poll(cx)
                .map(|r| r.map(|(res, g)| (res, Some(g)))),
        });
        Poll::Ready(result.map(|(mut res, g)| {
            if let Some(u) = this.upstream.take() {
                res.extensions_mut().insert(u);
            }
            (res, g)
        }))
    }
}

/// How long an endpoint that failed to connect is not ready: one second
/// per consecutive failure, at most [`MAX_CONNECT_BACKOFF`]. Then one
/// request probes it again.
const CONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The longest an endpoint stays not ready after connect failures.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(30);

impl EndpointState {
    /// State for `endpoint`; `warming` marks it as newly added (slow
    /// start counts from now). The connections it opens are counted in
    /// `metrics`, the cluster's standard metrics.
    pub(crate) fn new(
        endpoint: &Endpoint,
        transport: Transport,
        warming: bool,
        metrics: Arc<crate::metrics::SeriesTable>,
    ) -> Arc<Self> {
        let connector = Connector::new(
            endpoint.address.clone(),
            transport.connect_timeout,
            transport.tls.config.clone(),
            Some(metrics),
        );
        let pool = match transport.protocol {
            Protocol::Http2 => Pool::Http2(H2Pool::new(
                connector,
                H2Settings {
                    idle_timeout: transport.idle_timeout,
                    max_requests_per_connection: transport.max_requests_per_connection,
                    max_connections: transport.max_connections,
                    max_concurrent_streams: transport.max_concurrent_streams,
                },
            )),
            Protocol::Http1 => {
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_idle_timeout(transport.idle_timeout)
                    .pool_timer(TokioTimer::new());
                if !transport.reuse {
                    builder.pool_max_idle_per_host(0);
                }
                Pool::Http1(builder.build(connector))
            }
        };
        Arc::new(Self {
            address: endpoint.address.clone(),
            endpoint: endpoint.clone(),
            transport,
            in_flight: AtomicU64::new(0),
            outlier: HostOutlier::default(),
            ewma: EwmaState::default(),
            added: warming.then(Instant::now),
            connect_failures: AtomicU32::new(0),
            connect_failed_at: AtomicU64::new(0),
            created: Instant::now(),
            pool,
        })
    }

    /// Whether this state can serve `endpoint` under `transport` without
    /// new connections.
    pub(crate) fn reusable_for(&self, endpoint: &Endpoint, transport: &Transport) -> bool {
        self.endpoint.same_identity(endpoint) && &self.transport == transport
    }

    /// The endpoint config this state was built for (its identity; weight
    /// and health may have changed since and live in the cluster runtime).
    pub(crate) fn config(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(crate) fn address(&self) -> &EndpointAddress {
        &self.address
    }

    /// Requests sent to this endpoint whose responses have not finished.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The endpoint's outlier-detection state (kept with the endpoint
    /// across config pushes).
    pub(crate) fn outlier(&self) -> &HostOutlier {
        &self.outlier
    }

    /// Records a failed connect: the endpoint is not ready for a while.
    pub(crate) fn connect_failed(&self) {
        let at = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.connect_failed_at.store(at, Ordering::Relaxed);
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a response: the endpoint is reachable.
    pub(crate) fn responded(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the endpoint can take requests: false for a while after it
    /// failed to connect (the balancer avoids it while others are ready;
    /// [`EndpointStatus`](crate::EndpointStatus) shows it). Reads the
    /// clock only after a failure.
    pub(crate) fn is_ready(&self) -> bool {
        let n = self.connect_failures.load(Ordering::Relaxed);
        if n == 0 {
            return true;
        }
        let backoff = (CONNECT_BACKOFF * n).min(MAX_CONNECT_BACKOFF);
        let at = Duration::from_nanos(self.connect_failed_at.load(Ordering::Relaxed));
        self.created.elapsed() >= at + backoff
    }

    /// Consecutive connect failures.
    pub(crate) fn connect_failures(&self) -> u32 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// The latency estimate (peak EWMA).
    pub(crate) fn ewma(&self) -> &EwmaState {
        &self.ewma
    }

    /// When the endpoint was added, if after its cluster's first build.
    pub(crate) fn added(&self) -> Option<Instant> {
        self.added
    }

    /// Sends `req` on one of the endpoint's connections.
    pub(crate) fn send(&self, req: Request<BoxBody>) -> Sending {
        // The endpoint and route name, for the client's access log: only
        // while it is on (one relaxed check otherwise).
        let upstream = crate::access_log::enabled().then(|| Upstream {
            host: self.address.clone(),
            route: req
                .extensions()
                .get::<crate::route::RouteDecision>()
                .and_then(|d| d.route().name.clone()),
        });
        let kind = match &self.pool {
            Pool::Http1(c) => SendingKind::Http1(c.request(req)),
            Pool::Http2(p) => SendingKind::Http2(p.send(req)),
        };
        Sending { kind, upstream }
    }

    /// HTTP/2 connections open now and opened so far (`None` for
    /// HTTP/1.1, whose pool is hyper-util's).
    pub(crate) fn connections(&self) -> Option<(usize, u64)> {
        match &self.pool {
            Pool::Http1(_) => None,
            Pool::Http2(p) => Some((p.open(), p.opened())),
        }
    }
}

/// One request in flight at an endpoint (and, for HTTP/2, its stream on
/// a connection), until dropped.
pub(crate) struct InFlight {
    endpoint: Arc<EndpointState>,
    stream: Option<StreamGuard>,
}

impl InFlight {
    pub(crate) fn start(endpoint: Arc<EndpointState>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            endpoint,
            stream: None,
        }
    }

    pub(crate) fn endpoint(&self) -> &Arc<EndpointState> {
        &self.endpoint
    }

    /// Holds the request's HTTP/2 stream until the response ends.
    pub(crate) fn set_stream(&mut self, stream: Option<StreamGuard>) {
        self.stream = stream;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
