//! What the telemetry layers of issue 6 (trace propagation, spans, Istio
//! metrics, access logs) cost per request, and which metrics library the
//! hot path should record with.
//!
//! - `telemetry/e2e/*`: one request through a mesh client and a mesh
//!   server over loopback HTTP/2 (both on one current-thread runtime, so
//!   the number is the CPU cost of the pair, not a cross-thread wake-up),
//!   in five variants: `off` (the same client and server without the
//!   telemetry: no trace formats, no span exporter, no server metrics, no
//!   access log), `sampled_0pct` (everything on, nothing sampled),
//!   `sampled_1pct`, `sampled_100pct` (the client samples; the server
//!   follows the caller's decision and records its span), and
//!   `sampled_1pct_access_log` (1% plus an access log event per request
//!   on each side, formatted by `tracing-subscriber` into `io::sink`).
//!   The client's Istio metrics cannot be switched off (it always records
//!   into the route's table: a handful of relaxed atomics, priced by
//!   `telemetry/record/ours`), so `off` includes them. Before criterion
//!   runs, the variants are timed in interleaved rounds (fairer on a busy
//!   machine than one after the other) and the median ns per request and
//!   the difference to `off` are printed, with the heap allocations per
//!   request (client and server: they share the process).
//! - `telemetry/server_layer/*`: the server layer alone, in process, over a
//!   service that answers at once: the same variants, the server sampling
//!   requests that arrive without a trace (no I/O, so differences of a
//!   few ns show).
//! - `telemetry/record/*` and `telemetry/record_2threads/*`: one counter
//!   increment plus one histogram observation with Istio's label set, for
//!   our atomics (`SeriesTable::record`, which observes three histograms:
//!   duration, request and response bytes), `prometheus-client` 0.25
//!   (`Family` of `Counter` and of `Histogram`) and the OpenTelemetry SDK
//!   0.33 (`Counter::add` and `Histogram::record` with an attribute
//!   slice), on one thread and with two threads recording into the same
//!   series; allocations per record printed first.
//!
//! Every time is the CPU time of the thread that runs the bench
//! ([`ThreadCpu`]), not wall time, so that a run on a loaded machine
//! still counts the work done.
//!
//! `cargo bench -p mesh-benches --bench telemetry` (under a minute).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::alloc::System;
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use mesh_core::ClusterName;
use mesh_tower::access_log::TARGET;
use mesh_tower::metrics::{IstioMetrics, Protocol, Record, Reporter, ResponseFlag, SeriesTable};
use mesh_tower::trace::{OtlpExporter, Propagators, Sampling};
use mesh_tower::{Mesh, MeshClient, MeshServerLayer, Node};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service, ServiceExt};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Criterion measures the CPU time of the thread that runs the bench
/// rather than wall time: on a loaded machine (other builds on both
/// cores) wall time mostly measures how long the thread waited to run.
/// The e2e client and server run on that one thread, so its CPU time is
/// the pair's whole cost (the kernel's loopback work included).
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

type C = Criterion<ThreadCpu>;

/// An exporter that drops every batch: what is measured is the request
/// path and the batching, not the OTLP encoding.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

/// Turns the access log target on and off in the process's one
/// subscriber (installed for every variant, as an application has one):
/// reloading rebuilds `tracing`'s interest cache, so with the target off
/// its `enabled!` check is a cached `never`.
struct AccessLogSwitch(reload::Handle<Targets, tracing_subscriber::Registry>);

impl AccessLogSwitch {
    /// The process's subscriber, installed on first use.
    fn get() -> &'static Self {
        static SWITCH: std::sync::OnceLock<AccessLogSwitch> = std::sync::OnceLock::new();
        SWITCH.get_or_init(|| {
            let (filter, handle) = reload::Layer::new(Targets::new());
            let subscriber = tracing_subscriber::registry()
                .with(filter)
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink));
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            Self(handle)
        })
    }

    fn set(&self, on: bool) {
        let targets = if on {
            Targets::new().with_target(TARGET, tracing::Level::INFO)
        } else {
            Targets::new()
        };
        self.0.reload(targets).expect("subscriber alive");
    }
}

// === e2e: mesh client -> loopback HTTP/2 -> mesh server ===

/// Serves `layer` over a service that answers `ok` at once, HTTP/2 with
/// prior knowledge, on the current runtime.
async fn serve(layer: MeshServerLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = layer.layer(tower::service_fn(|_req: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
            Bytes::from_static(b"ok"),
        ))))
    }));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1024)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// One end-to-end variant: a mesh that is both the client and the server.
struct E2e {
    name: &'static str,
    client: MeshClient,
    access_log: bool,
    _mesh: Mesh,
}

