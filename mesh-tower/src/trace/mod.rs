//! Trace context propagation: a request can be followed across services.
//!
//! Every service on a request's path must pass the trace context on, or
//! the trace breaks there. A sidecar does this for the application; a
//! proxyless mesh must do it in-process, without the handler passing
//! anything by hand:
//!
//! - the server layer ([`MeshServer`](crate::server::MeshServer)) extracts
//!   the caller's context from the inbound headers, starts the server
//!   span as its child (or a new trace when there is none, or it is
//!   malformed) and holds it in a task-local for as long as the handler
//!   runs, as [`deadline`](crate::deadline) does with the deadline;
//! - every call the handler makes through a [`MeshClient`](crate::MeshClient)
//!   is a child of that span (the *logical call*), and every attempt of
//!   that call (each retry, each hedged copy) gets a span of its own, a
//!   child of the call, whose id is what the callee sees as its parent.
//!
//! The context is task-local, so it follows the handler's future, not
//! tasks the handler spawns. A spawned task keeps the trace (and the
//! deadline) with one line:
//!
//! ```no_run
//! # async fn work() {}
//! tokio::spawn(mesh_tower::trace::inherit(async move { work().await }));
//! ```
//!
//! # Formats
//!
//! [`Propagators`] selects the formats, for extraction and injection
//! alike:
//!
//! - W3C Trace Context (`traceparent`, `tracestate`): the
//!   OpenTelemetry default;
//! - W3C Baggage (`baggage`), carried opaquely;
//! - B3 multi-header (`x-b3-traceid`, `x-b3-spanid`,
//!   `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`): what Istio's
//!   Envoy sends with its default Zipkin tracer;
//! - B3 single header (`b3`).
//!
//! Extraction tries W3C first, then B3 single, then B3 multi, and takes
//! the first valid one. `x-request-id` (Envoy's request id) is always
//! propagated: kept when valid, generated when absent or invalid.
//!
//! A malformed header is ignored, never an error, and never forwarded: a
//! malformed `traceparent` starts a new trace (W3C Trace Context §3.2.2.2,
//! "the vendor MUST ... create a new trace"), and `tracestate` is dropped
//! with it (§3.3.1: tracestate is only valid with a valid traceparent).
//! Only values this module parsed and re-encoded are sent on, so nothing
//! a caller wrote is echoed unvalidated.
//!
//! # Cost, and when a trace starts
//!
//! Propagation costs nothing for a request with no trace: the server layer
//! starts a trace only for a request that carries a valid trace context,
//! or for [`Sampling`]'s share of the others (Istio's
//! `randomSamplingPercentage`); a [`MeshClient`](crate::MeshClient)
//! injects trace headers only when the call continues a trace (the
//! task's, or trace headers the application put on the request) or its
//! own [`Sampling`] starts one. The default is [`Sampling::never`]: no
//! trace header is written, no id generated and no task-local context
//! set for an untraced request, so the client's hot path keeps its
//! allocation count (the `e2e_loop` bench prints it). A trace that is not
//! sampled by this process is not started at all (rather than propagated
//! with the sampled flag off), so a callee with a sampler of its own
//! decides for itself; a trace that arrives unsampled is propagated with
//! the flag off, as W3C and B3 require.
//!
//! `x-request-id` travels with the trace: a traced call carries the
//! inbound request's id (or a new one); an untraced call carries the
//! application's header as it is. The server layer keeps a valid id or
//! generates one for every request.
//!
//! # Spans and export
//!
//! With an [`OtlpExporter`] on the mesh
//! ([`MeshBuilder::with_span_exporter`](crate::MeshBuilder::with_span_exporter)),
//! the server span, the logical call and each attempt of a *sampled*
//! trace are recorded with OpenTelemetry's HTTP and RPC semantic
//! conventions plus mesh attributes, and exported in batches over OTLP
//! (see [`OtlpExporter`]). The application's `tracing` spans join the
//! same trace through [`otel::layer`]. Unsampled and untraced requests
//! record nothing.
//!
//! # Types
//!
//! The ids are this crate's own ([`TraceId`], [`SpanId`], [`SpanContext`])
//! rather than `opentelemetry`'s: `opentelemetry::trace::TraceState` is a
//! `VecDeque` of owned strings, parsed and allocated per request, while
//! here `tracestate` and `baggage` are checked and carried as the
//! `HeaderValue` they arrived in (a reference-counted clone). They convert
//! to OpenTelemetry's trivially (a `u128`, a `u64` and a flag) once spans
//! are exported.

