//! What is retried, and when: the classification of one attempt against a
//! route's [`RetryPolicy`], Envoy's backoff, and the server's pushback.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, StatusCode};
use mesh_core::model::{Backoff, RetryConditions, RetryOn, RetryPolicy};

use crate::error::{BoxError, Elapsed, Error, TimeoutReason};

/// What one attempt produced, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response: its status and, for gRPC, its `grpc-status`.
    Response { status: u16, grpc: Option<i32> },
    /// The connection could not be established.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM: the server did not process the request.
    RefusedStream,
    /// The stream or connection failed after the request was sent.
    Reset,
    /// The per-try timeout elapsed.
    PerTryTimeout,
    /// Anything else (no endpoints, an open circuit, a bad request): never
    /// retried.
    Final,
}

impl Outcome {
    /// Classifies a failed attempt.
    pub(crate) fn of_error(err: &BoxError) -> Self {
        if let Some(e) = err.downcast_ref::<Elapsed>() {
            return if e.reason() == TimeoutReason::PerTry {
                Self::PerTryTimeout
            } else {
                Self::Final
            };
        }
        if refused_stream(err.as_ref()) {
            return Self::RefusedStream;
        }
        match err.downcast_ref::<Error>() {
            Some(e) if e.is_connect() => Self::ConnectFailure,
            Some(e) if e.is_upstream() => Self::Reset,
            Some(_) => Self::Final,
            // A bare transport error from an inner service used
            // standalone: hyper's own errors are resets or refusals.
            None if err.downcast_ref::<hyper::Error>().is_some() => Self::Reset,
            None => Self::Final,
        }
    }

    /// Classifies a response by its status and the `grpc-status` found in
    /// `grpc_headers` (the headers of a Trailers-Only response, or the
    /// trailers).
    pub(crate) fn of_response(status: StatusCode, grpc_headers: Option<&HeaderMap>) -> Self {
        Self::Response {
            status: status.as_u16(),
            grpc: grpc_headers.and_then(grpc_status),
        }
    }

    /// Whether the request never reached the server's application, so even
    /// a non-idempotent request can be sent again.
    fn never_processed(self) -> bool {
        matches!(self, Self::ConnectFailure | Self::RefusedStream)
    }
}

/// The `grpc-status` in `headers`, if any.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Whether an error's source chain holds an HTTP/2 REFUSED_STREAM.
fn refused_stream(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cur = e.source();
    }
    false
}

/// Whether `retry_on` covers `outcome`, with Envoy's meaning of each
/// condition (Envoy router filter, `x-envoy-retry-on` and
/// `x-envoy-retry-grpc-on`):
///
/// - `5xx`: any 5xx, a reset, a connect failure, a refused stream or a
///   per-try timeout ("does not respond at all");
/// - `gateway-error`: 502, 503, 504, a reset, a connect failure or a
///   per-try timeout;
/// - `reset`: a reset, a connect failure or a per-try timeout;
/// - `connect-failure`, `refused-stream`: just those;
/// - `retriable-4xx`: 409; `retriable-status-codes`: the listed statuses;
/// - the gRPC ones: the matching `grpc-status` (1, 4, 13, 8, 14).
pub(crate) fn covers(retry_on: &RetryOn, outcome: Outcome) -> bool {
    use RetryConditions as C;
    let c = retry_on.conditions;
    match outcome {
        Outcome::Final => false,
        Outcome::ConnectFailure => {
            c.contains(C::FIVE_XX)
                || c.contains(C::GATEWAY_ERROR)
                || c.contains(C::RESET)
                || c.contains(C::CONNECT_FAILURE)
        }
        Outcome::RefusedStream => c.contains(C::FIVE_XX) || c.contains(C::REFUSED_STREAM),
        Outcome::Reset | Outcome::PerTryTimeout => {
            c.contains(C::FIVE_XX) || c.contains(C::GATEWAY_ERROR) || c.contains(C::RESET)
        }
        Outcome::Response { status, grpc } => {
            let grpc_hit = match grpc {
                Some(1) => c.contains(C::CANCELLED),
                Some(4) => c.contains(C::DEADLINE_EXCEEDED),
                Some(8) => c.contains(C::RESOURCE_EXHAUSTED),
                Some(13) => c.contains(C::INTERNAL),
                Some(14) => c.contains(C::UNAVAILABLE),
                _ => false,
            };
            grpc_hit
                || (c.contains(C::FIVE_XX) && (500..600).contains(&status))
                || (c.contains(C::GATEWAY_ERROR) && matches!(status, 502..=504))
                || (c.contains(C::RETRIABLE_4XX) && status == 409)
                || (c.contains(C::RETRIABLE_STATUS_CODES)
                    && retry_on.status_codes.contains(&status))
        }
    }
}

