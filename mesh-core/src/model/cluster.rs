//! Clusters: a named group of endpoints with the policies for reaching them.

use std::sync::Arc;
use std::time::Duration;

use crate::model::UpstreamTls;
use crate::model::policy::{
    ConnectionLimits, HashKey, LocalityLbSetting, OutlierDetection, RetryBudget, SlowStart,
    TokenBucket,
};
use crate::name::ClusterName;

/// How requests are spread over a cluster's endpoints.
///
/// The names are Istio's `DestinationRule.trafficPolicy.loadBalancer.simple`
/// values; the semantics are Envoy's load balancers of the same names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LbPolicy {
    /// Weighted round robin: endpoints take turns in proportion to their
    /// weights (Envoy `ROUND_ROBIN`).
    RoundRobin,
    /// Weighted random choice (Envoy `RANDOM`).
    Random,
    /// Power of N choices: pick `choice_count` endpoints at random and send
    /// to the one with the fewest requests in flight relative to its weight
    /// (Envoy `LEAST_REQUEST`, `choice_count` default 2).
    LeastRequest {
        /// How many random candidates are compared (at least 2).
        choice_count: u32,
    },
    /// Power of two choices on a peak-sensitive EWMA of round-trip time
    /// times requests in flight (Linkerd's default balancer, Finagle's
    /// `p2cPeakEwma`).
    PeakEwma {
        /// The RTT assumed for an endpoint not yet measured (Linkerd: 30 ms).
        default_rtt: Duration,
        /// How fast old measurements fade (Linkerd: 10 s).
        decay: Duration,
    },
    /// Consistent hashing on a ring (Envoy `RING_HASH`, Istio
    /// `consistentHash.ringHash`).
    RingHash {
        /// What the hash is computed from.
        key: HashKey,
        /// The smallest ring (Istio `minimumRingSize`, default 1024).
        minimum_ring_size: u64,
        /// The largest ring (Envoy default 8M).
        maximum_ring_size: u64,
    },
    /// Consistent hashing with a Maglev table (Envoy `MAGLEV`, Istio
    /// `consistentHash.maglev`).
    Maglev {
        /// What the hash is computed from.
        key: HashKey,
        /// The table size, a prime (Istio `tableSize`, default 65537).
        table_size: u64,
    },
}

impl LbPolicy {
    /// Linkerd's default balancer: peak EWMA with a 30 ms default RTT and
    /// a 10 s decay (linkerd2-proxy `DEFAULT_EWMA`: `default_rtt` 30 ms,
    /// `decay` 10 s).
    pub fn linkerd_peak_ewma() -> Self {
        Self::PeakEwma {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

impl Default for LbPolicy {
    /// `LEAST_REQUEST` with two choices: Istio's default since 1.14
    /// ("the default load balancing algorithm is LEAST_REQUEST",
    /// istio.io DestinationRule reference, `LoadBalancerSettings.simple`).
    fn default() -> Self {
        Self::LeastRequest { choice_count: 2 }
    }
}

/// The HTTP version spoken to a cluster's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c; over TLS, ALPN `h2`), one multiplexed connection per
    /// endpoint. Istio selects it for ports declared `HTTP2` or `GRPC`.
    Http2,
}

/// A cluster: where a route sends requests, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// The cluster name; its endpoints are the
    /// [`EndpointSet`](crate::model::EndpointSet) of the same name.
    pub name: ClusterName,
    /// The service (FQDN) the cluster belongs to, when it came from one.
    pub service: Option<Arc<str>>,
    /// The subset of the service, when the cluster is one.
    pub subset: Option<Arc<str>>,
    /// The load-balancing policy.
    pub lb_policy: LbPolicy,
    /// The protocol spoken to endpoints.
    pub protocol: Protocol,
    /// How long to wait for a TCP connection to an endpoint.
    pub connect_timeout: Duration,
    /// Connection and request limits across the process.
    pub limits: ConnectionLimits,
    /// Outlier detection, if enabled.
    pub outlier_detection: Option<OutlierDetection>,
    /// The budget all retries to this cluster share.
    pub retry_budget: RetryBudget,
    /// Locality-weighted balancing and failover, if set.
    pub locality_lb: Option<LocalityLbSetting>,
    /// Slow start for new endpoints, if set.
    pub slow_start: Option<SlowStart>,
    /// A client-side rate limit on requests to the cluster, if set.
    pub rate_limit: Option<TokenBucket>,
    /// TLS to the endpoints (`trafficPolicy.tls`); `None` is plaintext
    /// (`DISABLE`).
    pub tls: Option<UpstreamTls>,
}

impl Cluster {
    /// Istio's default connect timeout, `connectionPool.tcp.connectTimeout`
    /// = 10s (istio.io DestinationRule reference, `TCPSettings`).
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A cluster with Istio's defaults: `LEAST_REQUEST`, HTTP/1.1, 10 s
    /// connect timeout.
    pub fn new(name: impl Into<ClusterName>) -> Self {
        Self {
            name: name.into(),
            service: None,
            subset: None,
            lb_policy: LbPolicy::default(),
            protocol: Protocol::default(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            limits: ConnectionLimits::default(),
            outlier_detection: None,
            retry_budget: RetryBudget::default(),
            locality_lb: None,
            slow_start: None,
            rate_limit: None,
            tls: None,
        }
    }

    /// Sets the load-balancing policy.
    pub fn with_lb_policy(mut self, policy: LbPolicy) -> Self {
        self.lb_policy = policy;
        self
    }

    /// Sets the protocol.
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
}
