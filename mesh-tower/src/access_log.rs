//! Access logs: one event per request, with Envoy-like fields, through
//! `tracing`, so the application decides where they go and how they are
//! formatted (one JSON line each with `tracing-subscriber`'s JSON format).
//!
//! The events have the target [`TARGET`] at level `INFO`, one from the
//! client stack (`reporter = "source"`) and one from the server layer
//! (`reporter = "destination"`). Their fields follow Envoy's default
//! access log format: `start_time` (RFC 3339, UTC), `method`, `path`,
//! `protocol`, `response_code`, `response_flags`, `bytes_received`,
//! `bytes_sent`, `duration_ms`, `upstream_cluster` (client side),
//! `trace_id`, `request_id`.
//!
//! They cost nothing unless a subscriber enables the target: the request
//! line is captured only when `tracing::enabled!` says the event would be
//! recorded. Enable with a filter such as
//! `EnvFilter::new("info,mesh_tower::access_log=info")`, or turn them off
//! with `mesh_tower::access_log=off`.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Uri, Version};

use crate::metrics::Record;
use crate::trace::TraceId;

/// The `tracing` target of access log events.
pub const TARGET: &str = "mesh_tower::access_log";

/// Whether access log events would be recorded now.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// What is known of a request when it starts.
#[derive(Debug)]
pub(crate) struct Start {
    time: SystemTime,
    method: Method,
    uri: Uri,
    version: Version,
    trace_id: Option<TraceId>,
    request_id: Option<http::HeaderValue>,
}

impl Start {
    /// Captures the request line, if access logs are on.
    pub(crate) fn capture<B>(
        req: &http::Request<B>,
        trace_id: Option<TraceId>,
    ) -> Option<Box<Self>> {
        enabled().then(|| {
            Box::new(Self {
                time: SystemTime::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                trace_id,
                request_id: req.headers().get(crate::trace::REQUEST_ID).cloned(),
            })
        })
    }

    pub(crate) fn log(&self, r: &Record<'_>) {
        let trace_id = self.trace_id.map(|t| t.to_string()).unwrap_or_default();
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info!(
            target: TARGET,
            reporter = r.reporter.as_str(),
            start_time = %Rfc3339(self.time),
            method = %self.method,
            path = self.uri.path_and_query().map_or("/", |p| p.as_str()),
            protocol = ?self.version,
            response_code = r.code,
            response_flags = r.flag.as_str(),
            bytes_received = r.request_bytes,
            bytes_sent = r.response_bytes,
            duration_ms = r.duration.as_secs_f64() * 1000.0,
            upstream_cluster = r.destination.map_or("-", |c| c.as_str()),
            trace_id = %trace_id,
            request_id,
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
}