mod codec;
mod export;
pub mod otel;
pub(crate) mod span;
pub(crate) mod telemetry;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::task::futures::TaskLocalFuture;

pub use codec::{
    B3, B3_FLAGS, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_SPAN_ID, B3_TRACE_ID, BAGGAGE, TRACEPARENT,
    TRACESTATE,
};

pub use export::{
    DEFAULT_BATCH, DEFAULT_DELAY, DEFAULT_ENDPOINT, DEFAULT_QUEUE, DEFAULT_TIMEOUT, ExportStats,
    OtlpExporter, OtlpExporterBuilder,
};

/// The request id header (Envoy and Istio's `x-request-id`).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A 128-bit trace id; never zero (W3C: all zeros is invalid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

impl TraceId {
    /// The id, if `n` is non-zero.
    pub fn new(n: u128) -> Option<Self> {
        (n != 0).then_some(Self(n))
    }

    /// A random id.
    pub fn random() -> Self {
        Self(fastrand::u128(1..))
    }

    /// The id as a number.
    pub fn get(self) -> u128 {
        self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A 64-bit span id; never zero (W3C: all zeros is invalid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(u64);

impl SpanId {
    /// The id, if `n` is non-zero.
    pub fn new(n: u64) -> Option<Self> {
        (n != 0).then_some(Self(n))
    }

    /// A random id.
    pub fn random() -> Self {
        Self(fastrand::u64(1..))
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One span's place in a trace: its trace, its id, its parent's id and
/// whether the trace is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// The span.
    pub span_id: SpanId,
    /// The parent span (`None` for the root of a trace, and for a
    /// context extracted from headers, whose parent the caller knows).
    pub parent_span_id: Option<SpanId>,
    /// The sampling decision (W3C `sampled` flag, B3 `x-b3-sampled: 1`
    /// or debug).
    pub sampled: bool,
}

impl SpanContext {
    /// The root span of a new, sampled trace (the caller applied its
    /// [`Sampling`]).
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent_span_id: None,
            sampled: true,
        }
    }

    /// A new span, a child of this one, in the same trace.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
        }
    }
}

/// The trace context of the request a task is handling: its span and
/// what is propagated with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The current span (for a server, the server span).
    pub span: SpanContext,
    /// The W3C `tracestate` received with the parent, validated.
    pub tracestate: Option<HeaderValue>,
    /// The W3C `baggage` received, validated.
    pub baggage: Option<HeaderValue>,
    /// The request's `x-request-id`.
    pub request_id: Option<HeaderValue>,
}

impl TraceContext {
    /// A context with `span` and nothing else to propagate.
    pub fn new(span: SpanContext) -> Self {
        Self {
            span,
            tracestate: None,
            baggage: None,
            request_id: None,
        }
    }
}

/// Which trace header formats are extracted and injected; see the module
/// docs.
///
/// The default is W3C Trace Context and Baggage (OpenTelemetry's default
/// `OTEL_PROPAGATORS=tracecontext,baggage`) plus B3 multi-header (what
/// Istio's Envoy sends with its default Zipkin tracer), so that a service
/// joins traces from either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propagators {
    tracecontext: bool,
    baggage: bool,
    b3_single: bool,
    b3_multi: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Self::none()
            .with_tracecontext()
            .with_baggage()
            .with_b3_multi()
    }
}

