//! Deadline propagation: a server handling a request with a deadline
//! passes what is left of it to the calls it makes.
//!
//! gRPC sends a call's deadline as the `grpc-timeout` header (gRPC over
//! HTTP/2 spec: at most 8 digits and a unit, `H M S m u n`). [`Deadline`]
//! (a server-side layer, also part of
//! [`MeshServerLayer`](crate::MeshServerLayer)) turns an inbound
//! `grpc-timeout` into a deadline held in a task-local for as long as the
//! request's handler runs. Every outbound call made through a
//! [`MeshClient`](crate::MeshClient) from that handler is then bounded by
//! it: the [`Timeout`](crate::timeout::Timeout) layer takes the tighter of
//! the route timeout, the request's own `grpc-timeout` and the inherited
//! deadline, and rewrites `grpc-timeout` to what remains. This is
//! Finagle's deadline propagation (and what gRPC's own servers do for
//! calls made with the server's context): a call deep in a chain never
//! waits for an answer its original caller stopped waiting for.
//!
//! The deadline is task-local, so it follows the handler's future, not
//! tasks the handler spawns (those must carry it explicitly, with
//! [`scope`]).

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;

/// The `grpc-timeout` header.
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// The deadline of the request being handled by the current task, if it
/// has one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok().flatten()
}

/// Runs `fut` with `deadline` as the current deadline (the tighter of it
/// and any deadline already current).
pub fn scope<F: Future>(deadline: Option<Instant>, fut: F) -> TaskLocalFuture<Option<Instant>, F> {
    let deadline = match (deadline, current()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    DEADLINE.scope(deadline, fut)
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `d` as a `grpc-timeout` value in the finest unit whose value
/// fits 8 digits (rounded down: the callee must not wait longer than the
/// caller).
pub fn format_grpc_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let (n, unit) = if nanos.is_multiple_of(1_000_000) && nanos / 1_000_000 <= MAX {
        (nanos / 1_000_000, 'm')
    } else if nanos <= MAX {
        (nanos, 'n')
    } else if nanos / 1_000 <= MAX {
        (nanos / 1_000, 'u')
    } else if nanos / 1_000_000 <= MAX {
        (nanos / 1_000_000, 'm')
    } else if nanos / 1_000_000_000 <= MAX {
        (nanos / 1_000_000_000, 'S')
    } else if nanos / 60_000_000_000 <= MAX {
        (nanos / 60_000_000_000, 'M')
    } else {
        ((nanos / 3_600_000_000_000).min(MAX), 'H')
    };
    let buf = format!("{n}{unit}");
    // Digits and an ASCII unit: always a valid header value.
    HeaderValue::from_str(&buf).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// The `grpc-timeout` of `headers`, if valid.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| parse_grpc_timeout(v.as_bytes()))
}

/// Makes an inbound request's `grpc-timeout` the deadline of its handler;
/// see the module docs.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Applies [`Deadline`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    _priv: (),
}

impl DeadlineLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline::new(inner)
    }
}

/// The deadline an inbound request sets for its handler.
pub(crate) fn inbound<B>(req: &Request<B>) -> Option<Instant> {
    grpc_timeout(req.headers()).map(|t| Instant::now() + t)
}

impl<S, B> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Option<Instant>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let deadline = inbound(&req);
        scope(deadline, self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_round_trip() {
        for (text, d) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("250m", Duration::from_millis(250)),
            ("7u", Duration::from_micros(7)),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ] {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(d), "{text}");
        }
        for bad in ["", "m", "123456789m", "1x", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250m");
        assert_eq!(format_grpc_timeout(Duration::from_micros(1500)), "1500000n");
        assert_eq!(format_grpc_timeout(Duration::from_secs(30)), "30000m");
        assert_eq!(
            format_grpc_timeout(Duration::from_nanos(123_456_789)),
            "123456u"
        );
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(format_grpc_timeout(Duration::ZERO), "0m");
    }

    #[tokio::test(start_paused = true)]
    async fn the_tighter_deadline_wins_in_nested_scopes() {
        assert_eq!(current(), None);
        let now = Instant::now();
        let outer = now + Duration::from_secs(1);
        let inner = now + Duration::from_secs(5);
        scope(Some(outer), async move {
            assert_eq!(current(), Some(outer));
            scope(Some(inner), async move {
                assert_eq!(current(), Some(outer), "a looser deadline does not extend");
            })
            .await;
        })
        .await;
    }
}