impl E2e {
    async fn new(
        name: &'static str,
        telemetry: bool,
        sampling: Sampling,
        access_log: bool,
        exporter: &OtlpExporter,
    ) -> Self {
        let store = mesh_core::ConfigStore::new();
        let builder =
            Mesh::builder(store.clone()).with_node(Node::default().with_workload("bench"));
        let mesh = if telemetry {
            builder.with_span_exporter(exporter.clone()).build()
        } else {
            builder.build()
        };
        let layer = if telemetry {
            // The server follows the caller's sampling decision.
            mesh.server_layer()
        } else {
            MeshServerLayer::new().with_propagators(Propagators::none())
        };
        let addr = serve(layer).await;
        let version = mesh_examples::publish_yaml(
            &store,
            &mesh_examples::yaml::service_entry("bench", 8080, "HTTP2", &[(addr, "v1")]),
        );
        mesh.applied(version).await;
        let client = if telemetry {
            mesh.client().with_sampling(sampling)
        } else {
            mesh.client().with_propagators(Propagators::none())
        };
        let v = Self {
            name,
            client,
            access_log,
            _mesh: mesh,
        };
        assert!(v.request().await, "{name}: the request succeeds");
        v
    }

    async fn request(&self) -> bool {
        let req = Request::get("http://bench:8080/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        match self.client.clone().oneshot(req).await {
            Ok(res) => res.status() == 200 && res.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }

    /// The CPU time of `n` requests.
    async fn run(&self, n: u64) -> Duration {
        let start = thread_cpu();
        for _ in 0..n {
            black_box(self.request().await);
        }
        thread_cpu().saturating_sub(start)
    }
}

fn e2e(c: &mut C) {
    let switch = AccessLogSwitch::get();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exporter = rt.block_on(async {
        OtlpExporter::builder()
            .with_delay(Duration::from_millis(50))
            .build_with(Discard)
    });
    let variants = rt.block_on(async {
        vec![
            E2e::new("off", false, Sampling::never(), false, &exporter).await,
            E2e::new("sampled_0pct", true, Sampling::never(), false, &exporter).await,
            E2e::new(
                "sampled_1pct",
                true,
                Sampling::percentage(1.0),
                false,
                &exporter,
            )
            .await,
            E2e::new("sampled_100pct", true, Sampling::always(), false, &exporter).await,
            E2e::new(
                "sampled_1pct_access_log",
                true,
                Sampling::percentage(1.0),
                true,
                &exporter,
            )
            .await,
        ]
    });

    // Allocations per request, after a warm-up.
    for v in &variants {
        switch.set(v.access_log);
        rt.block_on(v.run(200));
        let region = Region::new(GLOBAL);
        rt.block_on(v.run(2000));
        let allocs = region.change().allocations;
        println!(
            "telemetry/e2e/{}: {:.2} heap allocations per request (client + server)",
            v.name,
            allocs as f64 / 2000.0
        );
    }

    // Interleaved rounds: every variant runs in every round, so a burst of
    // load from elsewhere hits them alike.
    const ROUNDS: usize = 15;
    const PER_ROUND: u64 = 400;
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..ROUNDS {
        for (i, v) in variants.iter().enumerate() {
            switch.set(v.access_log);
            let t = rt.block_on(v.run(PER_ROUND));
            ns[i].push(t.as_nanos() as f64 / PER_ROUND as f64);
        }
    }
    let medians: Vec<f64> = ns.iter_mut().map(|s| median(s)).collect();
    for (v, m) in variants.iter().zip(&medians) {
        println!(
            "telemetry/e2e/{}: median {:.0} ns of CPU per request over {ROUNDS} interleaved rounds, {:+.0} ns against off",
            v.name,
            m,
            m - medians[0]
        );
    }

    let mut g = c.benchmark_group("telemetry/e2e");
    for v in &variants {
        switch.set(v.access_log);
        g.bench_function(v.name, |b| b.iter_custom(|iters| rt.block_on(v.run(iters))));
    }
    g.finish();
    switch.set(false);
    let stats = exporter.stats();
    println!(
        "telemetry/e2e exporter: {} spans submitted, {} dropped (queue full), {} exported",
        stats.submitted(),
        stats.dropped(),
        stats.exported()
    );
}

fn median(s: &mut [f64]) -> f64 {
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

// === the server layer alone ===

type Body = Empty<Bytes>;

fn answer() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Request<Body>| std::future::ready(Ok(Response::new(Body::new()))))
}

/// A request from a caller outside the mesh: an id, no trace.
fn inbound() -> Request<Body> {
    Request::get("http://reviews:9080/reviews/1")
        .header("x-request-id", "0f3c1a2e-8b7d-4c6e-9a5f-1b2c3d4e5f60")
        .header("user-agent", "bench")
        .body(Body::new())
        .unwrap()
}

