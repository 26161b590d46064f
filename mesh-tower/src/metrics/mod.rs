//! Istio's standard request metrics, recorded in-process by the client
//! stack and the server layer, exposed in Prometheus text format.
//!
//! The names, types, units, labels and buckets are Istio's ("Istio
//! Standard Metrics", istio.io/latest/docs/reference/config/metrics/), so
//! existing dashboards and alerts work unchanged:
//!
//! - `istio_requests_total` (counter);
//! - `istio_request_duration_milliseconds` (histogram);
//! - `istio_request_bytes`, `istio_response_bytes` (histograms);
//!
//! with the labels `reporter` (`source` for the client stack,
//! `destination` for the server layer), `source_workload`,
//! `destination_workload`, `destination_service`, `response_code`,
//! `grpc_response_status`, `response_flags` (Envoy's short names: `NR`,
//! `UH`, `UF`, `UT`, `UO`, `URX`, `UC`, `FI`, `RL`, or `-`) and
//! `request_protocol` (`http` or `grpc`). Labels this crate cannot know
//! yet (the peer's workload and principal) are `unknown`, Istio's value
//! for an unknown peer.
//!
//! # Why own atomics
//!
//! Recording must be lock-free and allocation-free. `prometheus-client`'s
//! `Family` looks label sets up behind a `RwLock` and its `Histogram`
//! takes a lock per observation; the OpenTelemetry SDK hashes an
//! attribute set per measurement into a locked map. Here a series is a
//! slot in a fixed table (open addressing, claimed once with a
//! `OnceLock`), every count an `AtomicU64`: recording is a hash, a probe
//! and a few relaxed `fetch_add`s. Cardinality is bounded: destinations
//! come from config (cluster names), codes and flags from small sets, and
//! the table holds at most [`MAX_SERIES`] series (further label sets are
//! counted in `mesh_metrics_series_dropped_total`). A series is created
//! on its first request; creating it clones a cluster name (an `Arc`) and
//! allocates nothing.
//!
//! # Measured points
//!
//! Duration runs from the call to the response headers (client: through
//! every retry; server: until the handler returned its response). Bytes
//! are body sizes known from the headers (`content-length`) or an exact
//! body size hint, otherwise 0: the bodies are not wrapped, so streamed
//! bytes are not counted.

mod render;

pub(crate) use render::render_mesh;
#[cfg(test)]
mod tests;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderMap;
use mesh_core::ClusterName;

/// The most series one [`IstioMetrics`] holds.
pub const MAX_SERIES: usize = 512;

/// Envoy's default histogram buckets (`HistogramSettingsImpl::defaultBuckets`,
/// the buckets Istio's standard histograms use unless configured): the
/// upper bounds, in the metric's unit.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Which side recorded a request (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client stack (`source`).
    Source,
    /// The server layer (`destination`).
    Destination,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

/// Why the mesh answered as it did (Envoy's response flags, the
/// `response_flags` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// None (`-`).
    None,
    /// No route matched (`NR`).
    NoRoute,
    /// No healthy endpoint (`UH`).
    NoHealthyUpstream,
    /// Connecting to the endpoint failed (`UF`).
    UpstreamConnectionFailure,
    /// The request timed out (`UT`).
    UpstreamRequestTimeout,
    /// A circuit breaker limit overflowed (`UO`).
    UpstreamOverflow,
    /// Retries were exhausted by the retry budget (`URX`).
    UpstreamRetryLimitExceeded,
    /// The upstream connection or stream failed (`UC`).
    UpstreamConnectionTermination,
    /// An injected fault aborted the request (`FI`).
    FaultInjected,
    /// A local rate limit refused the request (`RL`).
    RateLimited,
}

impl ResponseFlag {
    /// Envoy's short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::NoRoute => "NR",
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamOverflow => "UO",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::UpstreamConnectionTermination => "UC",
            Self::FaultInjected => "FI",
            Self::RateLimited => "RL",
        }
    }

    /// The flag of a mesh error.
    pub fn of_error(e: &crate::Error) -> Self {
        if e.is_no_route() {
            Self::NoRoute
        } else if e.is_no_endpoints() {
            Self::NoHealthyUpstream
        } else if e.is_connect() {
            Self::UpstreamConnectionFailure
        } else if e.is_timeout() {
            Self::UpstreamRequestTimeout
        } else if e.is_circuit_open() {
            Self::UpstreamOverflow
        } else if e.is_budget_exhausted() {
            Self::UpstreamRetryLimitExceeded
        } else if e.is_upstream() {
            Self::UpstreamConnectionTermination
        } else {
            Self::None
        }
    }
}

/// `request_protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `http`.
    Http,
    /// `grpc`.
    Grpc,
}

