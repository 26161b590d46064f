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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_core::model::{Cluster, Endpoint, EndpointAddress, Protocol};
use mesh_core::outlier::HostOutlier;

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
    client: Client<Connector, BoxBody>,
}

impl EndpointState {
    pub(crate) fn new(endpoint: &Endpoint, transport: Transport) -> Arc<Self> {
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