/// Calls `svc` once; its future is ready at the first poll.
fn once<S: Service<Request<Body>>>(svc: &mut S, req: Request<Body>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = std::pin::pin!(svc.call(req));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => {
            black_box(r.is_ok());
        }
        Poll::Pending => unreachable!("the inner service answers at once"),
    }
}

fn server_layer(c: &mut C) {
    // The exporter's task runs on this runtime's worker.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let switch = AccessLogSwitch::get();
    let exporter = OtlpExporter::builder()
        .with_delay(Duration::from_millis(50))
        .build_with(Discard);
    let metrics = Arc::new(IstioMetrics::new("reviews"));
    let telemetry = |sampling| {
        MeshServerLayer::new()
            .with_metrics(Arc::clone(&metrics))
            .with_span_exporter(exporter.clone())
            .with_sampling(sampling)
    };
    let stacks: Vec<(&str, MeshServerLayer, bool)> = vec![
        (
            "off",
            MeshServerLayer::new().with_propagators(Propagators::none()),
            false,
        ),
        ("sampled_0pct", telemetry(Sampling::never()), false),
        ("sampled_1pct", telemetry(Sampling::percentage(1.0)), false),
        ("sampled_100pct", telemetry(Sampling::always()), false),
        (
            "sampled_1pct_access_log",
            telemetry(Sampling::percentage(1.0)),
            true,
        ),
    ];
    for (name, layer, log) in &stacks {
        switch.set(*log);
        let mut svc = layer.layer(answer());
        mesh_benches::print_allocs(GLOBAL, &format!("telemetry/server_layer/{name}"), || {
            once(&mut svc, inbound())
        });
    }
    let mut g = c.benchmark_group("telemetry/server_layer");
    g.bench_function("bare", |b| {
        let mut svc = answer();
        b.iter_batched(inbound, |r| once(&mut svc, r), BatchSize::SmallInput)
    });
    for (name, layer, log) in &stacks {
        switch.set(*log);
        g.bench_function(*name, |b| {
            let mut svc = layer.layer(answer());
            b.iter_batched(inbound, |r| once(&mut svc, r), BatchSize::SmallInput)
        });
    }
    g.finish();
    switch.set(false);
}

// === the metrics libraries ===

/// Envoy's default buckets, which Istio's histograms use.
const BUCKETS: [f64; 19] = mesh_tower::metrics::BUCKETS;

const DESTINATIONS: usize = 50;

fn destination(i: usize) -> String {
    format!("svc{i}.default.svc.cluster.local")
}

/// The response code of the `i`th request: one in ten fails.
fn code(i: usize) -> u16 {
    if i.is_multiple_of(10) { 503 } else { 200 }
}

/// A way to record one request.
trait Recorder: Sync {
    /// Records the `i`th request: its code and destination follow from `i`.
    fn record(&self, i: usize);
}

struct Ours(Vec<SeriesTable>);

impl Ours {
    fn new() -> Self {
        Self(
            (0..DESTINATIONS)
                .map(|i| {
                    SeriesTable::new(Some(ClusterName::new(format!(
                        "outbound|9080||{}",
                        destination(i)
                    ))))
                })
                .collect(),
        )
    }
}

impl Recorder for Ours {
    fn record(&self, i: usize) {
        self.0[i % DESTINATIONS].record(&Record {
            reporter: Reporter::Source,
            destination: None,
            code: code(i),
            grpc_status: None,
            flag: ResponseFlag::None,
            protocol: Protocol::Http,
            duration: Duration::from_micros(1200),
            request_bytes: 0,
            response_bytes: 512,
            peer: Default::default(),
        });
    }
}

/// Istio's label set for `prometheus-client`, in its cheapest form: the
/// per-process and per-destination strings are `&'static str` resolved
/// once, so building the key allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct IstioLabels {
    reporter: &'static str,
    source_workload: &'static str,
    source_principal: &'static str,
    destination_service: &'static str,
    destination_workload: &'static str,
    destination_principal: &'static str,
    response_code: u16,
    grpc_response_status: &'static str,
    response_flags: &'static str,
    connection_security_policy: &'static str,
    request_protocol: &'static str,
}

type HistogramFamily = prometheus_client::metrics::family::Family<
    IstioLabels,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

struct PrometheusClient {
    requests: prometheus_client::metrics::family::Family<
        IstioLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    duration: HistogramFamily,
    destinations: Vec<&'static str>,
}