impl Protocol {
    /// The protocol of a request with these headers.
    pub fn of(headers: &HeaderMap) -> Self {
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc { Self::Grpc } else { Self::Http }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// One request's outcome, as recorded.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Who records.
    pub reporter: Reporter,
    /// The cluster the request went to (`None`: not routed, or unknown on
    /// the server side).
    pub destination: Option<&'a ClusterName>,
    /// The HTTP status (or the status of the mesh's local reply).
    pub code: u16,
    /// The `grpc-status` seen with the response headers, if any.
    pub grpc_status: Option<u8>,
    /// The response flag.
    pub flag: ResponseFlag,
    /// The request protocol.
    pub protocol: Protocol,
    /// From the call to the response headers.
    pub duration: Duration,
    /// Request body bytes, when known.
    pub request_bytes: u64,
    /// Response body bytes, when known.
    pub response_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    reporter: Reporter,
    destination: Option<ClusterName>,
    code: u16,
    grpc_status: Option<u8>,
    flag: ResponseFlag,
    protocol: Protocol,
}

impl Key {
    fn matches(&self, r: &Record<'_>) -> bool {
        self.reporter == r.reporter
            && self.code == r.code
            && self.grpc_status == r.grpc_status
            && self.flag == r.flag
            && self.protocol == r.protocol
            && self.destination.as_ref() == r.destination
    }
}

/// A histogram of atomics: per-bucket counts (not cumulative), the count
/// and the sum (in thousandths of the unit, so durations keep µs).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_milli: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Saturating float-to-int: a value past u64 is clamped.
        self.sum_milli
            .fetch_add((value * 1000.0) as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Series {
    key: OnceLock<Key>,
    requests: AtomicU64,
    duration_ms: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// The standard metrics of one process; see the module docs. A
/// [`Mesh`](crate::Mesh) holds one, shared by its clients and server
/// layers.
#[derive(Debug)]
pub struct IstioMetrics {
    workload: Arc<str>,
    series: Box<[Series]>,
    dropped: AtomicU64,
}

impl IstioMetrics {
    /// Metrics of the workload `workload` (the `source_workload` of its
    /// calls and the `destination_workload` of the requests it serves;
    /// empty means `unknown`).
    pub fn new(workload: &str) -> Self {
        let workload = if workload.is_empty() {
            "unknown"
        } else {
            workload
        };
        Self {
            workload: Arc::from(workload),
            series: (0..MAX_SERIES).map(|_| Series::default()).collect(),
            dropped: AtomicU64::new(0),
        }
    }

    /// The workload name.
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Records one request: lock-free, allocation-free.
    pub fn record(&self, r: &Record<'_>) {
        let Some(series) = self.series_for(r) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        series.requests.fetch_add(1, Ordering::Relaxed);
        series
            .duration_ms
            .observe(r.duration.as_secs_f64() * 1000.0);
        series.request_bytes.observe(r.request_bytes as f64);
        series.response_bytes.observe(r.response_bytes as f64);
    }

    /// Requests recorded in series the table had no room for.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn series_for(&self, r: &Record<'_>) -> Option<&Series> {
        let mut h = rustc_hash::FxHasher::default();
        r.reporter.hash(&mut h);
        r.destination.map(ClusterName::as_str).hash(&mut h);
        r.code.hash(&mut h);
        r.grpc_status.hash(&mut h);
        r.flag.hash(&mut h);
        r.protocol.hash(&mut h);
        let start = h.finish() as usize;
        let n = self.series.len();
        // Slots are claimed in probe order and never freed, so a label set
        // already present is found before the first free slot.
        (0..n).map(|i| &self.series[(start + i) % n]).find(|s| {
            s.key
                .get_or_init(|| Key {
                    reporter: r.reporter,
                    destination: r.destination.cloned(),
                    code: r.code,
                    grpc_status: r.grpc_status,
                    flag: r.flag,
                    protocol: r.protocol,
                })
                .matches(r)
        })
    }

    /// `istio_requests_total` of the series matching `filter`'s labels,
    /// summed (for tests and the admin endpoint).
    pub fn requests_total(&self, reporter: Reporter, code: u16) -> u64 {
        self.series
            .iter()
            .filter_map(|s| Some((s.key.get()?, s)))
            .filter(|(k, _)| k.reporter == reporter && k.code == code)
            .map(|(_, s)| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// Writes every series in the Prometheus text exposition format
    /// (version 0.0.4).
    pub fn render(&self, out: &mut String) {
        render::istio(self, out);
    }
}

/// The `grpc-status` of response headers (a trailers-only response).
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<u8>().ok().filter(|&c| c <= 16)
}

/// A body size from `content-length` or an exact size hint.
pub(crate) fn body_bytes(headers: &HeaderMap, hint: &http_body::SizeHint) -> u64 {
    hint.exact()
        .or_else(|| {
            headers
                .get(http::header::CONTENT_LENGTH)?
                .to_str()
                .ok()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
