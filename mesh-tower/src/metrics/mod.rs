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
//! - `istio_tcp_connections_opened_total`,
//!   `istio_tcp_connections_closed_total` (counters: the connections the
//!   client stack's endpoint pools open, `reporter="source"`, and the
//!   connections [`serve`](crate::serve::serve) accepts when its
//!   [`ServeConfig::with_metrics`](crate::serve::ServeConfig::with_metrics)
//!   is set, `reporter="destination"`);
//!
//! with the labels `reporter` (`source` for the client stack,
//! `destination` for the server layer), `source_workload`,
//! `source_principal`, `destination_workload`, `destination_principal`,
//! `destination_service`, `response_code`, `grpc_response_status`,
//! `response_flags` (Envoy's short names: `NR`, `UH`, `UF`, `UT`, `UO`,
//! `URX`, `UC`, `FI`, `RL`, or `-`), `connection_security_policy` and
//! `request_protocol` (`http` or `grpc`).
//!
//! Principals are SPIFFE IDs. The process's own principal (the
//! `source_principal` of its calls, the `destination_principal` of the
//! requests it serves) is read from its credentials at scrape time. The
//! peer's principal is known on the server side only: the verified client
//! SVID of the connection ([`ConnectionSecurity`](crate::serve::ConnectionSecurity));
//! the client side reports `destination_principal="unknown"`, because the
//! pooled connection a request went over is not visible to the layer
//! that records it (Istio learns it by metadata exchange, which a
//! proxyless client does not do). `connection_security_policy` is
//! `mutual_tls` or `none` on the server side and `unknown` on the client
//! side, as in Istio (its source reporter cannot know the server's
//! policy). Labels this crate cannot know (the peer's workload) are
//! `unknown`, Istio's value for an unknown peer.
//!
//! Peer principals are interned into at most [`PRINCIPALS`] slots per
//! process (claimed on first sight, never freed): a further principal is
//! recorded as `unknown` and counted in
//! `mesh_metrics_principals_overflow_total`, so a peer cannot grow the
//! label set without bound.
//!
//! The same atomics are exported over OTLP through the OpenTelemetry
//! metrics API ([`otlp`]), and with the `xds` feature the page carries
//! gRFC A78's xDS client metrics (module `xds`).
//!
//! # Why own atomics, and how recording stays cheap
//!
//! Recording must be lock-free and allocation-free. `prometheus-client`'s
//! `Family` looks label sets up behind a `RwLock` and its `Histogram`
//! takes a lock per observation; the OpenTelemetry SDK hashes an
//! attribute set per measurement into a locked map. Here the series are
//! resolved before the request: every cluster of the config owns a
//! [`SeriesTable`] (created with the cluster, kept for as long as its
//! name exists, as the breaker counters are), the route decision hands
//! that table to the client's response future (an `Arc` it clones in
//! place of the cluster name), and the mesh owns one table for requests
//! that were not routed and one for the server layer. A table is a fixed
//! array of [`SLOTS`] series; the remaining labels (`response_code`,
//! `grpc_response_status`, `response_flags`, `request_protocol`) are
//! packed into one `u32`, so finding the series is a scan of at most
//! [`SLOTS`] relaxed loads (a claim is one compare-and-swap), and a record
//! is a handful of relaxed `fetch_add`s. No label is built, hashed or
//! formatted per request: labels are rendered only at scrape time.
//! Cardinality is bounded by construction: destinations come from config
//! and each table holds at most [`SLOTS`] label sets; requests with a
//! further label set are counted in `mesh_metrics_series_dropped_total`.
//!
//! # Measured points
//!
//! Duration runs from the call to the response headers (client: through
//! every retry; server: until the handler returned its response). Bytes
//! are body sizes known from the headers (`content-length`) or an exact
//! body size hint, otherwise 0: the bodies are not wrapped, so streamed
//! bytes are not counted.

pub mod otlp;
mod render;
#[cfg(feature = "xds")]
pub mod xds;

pub(crate) use render::render_mesh;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use std::sync::OnceLock;

use http::HeaderMap;
use mesh_core::ClusterName;
use mesh_identity::CredentialStore;

/// The most label sets (code, gRPC status, flag, protocol) one
/// destination holds.
pub const SLOTS: usize = 16;

/// The most distinct peer principals labelled per process (4 bits of a
/// series key, 0 meaning `unknown`).
pub const PRINCIPALS: usize = 15;