impl PrometheusClient {
    fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let requests = prometheus_client::metrics::family::Family::default();
        let duration = HistogramFamily::new_with_constructor(|| {
            prometheus_client::metrics::histogram::Histogram::new(BUCKETS)
        });
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Duration",
            duration.clone(),
        );
        Self {
            requests,
            duration,
            destinations: (0..DESTINATIONS)
                .map(|i| &*Box::leak(destination(i).into_boxed_str()))
                .collect(),
        }
    }
}

impl Recorder for PrometheusClient {
    fn record(&self, i: usize) {
        let labels = IstioLabels {
            reporter: "source",
            source_workload: "productpage",
            source_principal: "spiffe://cluster.local/ns/default/sa/productpage",
            destination_service: self.destinations[i % DESTINATIONS],
            destination_workload: "unknown",
            destination_principal: "unknown",
            response_code: code(i),
            grpc_response_status: "",
            response_flags: "-",
            connection_security_policy: "unknown",
            request_protocol: "http",
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(1.2);
    }
}

/// A metrics exporter that drops everything, behind a reader whose
/// interval never elapses during the bench (the SDK records only into
/// instruments that have a reader).
struct DiscardMetrics;

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for DiscardMetrics {
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        black_box(metrics);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        opentelemetry_sdk::metrics::Temporality::Cumulative
    }
}

struct OtelSdk {
    _provider: opentelemetry_sdk::metrics::SdkMeterProvider,
    requests: opentelemetry::metrics::Counter<u64>,
    duration: opentelemetry::metrics::Histogram<f64>,
    destinations: Vec<opentelemetry::KeyValue>,
}

impl OtelSdk {
    fn new() -> Self {
        use opentelemetry::metrics::MeterProvider;
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(DiscardMetrics)
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build();
        let meter = provider.meter("bench");
        Self {
            requests: meter.u64_counter("istio_requests_total").build(),
            duration: meter
                .f64_histogram("istio_request_duration_milliseconds")
                .with_unit("ms")
                .with_boundaries(BUCKETS.to_vec())
                .build(),
            destinations: (0..DESTINATIONS)
                .map(|i| {
                    opentelemetry::KeyValue::new(
                        "destination_service",
                        Arc::<str>::from(destination(i)),
                    )
                })
                .collect(),
            _provider: provider,
        }
    }
}

impl Recorder for OtelSdk {
    fn record(&self, i: usize) {
        use opentelemetry::KeyValue;
        let attributes = [
            KeyValue::new("reporter", "source"),
            KeyValue::new("source_workload", "productpage"),
            KeyValue::new(
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/productpage",
            ),
            self.destinations[i % DESTINATIONS].clone(),
            KeyValue::new("destination_workload", "unknown"),
            KeyValue::new("destination_principal", "unknown"),
            KeyValue::new("response_code", i64::from(code(i))),
            KeyValue::new("grpc_response_status", ""),
            KeyValue::new("response_flags", "-"),
            KeyValue::new("connection_security_policy", "unknown"),
            KeyValue::new("request_protocol", "http"),
        ];
        self.requests.add(1, &attributes);
        self.duration.record(1.2, &attributes);
    }
}

fn record(c: &mut C) {
    let recorders: Vec<(&str, Box<dyn Recorder>)> = vec![
        ("ours", Box::new(Ours::new())),
        ("prometheus_client", Box::new(PrometheusClient::new())),
        ("otel_sdk", Box::new(OtelSdk::new())),
    ];
    for (name, r) in &recorders {
        // Every series exists before counting: steady state.
        for i in 0..2 * DESTINATIONS * 10 {
            r.record(i);
        }
        let mut i = 0;
        mesh_benches::print_allocs(GLOBAL, &format!("telemetry/record/{name}"), || {
            i += 1;
            r.record(i);
        });
    }
    let mut g = c.benchmark_group("telemetry/record");
    for (name, r) in &recorders {
        let mut i = 0usize;
        g.bench_function(*name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                r.record(black_box(i));
            })
        });
    }
    g.finish();
    // Two threads recording the same series at once; the time is the CPU
    // time per record of both threads, averaged (time a thread spends
    // parked on a lock is not counted: the numbers favour the locking
    // libraries).
    let mut g = c.benchmark_group("telemetry/record_2threads");
    for (name, r) in &recorders {
        g.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let barrier = std::sync::Barrier::new(2);
                std::thread::scope(|s| {
                    let run = || {
                        barrier.wait();
                        let start = thread_cpu();
                        for i in 0..iters as usize {
                            r.record(black_box(i));
                        }
                        thread_cpu().saturating_sub(start)
                    };
                    let other = s.spawn(run);
                    let mine = run();
                    (mine + other.join().unwrap()) / 2
                })
            })
        });
    }
    g.finish();
}

fn config() -> C {
    Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = e2e, server_layer, record
}
criterion_main!(benches);
