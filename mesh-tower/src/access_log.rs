//! Access logs: one event per request, with Envoy-like fields, through
//! `tracing`, so the application decides where they go and how they are
//! formatted (one JSON line each with `tracing-subscriber`'s JSON format).
//!
//! The events have the target [`TARGET`] at level `INFO`, one from the
//! client stack (`reporter = "source"`) and one from the server layer
//! (`reporter = "destination"`). Their fields follow Envoy's default
//! access log format ([`Field`]): `start_time` (RFC 3339, UTC), `method`,
//! `path`, `protocol`, `response_code`, `response_flags`,
//! `bytes_received`, `bytes_sent`, `duration_ms`, `upstream_cluster`
//! (client side), `upstream_host` (client side: the endpoint of the last
//! attempt), `route_name` (client side: the name of the matched
//! `VirtualService` route; server side: the axum route template),
//! `trace_id`, `request_id`, `peer_identity` (server side: the verified
//! client SPIFFE ID of a mutual TLS connection) and
//! `downstream_remote_address` (server side). A value that is not known
//! is `-`, as in Envoy.
//!
//! [`AccessLogConfig`] (per mesh: [`MeshBuilder::with_access_log`](crate::MeshBuilder::with_access_log))
//! selects the fields (the others are left out of the event) and the
//! share of requests logged. Sampling is decided from a hash of the
//! request's `x-request-id` when it has one, so the client and server of
//! one request (which share the id) log it or skip it together, as
//! Envoy's runtime fractions keyed by `x-request-id` do; a request without
//! an id is sampled at random.
//!
//! They cost nothing unless a subscriber enables the target: the request
//! line is captured only when `tracing::enabled!` says the event would be
//! recorded and the request is sampled. Enable with a filter such as
//! `EnvFilter::new("info,mesh_tower::access_log=info")`, or turn them off
//! with `mesh_tower::access_log=off`.

use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri, Version};
use mesh_core::model::EndpointAddress;

use crate::metrics::Record;
use crate::trace::TraceId;

/// The `tracing` target of access log events.
pub const TARGET: &str = "mesh_tower::access_log";

/// Whether access log events would be recorded now.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// A field of the access log events (`reporter` is always present).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// `start_time`: when the request started, RFC 3339 UTC.
    StartTime,
    /// `method`.
    Method,
    /// `path`: path and query.
    Path,
    /// `protocol`: the HTTP version.
    Protocol,
    /// `response_code` (0 when the connection failed).
    ResponseCode,
    /// `response_flags`: Envoy's short names.
    ResponseFlags,
    /// `bytes_received`: request body bytes, when known.
    BytesReceived,
    /// `bytes_sent`: response body bytes, when known.
    BytesSent,
    /// `duration_ms`: from the request to the response headers.
    DurationMs,
    /// `upstream_cluster` (client side).
    UpstreamCluster,
    /// `upstream_host`: the endpoint address (client side).
    UpstreamHost,
    /// `route_name`.
    RouteName,
    /// `trace_id`.
    TraceId,
    /// `request_id`: `x-request-id`.
    RequestId,
    /// `peer_identity`: the peer's verified SPIFFE ID (server side).
    PeerIdentity,
    /// `downstream_remote_address`: the client's address (server side).
    DownstreamRemoteAddress,
}

impl Field {
    /// Every field, in the order of the events.
    pub const ALL: [Field; 16] = [
        Field::StartTime,
        Field::Method,
        Field::Path,
        Field::Protocol,
        Field::ResponseCode,
        Field::ResponseFlags,
        Field::BytesReceived,
        Field::BytesSent,
        Field::DurationMs,
        Field::UpstreamCluster,
        Field::UpstreamHost,
        Field::RouteName,
        Field::TraceId,
        Field::RequestId,
        Field::PeerIdentity,
        Field::DownstreamRemoteAddress,
    ];