/// Envoy's default histogram buckets (`HistogramSettingsImpl::defaultBuckets`,
/// the buckets Istio's standard histograms use unless configured): the
/// upper bounds, in the metric's unit.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// [`BUCKETS`] in thousandths.
const BUCKETS_MILLI: [u64; 19] = [
    500,
    1_000,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    600_000_000,
    1_800_000_000,
    3_600_000_000,
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
    /// The peer's transport security (server side; the default on the
    /// client side).
    pub peer: Peer,
}

/// The transport security of the peer of a recorded request: whether the
/// connection was mutual TLS, and the peer principal's slot in the
/// [`IstioMetrics`] interner (see [`IstioMetrics::peer`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Peer {
    pub(crate) mutual_tls: bool,
    pub(crate) principal: u8,
}

impl Peer {
    /// Whether the connection was mutual TLS.
    pub fn is_mutual_tls(&self) -> bool {
        self.mutual_tls
    }
}

/// The labels of a series besides reporter and destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) code: u16,
    pub(crate) grpc_status: Option<u8>,
    pub(crate) flag: ResponseFlag,
    pub(crate) protocol: Protocol,
    pub(crate) peer: Peer,
}

const FLAGS: [ResponseFlag; 10] = [
    ResponseFlag::None,
    ResponseFlag::NoRoute,
    ResponseFlag::NoHealthyUpstream,
    ResponseFlag::UpstreamConnectionFailure,
    ResponseFlag::UpstreamRequestTimeout,
    ResponseFlag::UpstreamOverflow,
    ResponseFlag::UpstreamRetryLimitExceeded,
    ResponseFlag::UpstreamConnectionTermination,
    ResponseFlag::FaultInjected,
    ResponseFlag::RateLimited,
];

impl Key {
    // Bit 31 marks a used slot (code 0 is a valid code: a reset).
    const USED: u32 = 1 << 31;

    fn of(r: &Record<'_>) -> Self {
        Self {
            code: r.code,
            grpc_status: r.grpc_status.filter(|&g| g <= 16),
            flag: r.flag,
            protocol: r.protocol,
            peer: r.peer,
        }
    }

    fn pack(self) -> u32 {
        let flag = FLAGS.iter().position(|&f| f == self.flag).unwrap_or(0) as u32;
        let grpc = self.grpc_status.map_or(0, |g| u32::from(g) + 1);
        Self::USED
            | u32::from(self.code)
            | (grpc << 16)
            | (flag << 21)
            | (u32::from(self.protocol == Protocol::Grpc) << 25)
            | (u32::from(self.peer.mutual_tls) << 26)
            | (u32::from(self.peer.principal & 0xf) << 27)
    }

    fn unpack(k: u32) -> Option<Self> {
        if k & Self::USED == 0 {
            return None;
        }
        let grpc = (k >> 16) & 0x1f;
        Some(Self {
            code: (k & 0xffff) as u16,
            grpc_status: (grpc != 0).then(|| (grpc - 1) as u8),
            flag: FLAGS[((k >> 21) & 0xf) as usize % FLAGS.len()],
            protocol: if k & (1 << 25) != 0 {
                Protocol::Grpc
            } else {
                Protocol::Http
            },
            peer: Peer {
                mutual_tls: k & (1 << 26) != 0,
                principal: ((k >> 27) & 0xf) as u8,
            },
        })
    }
}

/// A histogram of atomics: per-bucket counts (not cumulative), the count
/// and the sum (in thousandths of the unit, so durations keep µs).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    pub(crate) buckets: [AtomicU64; BUCKETS.len() + 1],
    pub(crate) count: AtomicU64,
    pub(crate) sum_milli: AtomicU64,
}