impl Propagators {
    /// No format: only `x-request-id` is propagated.
    pub const fn none() -> Self {
        Self {
            tracecontext: false,
            baggage: false,
            b3_single: false,
            b3_multi: false,
        }
    }

    /// Every format.
    pub const fn all() -> Self {
        Self::none()
            .with_tracecontext()
            .with_baggage()
            .with_b3_single()
            .with_b3_multi()
    }

    /// Adds W3C Trace Context (`traceparent`, `tracestate`).
    pub const fn with_tracecontext(mut self) -> Self {
        self.tracecontext = true;
        self
    }

    /// Adds W3C Baggage (`baggage`).
    pub const fn with_baggage(mut self) -> Self {
        self.baggage = true;
        self
    }

    /// Adds the B3 single header (`b3`).
    pub const fn with_b3_single(mut self) -> Self {
        self.b3_single = true;
        self
    }

    /// Adds the B3 multi-header format (`x-b3-*`).
    pub const fn with_b3_multi(mut self) -> Self {
        self.b3_multi = true;
        self
    }

    /// Whether W3C Trace Context is on.
    pub const fn tracecontext(&self) -> bool {
        self.tracecontext
    }

    /// Whether W3C Baggage is on.
    pub const fn baggage(&self) -> bool {
        self.baggage
    }

    /// Whether the B3 single header is on.
    pub const fn b3_single(&self) -> bool {
        self.b3_single
    }

    /// Whether B3 multi-header is on.
    pub const fn b3_multi(&self) -> bool {
        self.b3_multi
    }
}

/// Which share of the requests without a trace context start a new
/// trace (parent-based sampling with a ratio: a request that carries a
/// trace always follows its parent's decision). Istio's
/// `randomSamplingPercentage` (Telemetry API `tracing[].randomSamplingPercentage`,
/// default 1% in Istio's mesh config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    // Out of 1 << 32; `u64` so that 100% is representable.
    per_2_32: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::never()
    }
}

impl Sampling {
    const ONE: u64 = 1 << 32;

    /// Never start a trace (only continue the ones that arrive).
    pub const fn never() -> Self {
        Self { per_2_32: 0 }
    }

    /// Start a trace for every request without one.
    pub const fn always() -> Self {
        Self {
            per_2_32: Self::ONE,
        }
    }

    /// Start a trace for `percent`% of the requests without one (clamped
    /// to 0–100; not a number is 0).
    pub fn percentage(percent: f64) -> Self {
        let ratio = if percent.is_nan() {
            0.0
        } else {
            percent.clamp(0.0, 100.0) / 100.0
        };
        // In range by the clamp above.
        Self {
            per_2_32: (ratio * Self::ONE as f64) as u64,
        }
    }

    /// Whether sampling can ever start a trace.
    pub const fn is_never(&self) -> bool {
        self.per_2_32 == 0
    }

    /// Draws the decision for one request.
    pub fn sample(&self) -> bool {
        match self.per_2_32 {
            0 => false,
            Self::ONE => true,
            p => u64::from(fastrand::u32(..)) < p,
        }
    }
}

tokio::task_local! {
    static CURRENT: Option<TraceContext>;
}

/// The trace context of the request being handled by the current task,
/// if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// The current span, without cloning the rest of the context.
pub fn current_span() -> Option<SpanContext> {
    CURRENT
        .try_with(|c| c.as_ref().map(|c| c.span))
        .ok()
        .flatten()
}

/// Runs `fut` with `cx` as the current trace context.
pub fn scope<F: Future>(
    cx: Option<TraceContext>,
    fut: F,
) -> TaskLocalFuture<Option<TraceContext>, F> {
    CURRENT.scope(cx, fut)
}

/// Runs `fut` with the current task's trace context and deadline: the one
/// line a handler adds when it spawns a task whose calls belong to the
/// request, `tokio::spawn(mesh_tower::trace::inherit(fut))`.
pub fn inherit<F: Future>(
    fut: F,
) -> TaskLocalFuture<Option<TraceContext>, TaskLocalFuture<Option<tokio::time::Instant>, F>> {
    scope(
        current(),
        crate::deadline::scope(crate::deadline::current(), fut),
    )
}

