//! Resilience and traffic policies: what routes and clusters ask the
//! layers to do.
//!
//! Plain data like the rest of the model. Every default names the document
//! it comes from; where Istio, Envoy, gRPC and Linkerd disagree, the choice
//! is documented on the field and in `docs/ARCHITECTURE.md`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::name::ClusterName;

/// A share of requests, in parts per million (Envoy's
/// `FractionalPercent` with denominator `MILLION`, Istio's `Percent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fraction(u32);

impl Fraction {
    /// Every request.
    pub const ALL: Fraction = Fraction(1_000_000);
    /// No request.
    pub const NONE: Fraction = Fraction(0);

    /// A fraction from a percentage in `0.0..=100.0`; `None` outside it.
    pub fn from_percent(percent: f64) -> Option<Self> {
        (0.0..=100.0)
            .contains(&percent)
            .then(|| Self((percent * 10_000.0).round() as u32))
    }

    /// A fraction from parts per million, capped at one million.
    pub fn from_ppm(ppm: u32) -> Self {
        Self(ppm.min(1_000_000))
    }

    /// Parts per million.
    pub fn ppm(self) -> u32 {
        self.0
    }

    /// The fraction as a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Whether a request drawn at random falls in the fraction.
    pub fn sample(self) -> bool {
        self.0 >= 1_000_000 || (self.0 > 0 && fastrand::u32(0..1_000_000) < self.0)
    }
}

// --- retries -------------------------------------------------------------

/// Conditions that make a response or failure retryable (Envoy
/// `x-envoy-retry-on` / `x-envoy-retry-grpc-on`, Istio `retryOn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetryConditions(u32);

impl RetryConditions {
    /// Any 5xx response, a reset, or a connect failure (Envoy `5xx`).
    pub const FIVE_XX: Self = Self(1 << 0);
    /// 502, 503 or 504 (Envoy `gateway-error`).
    pub const GATEWAY_ERROR: Self = Self(1 << 1);
    /// The connection was reset or closed before a response (Envoy `reset`).
    pub const RESET: Self = Self(1 << 2);
    /// The connection could not be established (Envoy `connect-failure`).
    pub const CONNECT_FAILURE: Self = Self(1 << 3);
    /// HTTP/2 REFUSED_STREAM (Envoy `refused-stream`).
    pub const REFUSED_STREAM: Self = Self(1 << 4);
    /// 409 (Envoy `retriable-4xx`).
    pub const RETRIABLE_4XX: Self = Self(1 << 5);
    /// A status listed in [`RetryOn::status_codes`] (Envoy
    /// `retriable-status-codes`).
    pub const RETRIABLE_STATUS_CODES: Self = Self(1 << 6);
    /// gRPC `CANCELLED`.
    pub const CANCELLED: Self = Self(1 << 7);
    /// gRPC `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: Self = Self(1 << 8);
    /// gRPC `INTERNAL`.
    pub const INTERNAL: Self = Self(1 << 9);
    /// gRPC `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: Self = Self(1 << 10);
    /// gRPC `UNAVAILABLE`.
    pub const UNAVAILABLE: Self = Self(1 << 11);

    /// No condition.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether every condition of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// The union.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether no condition is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The condition named as in Istio's `retryOn` (`5xx`,
    /// `gateway-error`, `reset`, `connect-failure`, `refused-stream`,
    /// `retriable-4xx`, `retriable-status-codes`, `cancelled`,
    /// `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "5xx" => Self::FIVE_XX,
            "gateway-error" => Self::GATEWAY_ERROR,
            "reset" => Self::RESET,
            "connect-failure" => Self::CONNECT_FAILURE,
            "refused-stream" => Self::REFUSED_STREAM,
            "retriable-4xx" => Self::RETRIABLE_4XX,
            "retriable-status-codes" => Self::RETRIABLE_STATUS_CODES,
            "cancelled" => Self::CANCELLED,
            "deadline-exceeded" => Self::DEADLINE_EXCEEDED,
            "internal" => Self::INTERNAL,
            "resource-exhausted" => Self::RESOURCE_EXHAUSTED,
            "unavailable" => Self::UNAVAILABLE,
            _ => return None,
        })
    }
}

/// What is retried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// The conditions.
    pub conditions: RetryConditions,
    /// HTTP statuses retried under `retriable-status-codes` (Istio lists
    /// them as numbers in `retryOn`, e.g. `retryOn: 503,reset`).
    pub status_codes: Arc<[u16]>,
}

/// Exponential backoff between attempts, fully jittered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first interval.
    pub base: Duration,
    /// The largest interval.
    pub max: Duration,
}