/// Whether the policy has any gRPC condition, so a response's trailers
/// matter.
pub(crate) fn has_grpc_conditions(retry_on: &RetryOn) -> bool {
    use RetryConditions as C;
    [
        C::CANCELLED,
        C::DEADLINE_EXCEEDED,
        C::INTERNAL,
        C::RESOURCE_EXHAUSTED,
        C::UNAVAILABLE,
    ]
    .iter()
    .any(|k| retry_on.conditions.contains(*k))
}

/// Whether a request's method is idempotent (RFC 9110 §9.2.2: GET, HEAD,
/// OPTIONS, TRACE, PUT, DELETE).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether `policy` allows retrying a request with these traits after
/// `outcome`.
///
/// Non-idempotent requests (POST, PATCH, ...) are sent again only when the
/// server never saw them (connect failure, refused stream), unless the
/// policy sets `retry_non_idempotent`: a POST that reached the server may
/// have had its effect (RFC 9110 §9.2.2; Istio documents retries as safe
/// for idempotent requests, and Linkerd's `isRetryable` is meant for
/// idempotent routes only). gRPC calls are POSTs whose retry policy the
/// service owner configures per method (gRFC A6), so they are not
/// restricted.
pub(crate) fn allows(policy: &RetryPolicy, retry_any_method: bool, outcome: Outcome) -> bool {
    covers(&policy.retry_on, outcome)
        && (retry_any_method || policy.retry_non_idempotent || outcome.never_processed())
}

/// The delay before retry number `retry` (1 for the first retry), Envoy's
/// fully jittered exponential backoff: uniformly random in
/// `[0, (2^retry - 1) * base]`, capped at `max` (Envoy router filter,
/// "x-envoy-max-retries" / "Retry back-off": with the default 25 ms base
/// the first retry waits 0-24 ms, the second 0-74 ms, ...).
pub(crate) fn backoff(b: &Backoff, retry: u32) -> Duration {
    let factor = (1u64 << retry.clamp(1, 32)) - 1;
    let base = b.base.as_nanos() as u64;
    let upper = base.saturating_mul(factor).min(b.max.as_nanos() as u64);
    if upper == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(0..upper))
}

/// What the server asked for about retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Nothing: use the backoff.
    None,
    /// Wait exactly this long before the retry.
    After(Duration),
    /// Do not retry (gRFC A6: a negative or unparseable
    /// `grpc-retry-pushback-ms`).
    Stop,
}