    /// The field's name in the event.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StartTime => "start_time",
            Self::Method => "method",
            Self::Path => "path",
            Self::Protocol => "protocol",
            Self::ResponseCode => "response_code",
            Self::ResponseFlags => "response_flags",
            Self::BytesReceived => "bytes_received",
            Self::BytesSent => "bytes_sent",
            Self::DurationMs => "duration_ms",
            Self::UpstreamCluster => "upstream_cluster",
            Self::UpstreamHost => "upstream_host",
            Self::RouteName => "route_name",
            Self::TraceId => "trace_id",
            Self::RequestId => "request_id",
            Self::PeerIdentity => "peer_identity",
            Self::DownstreamRemoteAddress => "downstream_remote_address",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::str::FromStr for Field {
    type Err = InvalidAccessLogConfig;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Field::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Field::ALL.iter().map(|f| f.as_str()).collect();
                InvalidAccessLogConfig(format!(
                    "unknown access log field {s:?} (expected one of {})",
                    known.join(", ")
                ))
            })
    }
}

/// An [`AccessLogConfig`] that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidAccessLogConfig(String);

impl fmt::Display for InvalidAccessLogConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidAccessLogConfig {}

/// Sampling granularity: one in a million.
const SAMPLING_SCALE: u64 = 1_000_000;

/// Which requests are logged and with which fields; every request and
/// every field unless set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Requests logged per [`SAMPLING_SCALE`].
    per_million: u64,
    fields: u32,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLogConfig {
    /// Every request, every field.
    pub fn new() -> Self {
        Self {
            per_million: SAMPLING_SCALE,
            fields: u32::MAX,
        }
    }

    /// Logs `ratio` of the requests (0.0 to 1.0, in steps of one in a
    /// million), chosen by their `x-request-id` (see the module docs).
    pub fn with_sampling(mut self, ratio: f64) -> Result<Self, InvalidAccessLogConfig> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(InvalidAccessLogConfig(format!(
                "access log sampling: {ratio} is not a ratio between 0.0 and 1.0"
            )));
        }
        self.per_million = (ratio * SAMPLING_SCALE as f64).round() as u64;
        Ok(self)
    }

    /// Logs only `fields` (and `reporter`).
    pub fn with_fields(mut self, fields: &[Field]) -> Self {
        self.fields = fields.iter().fold(0, |m, f| m | f.bit());
        self
    }

    /// Logs only the fields named `names` (Envoy-style names such as
    /// `upstream_host`); an unknown name is an error that names it.
    pub fn with_field_names(self, names: &[&str]) -> Result<Self, InvalidAccessLogConfig> {
        let fields = names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<Vec<Field>, _>>()?;
        Ok(self.with_fields(&fields))
    }

    /// Whether `field` is logged.
    pub fn has(&self, field: Field) -> bool {
        self.fields & field.bit() != 0
    }

    /// Whether a request with this `x-request-id` is logged (random
    /// without an id).
    pub fn samples(&self, request_id: Option<&[u8]>) -> bool {
        if self.per_million >= SAMPLING_SCALE {
            return true;
        }
        if self.per_million == 0 {
            return false;
        }
        let h = match request_id {
            // FNV-1a: stable across processes and versions.
            Some(id) => id.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }),
            None => fastrand::u64(..),
        };
        h % SAMPLING_SCALE < self.per_million
    }
}

/// What the endpoint layer tells the client's access log about the
/// attempt that produced the response: attached to the response (and
/// taken off again) only while access logs are enabled.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub(crate) host: EndpointAddress,
    pub(crate) route: Option<std::sync::Arc<str>>,
}

/// What is known of a request when it starts.
#[derive(Debug)]
pub(crate) struct Start {
    config: AccessLogConfig,
    time: SystemTime,
    method: Method,
    uri: Uri,
    version: Version,
    trace_id: Option<TraceId>,
    request_id: Option<HeaderValue>,
    /// Server side: the matched route template.
    route: Option<String>,
    /// Server side: the verified peer identity and the client's address.
    peer: Option<String>,
    remote: Option<SocketAddr>,
}

impl Start {
    /// Captures the request line, if access logs are on and `config`
    /// samples the request.
    pub(crate) fn capture<B>(
        req: &http::Request<B>,
        trace_id: Option<TraceId>,
        config: &AccessLogConfig,
    ) -> Option<Box<Self>> {
        if !enabled() {
            return None;
        }
        let request_id = req.headers().get(crate::trace::REQUEST_ID);
        if !config.samples(request_id.map(HeaderValue::as_bytes)) {
            return None;
        }
        let security = req.extensions().get::<crate::serve::ConnectionSecurity>();
        Some(Box::new(Self {
            config: *config,
            time: SystemTime::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            trace_id,
            request_id: request_id.cloned(),
            route: None,
            peer: security
                .and_then(|s| s.peer())
                .map(|p| p.as_str().to_owned()),
            remote: security.map(|s| s.remote_addr()),
        }))
    }