impl Default for Backoff {
    /// Envoy's default: 25 ms base, 10× base maximum
    /// (`RetryPolicy.retry_back_off`; gRFC A44 uses the same values).
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// A route's retry policy (Istio `HTTPRetry`, Envoy `RetryPolicy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Istio `attempts`).
    pub num_retries: u32,
    /// The bound on each attempt (Istio `perTryTimeout`); `None` means each
    /// attempt is bounded only by the route timeout.
    pub per_try_timeout: Option<Duration>,
    /// What is retried.
    pub retry_on: RetryOn,
    /// The backoff between attempts.
    pub backoff: Backoff,
    /// Prefer an endpoint not tried before (Istio
    /// `retryIgnorePreviousHosts`, default true).
    pub ignore_previous_hosts: bool,
    /// Retry non-idempotent methods (POST, PATCH, CONNECT) for response
    /// conditions too. When false they are retried only when the request
    /// never reached the server (`connect-failure`, `refused-stream`).
    pub retry_non_idempotent: bool,
}

impl RetryPolicy {
    /// Istio's default retry policy for HTTP routes without `retries`:
    /// 2 retries on `connect-failure,refused-stream,unavailable,cancelled,
    /// retriable-status-codes` with status 503 (istio.io "Traffic
    /// Management: Retries", `pilot/pkg/networking/core/route/retry`).
    pub fn istio_default() -> Self {
        Self {
            num_retries: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                conditions: RetryConditions::CONNECT_FAILURE
                    .union(RetryConditions::REFUSED_STREAM)
                    .union(RetryConditions::UNAVAILABLE)
                    .union(RetryConditions::CANCELLED)
                    .union(RetryConditions::RETRIABLE_STATUS_CODES),
                status_codes: Arc::from([503]),
            },
            backoff: Backoff::default(),
            ignore_previous_hosts: true,
            retry_non_idempotent: false,
        }
    }
}

/// When a hedged request sends its next copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// After a fixed delay (gRFC A6 `hedgingDelay`).
    Fixed(Duration),
    /// After the given latency percentile of recent requests (tower's
    /// `Hedge`), once `min_data_points` requests were measured.
    Percentile {
        /// The percentile, in `0.0..100.0`.
        percentile: f64,
        /// Requests measured before hedging starts.
        min_data_points: u64,
    },
}

/// Hedging: send another copy if the first is slow; the first success
/// wins and the others are cancelled (gRFC A6 "Hedging Policy").
#[derive(Clone, Debug, PartialEq)]
pub struct HedgePolicy {
    /// Copies in all, including the first (at most 5, gRFC A6).
    pub max_attempts: u32,
    /// When the next copy is sent.
    pub delay: HedgeDelay,
}

/// The cluster-wide retry budget: retries may add at most `ratio` of the
/// recent requests, plus `min_per_second`, measured over `ttl` (Linkerd's
/// `retryBudget`, tower's `TpsBudget`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBudget {
    /// Retries allowed per request (`retryRatio`).
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic
    /// (`minRetriesPerSecond`).
    pub min_per_second: u32,
    /// The window requests are remembered for (`ttl`).
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// Linkerd's default: 20% of requests plus 10 retries per second over
    /// 10 s (linkerd.io ServiceProfile reference, `retryBudget`).
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

// --- response classes --------------------------------------------------------

/// A condition on a response's status (Linkerd `ResponseMatch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseCondition {
    /// The status is in `min..=max` (Linkerd `status`; an unset bound is
    /// open).
    Status {
        /// The smallest status matched.
        min: u16,
        /// The largest status matched.
        max: u16,
    },
    /// Every condition holds.
    All(Arc<[ResponseCondition]>),
    /// At least one condition holds.
    Any(Arc<[ResponseCondition]>),
    /// The condition does not hold.
    Not(Box<ResponseCondition>),
}

impl ResponseCondition {
    /// Whether a response with `status` meets the condition.
    pub fn matches(&self, status: u16) -> bool {
        match self {
            Self::Status { min, max } => (*min..=*max).contains(&status),
            Self::All(cs) => cs.iter().all(|c| c.matches(status)),
            Self::Any(cs) => cs.iter().any(|c| c.matches(status)),
            Self::Not(c) => !c.matches(status),
        }
    }
}

/// Which responses count as failures (Linkerd `ResponseClass`): read by
/// retries (what to retry) and by outlier detection (what counts against
/// an endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseClass {
    /// The responses of the class.
    pub condition: ResponseCondition,
    /// Whether they are failures.
    pub is_failure: bool,
}

// --- fault injection -------------------------------------------------------

/// An injected delay (Istio `HTTPFaultInjection.Delay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultDelay {
    /// How long.
    pub delay: Duration,
    /// Which requests.
    pub fraction: Fraction,
}

/// What an injected abort answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortStatus {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code (answered with HTTP 200 and `grpc-status`).
    Grpc(i32),
}