impl Histogram {
    /// Observes `milli` thousandths of the unit (integers only: no float
    /// on the request path).
    fn observe_milli(&self, milli: u64) {
        let i = BUCKETS_MILLI
            .iter()
            .position(|&b| milli <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_milli.fetch_add(milli, Ordering::Relaxed);
    }

    fn observe(&self, value: u64) {
        self.observe_milli(value.saturating_mul(1000));
    }

    fn observe_duration(&self, d: Duration) {
        // Microseconds are thousandths of the histogram's milliseconds.
        self.observe_milli(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
}

#[derive(Debug, Default)]
pub(crate) struct Series {
    key: AtomicU32,
    pub(crate) requests: AtomicU64,
    pub(crate) duration_ms: Histogram,
    pub(crate) request_bytes: Histogram,
    pub(crate) response_bytes: Histogram,
}

/// The series of one destination (a cluster, the requests not routed, or
/// the server side): see the module docs.
#[derive(Debug)]
pub struct SeriesTable {
    destination: Option<ClusterName>,
    slots: [Series; SLOTS],
    dropped: AtomicU64,
    tcp: TcpCounters,
}

/// `istio_tcp_connections_opened_total` and `_closed_total` of one label
/// set.
#[derive(Debug, Default)]
pub struct TcpCounters {
    opened: AtomicU64,
    closed: AtomicU64,
}

impl TcpCounters {
    /// Counts an opened connection; the guard counts it closed when
    /// dropped.
    pub(crate) fn open<T: AsRef<TcpCounters> + Clone>(owner: &T) -> TcpGuard<T> {
        owner.as_ref().opened.fetch_add(1, Ordering::Relaxed);
        TcpGuard(owner.clone())
    }

    /// Connections opened.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Connections closed.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Counts a connection closed when dropped.
#[derive(Debug)]
pub(crate) struct TcpGuard<T: AsRef<TcpCounters>>(T);

impl<T: AsRef<TcpCounters>> Drop for TcpGuard<T> {
    fn drop(&mut self) {
        self.0.as_ref().closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsRef<TcpCounters> for Arc<SeriesTable> {
    fn as_ref(&self) -> &TcpCounters {
        &self.tcp
    }
}

impl SeriesTable {
    /// An empty table for requests to `destination`.
    pub fn new(destination: Option<ClusterName>) -> Self {
        Self {
            destination,
            slots: std::array::from_fn(|_| Series::default()),
            dropped: AtomicU64::new(0),
            tcp: TcpCounters::default(),
        }
    }

    /// The cluster the table's requests went to.
    pub fn destination(&self) -> Option<&ClusterName> {
        self.destination.as_ref()
    }

    /// Records one request: lock-free, allocation-free. `r.destination`
    /// is not read (the table is the destination).
    pub fn record(&self, r: &Record<'_>) {
        let Some(series) = self.series_for(Key::of(r).pack()) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        series.requests.fetch_add(1, Ordering::Relaxed);
        series.duration_ms.observe_duration(r.duration);
        series.request_bytes.observe(r.request_bytes);
        series.response_bytes.observe(r.response_bytes);
    }

    fn series_for(&self, key: u32) -> Option<&Series> {
        // Slots are claimed in order and never freed, so a label set
        // already present is found before the first free slot.
        for s in &self.slots {
            match s.key.load(Ordering::Relaxed) {
                k if k == key => return Some(s),
                0 => match s
                    .key
                    .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => return Some(s),
                    Err(k) if k == key => return Some(s),
                    Err(_) => {}
                },
                _ => {}
            }
        }
        None
    }

    /// The connections opened to the table's destination.
    pub fn tcp(&self) -> &TcpCounters {
        &self.tcp
    }

    /// Requests not recorded: their label set found no free slot.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// `istio_requests_total` with response code `code`, over the other
    /// labels.
    pub fn requests_total(&self, code: u16) -> u64 {
        self.series()
            .filter(|(k, _)| k.code == code)
            .map(|(_, s)| s.requests.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn series(&self) -> impl Iterator<Item = (Key, &Series)> {
        self.slots
            .iter()
            .filter_map(|s| Some((Key::unpack(s.key.load(Ordering::Relaxed))?, s)))
    }
}

/// The standard metrics of one process beyond the per-cluster tables:
/// the workload name, the requests the client stack could not route, and
/// the requests the server layer served. A [`Mesh`](crate::Mesh) holds
/// one, shared by its clients and server layers.
#[derive(Debug)]
pub struct IstioMetrics {
    workload: Arc<str>,
    identity: OnceLock<Arc<CredentialStore>>,
    unrouted: Arc<SeriesTable>,
    inbound: SeriesTable,
    principals: [OnceLock<Box<str>>; PRINCIPALS],
    principals_overflow: AtomicU64,
    /// Accepted connections by `Peer` (principal slot * 2 + mutual TLS).
    inbound_tcp: [TcpCounters; 2 * (PRINCIPALS + 1)],
    /// When counting began (the start time of cumulative OTLP points).
    started: std::time::SystemTime,
}

/// A connection accepted by the server, counted in an [`IstioMetrics`]'s
/// inbound TCP counters.
#[derive(Clone, Debug)]
pub(crate) struct InboundTcp(Arc<IstioMetrics>, usize);

impl AsRef<TcpCounters> for InboundTcp {
    fn as_ref(&self) -> &TcpCounters {
        &self.0.inbound_tcp[self.1]
    }
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
            identity: OnceLock::new(),
            unrouted: Arc::new(SeriesTable::new(None)),
            inbound: SeriesTable::new(None),
            principals: std::array::from_fn(|_| OnceLock::new()),
            principals_overflow: AtomicU64::new(0),
            inbound_tcp: std::array::from_fn(|_| TcpCounters::default()),
            started: std::time::SystemTime::now(),
        }
    }

    /// When these metrics began counting (the start time of their
    /// cumulative OTLP data points).
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// Reads the process's own principal (the `source_principal` of its
    /// calls, the `destination_principal` of the requests it serves) from
    /// `credentials` at each scrape; `unknown` without. Set once: a second
    /// call is ignored. [`Mesh`](crate::Mesh) sets its credentials here.
    pub fn set_identity(&self, credentials: Arc<CredentialStore>) {
        let _ = self.identity.set(credentials);
    }

    /// The process's own principal now, if it has an SVID.
    pub fn own_principal(&self) -> Option<String> {
        let id = self.identity.get()?.id()?;
        Some(id.as_str().to_owned())
    }

    /// The [`Peer`] of a request that came over a connection with this
    /// security: the peer principal is interned on first sight (at most
    /// [`PRINCIPALS`]; then `unknown`). Lock-free and, once a principal
    /// is interned, allocation-free.
    pub fn peer(&self, security: Option<&crate::serve::ConnectionSecurity>) -> Peer {
        let Some(security) = security else {
            return Peer::default();
        };
        let mutual_tls = security.mode() == crate::serve::SecurityMode::MutualTls;
        let principal = security.peer().map_or(0, |id| self.intern(id.as_str()));
        Peer {
            mutual_tls,
            principal,
        }
    }

    fn intern(&self, id: &str) -> u8 {
        for (i, slot) in self.principals.iter().enumerate() {
            let found = match slot.get() {
                Some(p) => &**p == id,
                // First sight: claim the slot (a racing claim of the same
                // slot by another principal moves on to the next one).
                None => {
                    let _ = slot.set(Box::from(id));
                    slot.get().is_some_and(|p| &**p == id)
                }
            };
            if found {
                return (i + 1) as u8;
            }
        }
        self.principals_overflow.fetch_add(1, Ordering::Relaxed);
        0
    }

    /// The interned principal of `peer`, if any.
    pub fn peer_principal(&self, peer: Peer) -> Option<&str> {
        let i = usize::from(peer.principal).checked_sub(1)?;
        self.principals.get(i)?.get().map(|p| &**p)
    }

    /// Counts a connection accepted with `peer`'s security; the guard
    /// counts it closed.
    pub(crate) fn accepted(self: &Arc<Self>, peer: Peer) -> TcpGuard<InboundTcp> {
        let i = usize::from(peer.principal) * 2 + usize::from(peer.mutual_tls);
        TcpCounters::open(&InboundTcp(Arc::clone(self), i % self.inbound_tcp.len()))
    }

    /// Connections accepted by servers, with mutual TLS or not, over
    /// every peer principal.
    pub fn inbound_tcp(&self, mutual_tls: bool) -> (u64, u64) {
        self.inbound_tcp
            .iter()
            .skip(usize::from(mutual_tls))
            .step_by(2)
            .fold((0, 0), |(o, c), t| (o + t.opened(), c + t.closed()))
    }

    /// Records a request served by a server layer.
    pub fn record_inbound(&self, r: &Record<'_>) {
        self.inbound.record(r);
    }

    /// The workload name.
    pub fn workload(&self) -> &str {
        &self.workload
    }

    /// Client-side requests that matched no route or were answered by a
    /// local route (`destination_service="unknown"`).
    pub fn unrouted(&self) -> &Arc<SeriesTable> {
        &self.unrouted
    }

    /// Requests served by the server layers (`reporter="destination"`).
    pub fn inbound(&self) -> &SeriesTable {
        &self.inbound
    }

    /// Writes the standard metrics of this process and of `clusters`'
    /// tables in the Prometheus text exposition format (version 0.0.4).
    pub fn render<'a>(
        &self,
        clusters: impl IntoIterator<Item = &'a SeriesTable>,
        out: &mut String,
    ) {
        let mut tables: Vec<(Reporter, &SeriesTable)> = clusters
            .into_iter()
            .map(|t| (Reporter::Source, t))
            .collect();
        tables.push((Reporter::Source, &self.unrouted));
        tables.push((Reporter::Destination, &self.inbound));
        let own = self.own_principal();
        let ctx = render::Ctx {
            m: self,
            own: own.as_deref().unwrap_or("unknown"),
        };
        render::istio(&ctx, &tables, out);
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
