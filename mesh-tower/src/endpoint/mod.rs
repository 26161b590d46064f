//! Endpoints: the connection pool and load gauge of one address.
//!
//! Each endpoint owns a hyper-util client whose connector always dials the
//! endpoint's own address, whatever the request URI says. The URI keeps
//! the authority the caller addressed (`reviews:9080`), so HTTP/1.1 sends
//! it as `Host` and HTTP/2 as `:authority`, as a sidecar preserves the
//! original host. An endpoint that disappears from the config is simply
//! dropped from the runtime: requests still holding it finish on its
//! connections, and the pool closes when the last of them ends.

mod connect;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::lb::EwmaState;
use mesh_core::model::{Cluster, Endpoint, EndpointAddress, Protocol};
use mesh_core::outlier::HostOutlier;
use tokio::time::Instant;

pub use connect::ConnectError;
pub(crate) use connect::Connector;

use crate::body::BoxBody;

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
}

impl Transport {
    pub(crate) fn of(cluster: &Cluster) -> Self {
        Self {
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.limits.idle_timeout.min(MAX_IDLE),
            // `maxRequestsPerConnection: 1` disables keep-alive (Istio
            // `ConnectionPoolSettings.HTTPSettings`).
            reuse: cluster.limits.max_requests_per_connection != Some(1),
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
    client: Client<Connector, BoxBody>,
}

/// How long an endpoint that failed to connect is not ready: one second
/// per consecutive failure, at most [`MAX_CONNECT_BACKOFF`]. Then one
/// request probes it again.
const CONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The longest an endpoint stays not ready after connect failures.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(30);

impl EndpointState {
    /// State for `endpoint`; `warming` marks it as newly added (slow
    /// start counts from now).
    pub(crate) fn new(endpoint: &Endpoint, transport: Transport, warming: bool) -> Arc<Self> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(transport.idle_timeout)
            .pool_timer(TokioTimer::new())
            .http2_only(transport.protocol == Protocol::Http2);
        if !transport.reuse {
            builder.pool_max_idle_per_host(0);
        }
        let client = builder.build(Connector::new(
            endpoint.address.clone(),
            transport.connect_timeout,
        ));
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
            client,
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

    pub(crate) fn client(&self) -> &Client<Connector, BoxBody> {
        &self.client
    }
}

/// One request in flight at an endpoint, until dropped.
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub(crate) fn start(endpoint: Arc<EndpointState>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }

    pub(crate) fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