    /// Sets the server side's route name.
    pub(crate) fn with_route(mut self: Box<Self>, route: &str) -> Box<Self> {
        self.route = Some(route.to_owned());
        self
    }

    pub(crate) fn log(&self, r: &Record<'_>, upstream: Option<&Upstream>) {
        let on = |f: Field| self.config.has(f);
        let trace_id = self.trace_id.map(|t| t.to_string()).unwrap_or_default();
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let route = upstream
            .and_then(|u| u.route.as_deref())
            .or(self.route.as_deref())
            .unwrap_or("-");
        tracing::info!(
            target: TARGET,
            reporter = r.reporter.as_str(),
            start_time = on(Field::StartTime).then(|| display(Rfc3339(self.time))),
            method = on(Field::Method).then(|| display(&self.method)),
            path = on(Field::Path).then(|| self.uri.path_and_query().map_or("/", |p| p.as_str())),
            protocol = on(Field::Protocol).then(|| tracing::field::debug(self.version)),
            response_code = on(Field::ResponseCode).then_some(r.code),
            response_flags = on(Field::ResponseFlags).then(|| r.flag.as_str()),
            bytes_received = on(Field::BytesReceived).then_some(r.request_bytes),
            bytes_sent = on(Field::BytesSent).then_some(r.response_bytes),
            duration_ms = on(Field::DurationMs).then_some(r.duration.as_secs_f64() * 1000.0),
            upstream_cluster = on(Field::UpstreamCluster)
                .then(|| r.destination.map_or("-", |c| c.as_str())),
            upstream_host = on(Field::UpstreamHost)
                .then(|| display(upstream.map_or_else(|| "-".to_owned(), |u| u.host.to_string()))),
            route_name = on(Field::RouteName).then_some(route),
            trace_id = on(Field::TraceId).then(|| display(&trace_id)),
            request_id = on(Field::RequestId).then_some(request_id),
            peer_identity = on(Field::PeerIdentity).then(|| self.peer.as_deref().unwrap_or("-")),
            downstream_remote_address = on(Field::DownstreamRemoteAddress)
                .then(|| display(self.remote.map_or_else(|| "-".to_owned(), |a| a.to_string()))),
            "access"
        );
    }
}

/// A `SystemTime` as RFC 3339 in UTC with milliseconds.
pub(crate) struct Rfc3339(pub(crate) SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Howard Hinnant's civil_from_days.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(Rfc3339(t).to_string(), "2024-02-29T23:59:59.123Z");
        assert_eq!(Rfc3339(UNIX_EPOCH).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn sampling_follows_the_request_id_and_the_ratio() {
        let all = AccessLogConfig::new();
        let none = AccessLogConfig::new().with_sampling(0.0).unwrap();
        let half = AccessLogConfig::new().with_sampling(0.5).unwrap();
        let ids: Vec<String> = (0..1000).map(|i| format!("req-{i}")).collect();
        let n = ids
            .iter()
            .filter(|i| half.samples(Some(i.as_bytes())))
            .count();
        assert!((400..600).contains(&n), "{n}");
        for id in &ids {
            assert!(all.samples(Some(id.as_bytes())));
            assert!(!none.samples(Some(id.as_bytes())));
            // The same id, the same decision.
            assert_eq!(
                half.samples(Some(id.as_bytes())),
                half.samples(Some(id.as_bytes()))
            );
        }
        let e = AccessLogConfig::new().with_sampling(1.5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "access log sampling: 1.5 is not a ratio between 0.0 and 1.0"
        );
        assert!(AccessLogConfig::new().with_sampling(f64::NAN).is_err());
    }

    #[test]
    fn fields_are_selected_by_name() {
        let c = AccessLogConfig::new()
            .with_field_names(&["method", "upstream_host"])
            .unwrap();
        assert!(c.has(Field::Method) && c.has(Field::UpstreamHost));
        assert!(!c.has(Field::Path));
        let e = AccessLogConfig::new()
            .with_field_names(&["method", "colour"])
            .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "unknown access log field \"colour\" (expected one of start_time, method,"
            ),
            "{e}"
        );
    }
}
