//! Span export: a bounded queue, one owned batching task, and any
//! OpenTelemetry SDK [`SpanExporter`](opentelemetry_sdk::trace::SpanExporter)
//! behind it (OTLP over gRPC by default).
//!
//! # Why not the SDK's `BatchSpanProcessor`
//!
//! The layers build `opentelemetry_sdk` [`SpanData`] for the spans they
//! record (sampled traces only) and hand them to [`OtlpExporter::submit`],
//! which is one `try_send` on a bounded channel: it never waits, and a
//! span that finds the queue full is dropped and counted
//! ([`ExportStats::dropped`]), as the OpenTelemetry SDK specification asks
//! of a batch processor. One tokio task owns the receiving end; it sends
//! a batch when `max_batch` spans are waiting or every `delay`, whichever
//! comes first, and awaits the exporter (with a timeout) before the next.
//!
//! The SDK's own `BatchSpanProcessor` does the same on a dedicated OS
//! thread that drives the exporter with a blocking executor, and its
//! `force_flush`/`shutdown` block the caller (DEPENDENCIES.md, trap 8):
//! the tonic exporter wants the application's tokio runtime, and the mesh
//! wants every task owned by a handle and a flush it can `await`. So the
//! batching is ours and the encoding and transport are
//! `opentelemetry-otlp`'s.
//!
//! The task ends when the last handle (every [`OtlpExporter`] clone, and
//! every tracer provider made by [`OtlpExporter::tracer_provider`]) is
//! dropped, after exporting what is queued. [`OtlpExporter::flush`]
//! exports everything submitted before it and returns when the exporter
//! answered.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use tokio::sync::{mpsc, oneshot};

/// The OpenTelemetry SDK's default batch queue size (`OTEL_BSP_MAX_QUEUE_SIZE`).
pub const DEFAULT_QUEUE: usize = 2048;
/// The SDK's default batch size (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const DEFAULT_BATCH: usize = 512;
/// The SDK's default delay between two exports (`OTEL_BSP_SCHEDULE_DELAY`).
pub const DEFAULT_DELAY: Duration = Duration::from_secs(5);
/// The SDK's default export timeout is 30 s (`OTEL_BSP_EXPORT_TIMEOUT`);
/// 10 s here, the OTLP exporter's own default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP collector's default gRPC endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// The instrumentation scope of the spans the mesh records.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("mesh-tower")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Counters of an [`OtlpExporter`].
#[derive(Debug, Default)]
pub struct ExportStats {
    submitted: AtomicU64,
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

impl ExportStats {
    /// Spans handed to the exporter.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Spans dropped because the queue was full (or the task had ended).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Spans the exporter accepted.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Spans in batches the exporter failed (or timed out) to send.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// How an [`OtlpExporter`] batches; the SDK's defaults unless set.
#[derive(Clone, Debug)]
#[must_use]
pub struct OtlpExporterBuilder {
    endpoint: String,
    service_name: Cow<'static, str>,
    queue: usize,
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

impl Default for OtlpExporterBuilder {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            service_name: Cow::Borrowed("unknown_service"),
            queue: DEFAULT_QUEUE,
            batch: DEFAULT_BATCH,
            delay: DEFAULT_DELAY,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl OtlpExporterBuilder {
    /// The collector's OTLP/gRPC endpoint ([`DEFAULT_ENDPOINT`] unless set).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// The `service.name` resource attribute of every span (OpenTelemetry's
    /// `unknown_service` unless set). Istio's sidecars report
    /// `<workload>.<namespace>`.
    pub fn with_service_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.service_name = name.into();
        self
    }

    /// The queue's capacity in spans (at least 1): spans finished while it
    /// is full are dropped and counted.
    pub fn with_queue(mut self, spans: usize) -> Self {
        self.queue = spans.max(1);
        self
    }

    /// The most spans per export call (at least 1).
    pub fn with_batch(mut self, spans: usize) -> Self {
        self.batch = spans.max(1);
        self
    }

    /// The longest a finished span waits before it is exported.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// How long one export call may take before it counts as failed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// An exporter sending OTLP over gRPC (tonic) to the endpoint.
    ///
    /// # Errors
    ///
    /// When `opentelemetry-otlp` rejects the endpoint.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn build(self) -> Result<OtlpExporter, opentelemetry_otlp::ExporterBuildError> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(self.endpoint.clone())
            .with_timeout(self.timeout)
            .build()?;
        Ok(self.build_with(exporter))
    }