/// Reads `grpc-retry-pushback-ms` (gRFC A6 "Pushback") and `retry-after`
/// (RFC 9110 §10.2.3: seconds or an HTTP date) from response headers or
/// trailers.
pub(crate) fn pushback(headers: &HeaderMap) -> Pushback {
    if let Some(v) = headers.get("grpc-retry-pushback-ms") {
        return match std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
        {
            Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64)),
            _ => Pushback::Stop,
        };
    }
    let Some(v) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
    else {
        return Pushback::None;
    };
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Pushback::After(Duration::from_secs(secs));
    }
    match httpdate::parse_http_date(v) {
        // A date in the past means "now". SystemTime: the date is wall
        // clock by definition.
        Ok(at) => Pushback::After(at.duration_since(SystemTime::now()).unwrap_or_default()),
        // An invalid value is ignored (RFC 9110 leaves it undefined).
        Err(_) => Pushback::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn on(names: &[&str], codes: &[u16]) -> RetryOn {
        let mut c = RetryConditions::empty();
        for n in names {
            c = c.union(RetryConditions::from_name(n).unwrap());
        }
        RetryOn {
            conditions: c,
            status_codes: Arc::from(codes),
        }
    }

    fn status(s: u16) -> Outcome {
        Outcome::Response {
            status: s,
            grpc: None,
        }
    }

    fn grpc(code: i32) -> Outcome {
        Outcome::Response {
            status: 200,
            grpc: Some(code),
        }
    }

    #[test]
    fn conditions_cover_what_envoy_retries() {
        let five = on(&["5xx"], &[]);
        for o in [
            status(500),
            status(503),
            status(599),
            Outcome::Reset,
            Outcome::ConnectFailure,
            Outcome::RefusedStream,
            Outcome::PerTryTimeout,
        ] {
            assert!(covers(&five, o), "5xx covers {o:?}");
        }
        assert!(!covers(&five, status(409)));
        assert!(!covers(&five, Outcome::Final));

        let gw = on(&["gateway-error"], &[]);
        assert!(covers(&gw, status(502)) && covers(&gw, status(504)));
        assert!(!covers(&gw, status(500)));
        assert!(!covers(&gw, Outcome::RefusedStream));

        let cf = on(&["connect-failure"], &[]);
        assert!(covers(&cf, Outcome::ConnectFailure));
        assert!(!covers(&cf, Outcome::Reset) && !covers(&cf, status(503)));

        assert!(covers(
            &on(&["refused-stream"], &[]),
            Outcome::RefusedStream
        ));
        assert!(covers(&on(&["reset"], &[]), Outcome::Reset));
        assert!(covers(&on(&["retriable-4xx"], &[]), status(409)));
        assert!(!covers(&on(&["retriable-4xx"], &[]), status(404)));
        let codes = on(&["retriable-status-codes"], &[503, 429]);
        assert!(covers(&codes, status(429)) && !covers(&codes, status(500)));

        for (name, code) in [
            ("cancelled", 1),
            ("deadline-exceeded", 4),
            ("resource-exhausted", 8),
            ("internal", 13),
            ("unavailable", 14),
        ] {
            let p = on(&[name], &[]);
            assert!(covers(&p, grpc(code)), "{name}");
            assert!(!covers(&p, grpc(2)), "{name} does not cover UNKNOWN");
            assert!(has_grpc_conditions(&p));
        }
        assert!(!has_grpc_conditions(&five));
    }

    #[test]
    fn non_idempotent_requests_retry_only_what_the_server_never_saw() {
        let mut p = RetryPolicy::istio_default();
        p.retry_on = on(&["5xx"], &[]);
        assert!(!allows(&p, false, status(503)));
        assert!(!allows(&p, false, Outcome::Reset));
        assert!(allows(&p, false, Outcome::ConnectFailure));
        assert!(allows(&p, false, Outcome::RefusedStream));
        assert!(allows(&p, true, status(503)));
        p.retry_non_idempotent = true;
        assert!(allows(&p, false, status(503)));
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST) && !idempotent(&Method::PATCH));
    }

    #[test]
    fn backoff_is_envoys_full_jitter_with_a_cap() {
        // Envoy's documented default: 25 ms base, 250 ms max.
        let b = Backoff::default();
        assert_eq!(
            (b.base, b.max),
            (Duration::from_millis(25), Duration::from_millis(250))
        );
        for _ in 0..1000 {
            assert!(backoff(&b, 1) < Duration::from_millis(25));
            assert!(backoff(&b, 2) < Duration::from_millis(75));
            assert!(backoff(&b, 3) < Duration::from_millis(175));
            assert!(backoff(&b, 10) < Duration::from_millis(250));
        }
        let spread: std::collections::HashSet<_> = (0..100).map(|_| backoff(&b, 3)).collect();
        assert!(spread.len() > 50, "jittered, not fixed");
    }

    #[test]
    fn pushback_reads_grpc_and_http_forms() {
        let h = |k: &'static str, v: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(k, http::HeaderValue::from_static(v));
            m
        };
        assert_eq!(pushback(&HeaderMap::new()), Pushback::None);
        assert_eq!(
            pushback(&h("grpc-retry-pushback-ms", "150")),
            Pushback::After(Duration::from_millis(150))
        );
        assert_eq!(pushback(&h("grpc-retry-pushback-ms", "-1")), Pushback::Stop);
        assert_eq!(
            pushback(&h("grpc-retry-pushback-ms", "soon")),
            Pushback::Stop
        );
        assert_eq!(
            pushback(&h("retry-after", "2")),
            Pushback::After(Duration::from_secs(2))
        );
        assert_eq!(
            pushback(&h("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")),
            Pushback::After(Duration::ZERO),
            "a date in the past: retry now"
        );
        assert_eq!(pushback(&h("retry-after", "whenever")), Pushback::None);
    }
}