/// An injected abort (Istio `HTTPFaultInjection.Abort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAbort {
    /// The status answered.
    pub status: AbortStatus,
    /// Which requests.
    pub fraction: Fraction,
}

/// Fault injection on a route, applied before retries as Istio applies it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPolicy {
    /// A delay, applied first.
    pub delay: Option<FaultDelay>,
    /// An abort.
    pub abort: Option<FaultAbort>,
}

// --- traffic shaping -------------------------------------------------------

/// Header edits (Istio `Headers.HeaderOperations`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderMutations {
    /// Set, replacing any existing values.
    pub set: Arc<[(HeaderName, HeaderValue)]>,
    /// Appended.
    pub add: Arc<[(HeaderName, HeaderValue)]>,
    /// Removed.
    pub remove: Arc<[HeaderName]>,
}

impl HeaderMutations {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Rewrites before forwarding (Istio `HTTPRewrite`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Replaces the matched path prefix (or the whole path for an exact
    /// match) with this.
    pub path_prefix: Option<Arc<str>>,
    /// Replaces the authority (`Host`).
    pub authority: Option<Arc<str>>,
}

/// A copy of matching requests sent to another cluster, fire-and-forget
/// (Istio `mirror` + `mirrorPercentage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    /// The cluster the copies go to.
    pub cluster: ClusterName,
    /// Which requests are copied.
    pub fraction: Fraction,
}

/// A redirect answered by the route itself (Istio `HTTPRedirect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// The new scheme.
    pub scheme: Option<Arc<str>>,
    /// The new authority.
    pub authority: Option<Arc<str>>,
    /// The new port.
    pub port: Option<u16>,
    /// The new path (the query is kept).
    pub path: Option<Arc<str>>,
    /// The status, 301 by default (Istio `redirectCode`).
    pub status: u16,
}

/// A response answered by the route itself (Istio `HTTPDirectResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectResponse {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Option<Arc<[u8]>>,
}

// --- clusters: limits, outliers, balancing ----------------------------------

/// Per-cluster limits (Istio `ConnectionPoolSettings`, Envoy circuit
/// breaker thresholds), enforced across the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections to all endpoints together (`tcp.maxConnections`).
    pub max_connections: u32,
    /// Requests waiting for a connection (`http.http1MaxPendingRequests`).
    pub max_pending_requests: u32,
    /// Requests in flight (`http.http2MaxRequests`).
    pub max_requests: u32,
    /// Retries in flight (`http.maxRetries`).
    pub max_retries: u32,
    /// Requests per connection before it is closed
    /// (`http.maxRequestsPerConnection`; `None` is unlimited).
    pub max_requests_per_connection: Option<u32>,
    /// How long a connection may stay idle (`http.idleTimeout`).
    pub idle_timeout: Duration,
    /// Streams opened at once on one HTTP/2 connection before another
    /// connection is opened (`http.maxConcurrentStreams`; `None` follows
    /// the peer's `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: Option<u32>,
}

impl Default for ConnectionLimits {
    /// Istio's defaults, which lift Envoy's 1024 limits: `maxConnections`,
    /// `http1MaxPendingRequests`, `http2MaxRequests` and `maxRetries` are
    /// 2^32-1, `maxRequestsPerConnection` 0 (unlimited), `idleTimeout` 1h
    /// (istio.io DestinationRule reference, `ConnectionPoolSettings`).
    fn default() -> Self {
        Self {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: None,
            idle_timeout: Duration::from_secs(3600),
            max_concurrent_streams: None,
        }
    }
}

