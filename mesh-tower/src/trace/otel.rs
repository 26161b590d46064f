//! The `tracing` integration: the application's `tracing` spans and
//! events inside a handler join the mesh's trace, as children of the
//! server span.
//!
//! With an [`OtlpExporter`] on the mesh, the server layer makes the
//! server span of a sampled request the current OpenTelemetry context
//! while the handler runs (and the client makes a call's span current
//! while its attempts run). `tracing-opentelemetry` starts every
//! `tracing` span that has no `tracing` parent as a child of the current
//! OpenTelemetry context, so the one line of setup is the subscriber
//! layer:
//!
//! ```no_run
//! # fn f(exporter: &mesh_tower::trace::OtlpExporter) {
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//! tracing_subscriber::registry()
//!     .with(mesh_tower::trace::otel::layer(exporter))
//!     .init();
//! # }
//! ```
//!
//! Its spans go through the same queue and exporter as the mesh's, and
//! are recorded only inside a sampled trace (the provider's sampler is
//! parent-based and never starts a trace of its own). Events become span
//! events of the span they are in. A call the handler makes through a
//! [`MeshClient`](crate::MeshClient) while inside one of its `tracing`
//! spans is that span's child. A task the handler spawns keeps the trace
//! with [`inherit`](super::inherit); its `tracing` spans join when the
//! future is also `.instrument(tracing::Span::current())`-ed, as usual
//! with `tracing`.
//!
//! Keep `h2`, `hyper`, `tonic` and `tower` below `info` in the filter of
//! this layer, so that the exporter's own gRPC traffic makes no spans
//! (DEPENDENCIES.md, trap 8).

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

use super::{OtlpExporter, SpanContext, SpanId, TraceId};

/// The `tracing-opentelemetry` layer that exports the application's
/// `tracing` spans through `exporter`, in the mesh's traces.
pub fn layer<S>(exporter: &OtlpExporter) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(tracer(exporter))
}

/// An OpenTelemetry tracer whose spans go through `exporter`, for
/// applications that build their `tracing-opentelemetry` layer themselves.
pub fn tracer(exporter: &OtlpExporter) -> SdkTracer {
    exporter.tracer_provider().tracer("mesh-tower")
}

/// The OpenTelemetry context whose current span is `span`: what the
/// server layer attaches while the handler runs.
pub fn context(span: &SpanContext) -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(super::span::otel_context(span, false))
}

/// The span id of the current OpenTelemetry span when it is a valid span
/// of `trace` (an application `tracing` span inside the request), without
/// cloning the context.
pub(crate) fn current_span_in(trace: TraceId) -> Option<SpanId> {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        (sc.is_valid() && u128::from_be_bytes(sc.trace_id().to_bytes()) == trace.get())
            .then(|| SpanId::new(u64::from_be_bytes(sc.span_id().to_bytes())))
            .flatten()
    })
}