/// The context a server extracts from an inbound request: its span is a
/// child of the caller's, or the root of a new trace when the request has
/// no valid context and `sampling` samples it; `None` otherwise (an
/// untraced request: nothing is allocated). `request_id` is the request's
/// id, kept in the context so the handler's calls carry it.
pub fn server_context(
    headers: &HeaderMap,
    propagators: Propagators,
    sampling: Sampling,
    request_id: &HeaderValue,
) -> Option<TraceContext> {
    let mut cx = match codec::extract(headers, propagators) {
        Some(remote) => {
            let mut cx = remote;
            cx.span = cx.span.child();
            cx
        }
        None if sampling.sample() => TraceContext::new(SpanContext::new_root()),
        None => return None,
    };
    cx.request_id = Some(request_id.clone());
    Some(cx)
}

/// Prepares an outbound request of a logical call: takes the parent from
/// the task's context (or else from trace headers already on the
/// request), starts the call's span as its child (or, when there is no
/// parent and `sampling` samples the call, a new trace), removes every
/// trace header the request carried and writes the call's context in the
/// `propagators`' formats. Returns the call's span, or `None` when the
/// call is not traced: the request is then left as it is, except that
/// malformed trace headers on it are removed.
///
/// Each attempt then rewrites the span id with [`attempt`].
pub fn outbound(
    headers: &mut HeaderMap,
    propagators: Propagators,
    sampling: Sampling,
) -> Option<SpanContext> {
    let parent = match CURRENT.try_with(|c| c.clone()).ok().flatten() {
        // Inside an application `tracing` span of this trace, that span
        // is the parent (`tracing-opentelemetry`'s current context).
        Some(mut cx) => {
            if let Some(id) = otel::current_span_in(cx.span.trace_id) {
                cx.span.span_id = id;
            }
            Some(cx)
        }
        None => codec::extract(headers, propagators),
    };
    if parent.is_none() && !sampling.sample() {
        // Whatever trace headers are there did not parse: never forwarded.
        if codec::any_present(headers) {
            codec::clear(headers, propagators);
        }
        return None;
    }
    let request_id = match parent.as_ref().and_then(|p| p.request_id.clone()) {
        Some(id) => id,
        None => match headers.get(REQUEST_ID) {
            Some(v) if valid_request_id(v) => v.clone(),
            _ => new_request_id(),
        },
    };
    let cx = match parent {
        Some(p) => TraceContext {
            span: p.span.child(),
            tracestate: p.tracestate,
            baggage: p.baggage,
            request_id: Some(request_id),
        },
        None => TraceContext {
            request_id: Some(request_id),
            ..TraceContext::new(SpanContext::new_root())
        },
    };
    codec::clear(headers, propagators);
    codec::inject(headers, &cx, propagators);
    Some(cx.span)
}

/// Gives one attempt of a call prepared by [`outbound`] a span of its own,
/// a child of the call's: rewrites the span id of every trace header
/// present (the B3 parent becomes the call's span). Headers without a
/// trace context are left alone (three header lookups, nothing else).
/// Returns the attempt's span.
pub fn attempt(headers: &mut HeaderMap) -> Option<SpanContext> {
    codec::attempt(headers)
}

/// Whether `v` is a request id this mesh keeps: 1 to 128 characters of
/// `[A-Za-z0-9-_.:]` (a UUID, or the ids other meshes generate).
pub fn valid_request_id(v: &HeaderValue) -> bool {
    (1..=128).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A request id in UUID v4 form, from a thread-local generator.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    // Version 4, variant 10xx.
    n = (n & !(0xf << 76)) | (0x4 << 76);
    n = (n & !(0x3 << 62)) | (0x2 << 62);
    let mut buf = [0u8; 36];
    let mut i = 0;
    for (k, slot) in buf.iter_mut().enumerate() {
        if matches!(k, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            *slot = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
            i += 1;
        }
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