/// Success-rate ejection (Envoy, gRFC A50).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRateEjection {
    /// Ejects endpoints below `mean - stdev * stdev_factor / 1000`
    /// (default 1900).
    pub stdev_factor: u32,
    /// Percent of qualifying endpoints actually ejected (default 100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough requests needed to run (default 5).
    pub minimum_hosts: u32,
    /// Requests an endpoint needs in an interval to count (default 100).
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    /// gRFC A50 / Envoy defaults.
    fn default() -> Self {
        Self {
            stdev_factor: 1900,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// Failure-percentage ejection (Envoy, gRFC A50).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FailurePercentageEjection {
    /// Ejects endpoints whose failure percentage is at least this
    /// (default 85).
    pub threshold: u32,
    /// Percent of qualifying endpoints actually ejected (default 100).
    pub enforcement_percentage: u32,
    /// Endpoints with enough requests needed to run (default 5).
    pub minimum_hosts: u32,
    /// Requests an endpoint needs in an interval to count (default 50).
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    /// gRFC A50 / Envoy defaults.
    fn default() -> Self {
        Self {
            threshold: 85,
            enforcement_percentage: 100,
            minimum_hosts: 5,
            request_volume: 50,
        }
    }
}

/// Outlier detection (Istio `OutlierDetection`, Envoy
/// `cluster.OutlierDetection`, gRFC A50).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutlierDetection {
    /// Eject after this many consecutive 5xx (or, with
    /// `split_external_local_origin_errors`, upstream 5xx); `None` disables.
    pub consecutive_5xx: Option<u32>,
    /// Eject after this many consecutive 502/503/504 (and connect
    /// failures); `None` disables.
    pub consecutive_gateway_errors: Option<u32>,
    /// Eject after this many consecutive local-origin failures (connect
    /// errors, resets, timeouts); used only when split.
    pub consecutive_local_origin_failures: Option<u32>,
    /// Count local-origin failures apart from upstream responses.
    pub split_external_local_origin_errors: bool,
    /// How often the interval algorithms run and counters reset.
    pub interval: Duration,
    /// The first ejection's length; the n-th lasts n times longer.
    pub base_ejection_time: Duration,
    /// The longest ejection (`max(base, max_ejection_time)`).
    pub max_ejection_time: Duration,
    /// At most this percent of endpoints are ejected at once.
    pub max_ejection_percent: u32,
    /// Below this percent of healthy endpoints, balance over all of them
    /// (Envoy's panic threshold, Istio `minHealthPercent`).
    pub min_health_percent: u32,
    /// The success-rate algorithm, if enabled.
    pub success_rate: Option<SuccessRateEjection>,
    /// The failure-percentage algorithm, if enabled.
    pub failure_percentage: Option<FailurePercentageEjection>,
}

impl Default for OutlierDetection {
    /// Istio's defaults: `consecutive5xxErrors` 5, `consecutiveGatewayErrors`
    /// disabled, `consecutiveLocalOriginFailures` 5, `interval` 10s,
    /// `baseEjectionTime` 30s, `maxEjectionPercent` 10, `minHealthPercent` 0
    /// (istio.io DestinationRule reference, `OutlierDetection`); Envoy's
    /// `max_ejection_time` 300s.
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            consecutive_local_origin_failures: Some(5),
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 0,
            success_rate: None,
            failure_percentage: None,
        }
    }
}

/// What a consistent hash is computed from (Istio `ConsistentHashLB`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// A request header (`httpHeaderName`).
    Header(HeaderName),
    /// A cookie, set on the response when absent (`httpCookie`).
    Cookie {
        /// The cookie name.
        name: Arc<str>,
        /// The cookie path.
        path: Option<Arc<str>>,
        /// The cookie lifetime; `None` makes a session cookie.
        ttl: Option<Duration>,
    },
    /// The client's IP address (`useSourceIp`).
    SourceIp,
    /// A query parameter (`httpQueryParameterName`).
    QueryParameter(Arc<str>),
}

/// Target localities with their weights in percent.
pub type LocalityWeights = Arc<[(Arc<str>, u32)]>;

/// Locality-weighted balancing and failover (Istio `LocalityLbSetting`).
///
/// Istio turns locality failover on by default for clusters with outlier
/// detection (`meshConfig.localityLbSetting.enabled` defaults to true);
/// the cluster's setting refines or disables it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityLbSetting {
    /// Whether locality-aware balancing applies at all (`enabled`,
    /// default true).
    pub enabled: bool,
    /// Traffic from a locality (`from`, may end in `*`) spread over
    /// localities with weights in percent (`to`).
    pub distribute: Arc<[(Arc<str>, LocalityWeights)]>,
    /// When a region has no healthy endpoint, fail over to this region.
    pub failover: Arc<[(Arc<str>, Arc<str>)]>,
    /// Labels whose equality with the client's decides failover priority
    /// (`failoverPriority`).
    pub failover_priority: Arc<[Arc<str>]>,
}

impl Default for LocalityLbSetting {
    /// Enabled, with no distribution or failover rules: Istio's default
    /// locality failover (same subzone, then zone, then region, then any).
    fn default() -> Self {
        Self {
            enabled: true,
            distribute: Arc::from([]),
            failover: Arc::from([]),
            failover_priority: Arc::from([]),
        }
    }
}

/// Slow start for new endpoints (Istio `WarmupConfiguration`, Envoy
/// `SlowStartConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    /// How long a new endpoint ramps up.
    pub window: Duration,
    /// The starting weight, as a percent of the full weight (default 10).
    pub min_weight_percent: u32,
    /// The ramp's curve: 1.0 is linear (default 1.0).
    pub aggression: f64,
}

/// A token bucket (Envoy `type.v3.TokenBucket`, as the local rate limit
/// filter uses it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// The bucket size.
    pub max_tokens: u32,
    /// Tokens added per fill (default 1).
    pub tokens_per_fill: u32,
    /// How often tokens are added.
    pub fill_interval: Duration,
}