    /// An exporter handing batches to `exporter` (any OpenTelemetry SDK
    /// span exporter: OTLP over HTTP, stdout, in-memory for tests).
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn build_with<E: SpanExporter + 'static>(self, mut exporter: E) -> OtlpExporter {
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let (spans, rx) = mpsc::channel(self.queue);
        let (control, control_rx) = mpsc::channel(4);
        let stats = Arc::new(ExportStats::default());
        tokio::spawn(run(
            exporter,
            rx,
            control_rx,
            Batching {
                batch: self.batch,
                delay: self.delay,
                timeout: self.timeout,
            },
            Arc::clone(&stats),
        ));
        OtlpExporter {
            shared: Arc::new(Shared {
                spans,
                control,
                stats,
                resource,
                scope: scope(),
            }),
        }
    }
}

/// Where the mesh's spans go: a cheap, cloneable handle to a bounded
/// queue and the task that exports it (see the module docs).
///
/// ```no_run
/// # async fn f(store: mesh_core::ConfigStore) -> Result<(), Box<dyn std::error::Error>> {
/// use mesh_tower::trace::OtlpExporter;
/// let exporter = OtlpExporter::builder()
///     .with_endpoint("http://otel-collector:4317")
///     .with_service_name("reviews.default")
///     .build()?;
/// let mesh = mesh_tower::Mesh::builder(store)
///     .with_span_exporter(exporter.clone())
///     .build();
/// // ... serve ...
/// exporter.flush().await;
/// # let _ = mesh; Ok(()) }
/// ```
#[derive(Clone)]
pub struct OtlpExporter {
    shared: Arc<Shared>,
}

struct Shared {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::Sender<oneshot::Sender<()>>,
    stats: Arc<ExportStats>,
    resource: Resource,
    scope: InstrumentationScope,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// A builder with the SDK's batching defaults.
    pub fn builder() -> OtlpExporterBuilder {
        OtlpExporterBuilder::default()
    }

    /// Queues a finished span; never waits. A full queue drops it.
    pub fn submit(&self, span: SpanData) {
        let stats = &self.shared.stats;
        stats.submitted.fetch_add(1, Ordering::Relaxed);
        if self.shared.spans.try_send(span).is_err() {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Exports every span submitted before this call; returns when the
    /// exporter has answered (or at once if the task has ended).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.control.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The counters.
    pub fn stats(&self) -> &ExportStats {
        &self.shared.stats
    }

    /// The resource (`service.name` and the SDK's attributes) the spans
    /// are exported with.
    pub fn resource(&self) -> &Resource {
        &self.shared.resource
    }

    pub(crate) fn instrumentation_scope(&self) -> &InstrumentationScope {
        &self.shared.scope
    }

    /// An OpenTelemetry tracer provider whose spans go through this
    /// exporter's queue: what `tracing-opentelemetry` needs so that the
    /// application's `tracing` spans join the mesh's traces
    /// ([`otel`](crate::trace::otel) has the one line of setup).
    ///
    /// Its sampler is parent-based and never starts a trace: a span is
    /// recorded when its parent is sampled (inside a request the mesh
    /// traces), not otherwise, so the mesh's sampling decides for the
    /// application's spans too.
    pub fn tracer_provider(&self) -> SdkTracerProvider {
        use opentelemetry_sdk::trace::Sampler;
        SdkTracerProvider::builder()
            .with_resource(self.shared.resource.clone())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .with_span_processor(Forward(self.clone()))
            .build()
    }
}

/// Hands the SDK's finished spans to the queue.
#[derive(Debug)]
struct Forward(OtlpExporter);

impl SpanProcessor for Forward {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.submit(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Blocking here would stall a runtime thread; `OtlpExporter::flush`
        // is the async flush.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

struct Batching {
    batch: usize,
    delay: Duration,
    timeout: Duration,
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    mut control: mpsc::Receiver<oneshot::Sender<()>>,
    cfg: Batching,
    stats: Arc<ExportStats>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(cfg.batch);
    let mut tick = tokio::time::interval(cfg.delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let export = |batch: &mut Vec<SpanData>| {
        let spans = std::mem::replace(batch, Vec::with_capacity(cfg.batch));
        let n = spans.len() as u64;
        let fut = tokio::time::timeout(cfg.timeout, exporter.export(spans));
        let stats = &stats;
        async move {
            if n == 0 {
                return;
            }
            match fut.await {
                Ok(Ok(())) => stats.exported.fetch_add(n, Ordering::Relaxed),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, spans = n, "span export failed");
                    stats.failed.fetch_add(n, Ordering::Relaxed)
                }
                Err(_) => {
                    tracing::debug!(spans = n, "span export timed out");
                    stats.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    };
    loop {
        tokio::select! {
            biased;
            Some(reply) = control.recv() => {
                while let Ok(span) = rx.try_recv() {
                    batch.push(span);
                    if batch.len() >= cfg.batch {
                        export(&mut batch).await;
                    }
                }
                export(&mut batch).await;
                let _ = reply.send(());
            }
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() >= cfg.batch {
                        export(&mut batch).await;
                    }
                }
                None => {
                    export(&mut batch).await;
                    break;
                }
            },
            _ = tick.tick() => export(&mut batch).await,
        }
    }
    if let Err(e) = exporter.shutdown() {
        tracing::debug!(error = %e, "span exporter shutdown failed");
    }
}
