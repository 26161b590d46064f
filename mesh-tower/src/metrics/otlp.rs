//! The mesh's metrics through the OpenTelemetry metrics API, exported
//! over OTLP (gRPC).
//!
//! ```no_run
//! # async fn f(mesh: mesh_tower::Mesh) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use mesh_tower::metrics::otlp::OtlpMetrics;
//!
//! let metrics = OtlpMetrics::builder()
//!     .with_endpoint("http://otel-collector:4317")
//!     .with_interval(Duration::from_secs(15))
//!     .with_service_name("reviews")
//!     .build(&mesh)?;
//! // ... serve; keep `metrics` for as long as the mesh runs.
//! metrics.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Nothing moves to the request path
//!
//! The request path keeps recording into the mesh's own atomics (see the
//! [module docs](super)); OpenTelemetry reads them when it collects, the
//! way the Prometheus endpoint reads them when scraped. Counters and
//! gauges are OpenTelemetry *observable* instruments whose callbacks read
//! those atomics ([`Mesh::register_otel_metrics`](crate::Mesh::register_otel_metrics)
//! registers them on any [`Meter`], so an application can put them into
//! its own `SdkMeterProvider`). Recording through the SDK's synchronous
//! instruments instead would hash an attribute set into a locked map on
//! every request.
//!
//! # Histograms
//!
//! The OpenTelemetry API has no observable histogram, and the SDK's data
//! types (`HistogramDataPoint`, `ResourceMetrics`) cannot be built outside
//! the SDK, so there is no way to hand it bucket counts that were
//! aggregated elsewhere. The histograms (`istio_request_duration_milliseconds`
//! in `ms`, `istio_request_bytes` and `istio_response_bytes` in `By`) are
//! therefore emitted by the exporter itself: [`OtlpMetrics`]'s exporter
//! wraps `opentelemetry-otlp`'s gRPC `MetricExporter`, which sends what
//! the SDK collected (the observable counters and gauges), and after it
//! sends one more `ExportMetricsServiceRequest` with the histogram data
//! points built from the atomics (`opentelemetry-proto` types: explicit
//! bounds are Envoy's default buckets, bucket counts are the atomics'
//! per-bucket counts, cumulative temporality), on the same gRPC channel,
//! with the same resource and instrumentation scope. Recording stays four
//! relaxed `fetch_add`s per histogram, without lock or allocation.
//!
//! # Names and attributes
//!
//! The names, units and attribute keys are Istio's, as on the Prometheus
//! endpoint (`istio_requests_total`, `reporter`, `source_workload`, …,
//! `response_code` as a string, as Prometheus labels are). The mesh
//! internals keep their `mesh_*` names and `cluster`/`health`/`source`/
//! `result` attributes. With the `xds` feature, gRFC A78's xDS client
//! metrics are exported under A78's own names (`grpc.xds_client.*` with
//! `grpc.target`, `grpc.xds.server`, `grpc.xds.resource_type`, …; see
//! the `xds` module for the Prometheus mapping).
//!
//! # Threads and shutdown
//!
//! The SDK's `PeriodicReader` collects and exports on an OS thread of its
//! own; the gRPC calls run on the tokio runtime [`OtlpMetricsBuilder::build`]
//! was called on (each export is a task the reader thread waits for, with
//! the export timeout). `SdkMeterProvider::shutdown` and `force_flush`
//! block (DEPENDENCIES.md, trap 8): [`OtlpMetrics::flush`] and
//! [`OtlpMetrics::shutdown`] run them on tokio's blocking pool, and
//! dropping an [`OtlpMetrics`] that was not shut down does the same, so
//! no runtime thread ever waits for the reader. The callbacks hold the
//! mesh weakly: the export does not keep a dropped mesh alive.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, Meter, MeterProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_otlp::WithTonicConfig as _;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope as ProtoScope;
use opentelemetry_proto::tonic::metrics::v1 as proto;
use opentelemetry_proto::transform::common::tonic::Attributes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use super::render::{Ctx, destination_service, peer_values};
use super::{BUCKETS, Histogram, Key, Reporter, Series, SeriesTable};
use crate::mesh::{Mesh, WeakMesh};

/// The instrumentation scope of the mesh's metrics (the same as its
/// spans').
pub const SCOPE: &str = "mesh-tower";

/// The default export interval: 60 s, the SDK's
/// (`OTEL_METRIC_EXPORT_INTERVAL`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Configures an [`OtlpMetrics`]: `OtlpMetrics::builder()`.
#[derive(Clone, Debug)]
#[must_use]
pub struct OtlpMetricsBuilder {
    endpoint: String,
    interval: Duration,
    timeout: Duration,
    service_name: Option<String>,
}

impl OtlpMetricsBuilder {
    /// The collector's gRPC endpoint;
    /// [`DEFAULT_ENDPOINT`](crate::trace::DEFAULT_ENDPOINT) unless
    /// set.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// How often the metrics are collected and exported;
    /// [`DEFAULT_INTERVAL`] unless set (zero keeps the default).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        if !interval.is_zero() {
            self.interval = interval;
        }
        self
    }

    /// How long one export may take;
    /// [`DEFAULT_TIMEOUT`](crate::trace::DEFAULT_TIMEOUT) unless
    /// set.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The resource's `service.name`.
    pub fn with_service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Starts exporting `mesh`'s metrics: an `SdkMeterProvider` with the
    /// mesh's observable instruments and a `PeriodicReader` whose exporter
    /// is `opentelemetry-otlp`'s gRPC `MetricExporter` plus the mesh's
    /// histograms. The connection is made lazily, on the first export.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime (the gRPC channel lives there).
    pub fn build(self, mesh: &Mesh) -> Result<OtlpMetrics, opentelemetry_otlp::ExporterBuildError> {
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| {
                opentelemetry_otlp::ExporterBuildError::InvalidConfiguration(format!(
                    "OTLP metrics endpoint {:?}: {e}",
                    self.endpoint
                ))
            })?
            .timeout(self.timeout)
            .connect_lazy();
        let otlp = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_channel(channel.clone())
            .with_timeout(self.timeout)
            .with_temporality(Temporality::Cumulative)
            .build()?;
        let resource = match &self.service_name {
            Some(name) => Resource::builder().with_service_name(name.clone()).build(),
            None => Resource::builder().build(),
        };
        let exporter = MeshExporter {
            otlp,
            histograms: MetricsServiceClient::new(channel),
            runtime: tokio::runtime::Handle::current(),
            mesh: mesh.downgrade(),
            timeout: self.timeout,
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(self.interval)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(reader)
            .build();
        mesh.register_otel_metrics(&provider.meter(SCOPE));
        Ok(OtlpMetrics {
            provider: Some(provider),
        })
    }
}

/// The mesh's metrics exported over OTLP every interval, until shut down
/// or dropped: see the [module docs](self).
#[derive(Debug)]
pub struct OtlpMetrics {
    // `None` once shut down.
    provider: Option<SdkMeterProvider>,
}

impl OtlpMetrics {
    /// A builder: endpoint, interval, timeout, service name.
    pub fn builder() -> OtlpMetricsBuilder {
        OtlpMetricsBuilder {
            endpoint: crate::trace::DEFAULT_ENDPOINT.to_owned(),
            interval: DEFAULT_INTERVAL,
            timeout: crate::trace::DEFAULT_TIMEOUT,
            service_name: None,
        }
    }

    /// The meter provider (to add the application's own instruments to
    /// the same export).
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.provider.as_ref()
    }

    /// Collects and exports now, and returns when the collector answered
    /// (on tokio's blocking pool: the SDK's flush blocks).
    pub async fn flush(&self) -> OTelSdkResult {
        let Some(provider) = self.provider.clone() else {
            return Err(OTelSdkError::AlreadyShutdown);
        };
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
    }

    /// Exports a last time and stops the reader.
    pub async fn shutdown(mut self) -> OTelSdkResult {
        let Some(provider) = self.provider.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
    }
}

impl Drop for OtlpMetrics {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The provider's drop shuts the reader down, which blocks until the
        // last export ran on the runtime: never on a runtime thread.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(provider))),
            Err(_) => drop(provider),
        }
    }
}

/// `opentelemetry-otlp`'s exporter for what the SDK collected, then the
/// mesh's histograms.
struct MeshExporter {
    otlp: opentelemetry_otlp::MetricExporter,
    histograms: MetricsServiceClient<tonic::transport::Channel>,
    runtime: tokio::runtime::Handle,
    mesh: WeakMesh,
    timeout: Duration,
}

impl std::fmt::Debug for MeshExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshExporter").finish_non_exhaustive()
    }
}

impl PushMetricExporter for MeshExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let sdk = self.otlp.export(metrics).await;
        let histograms = match self.mesh.upgrade() {
            Some(mesh) => self.export_histograms(&mesh, metrics).await,
            None => Ok(()),
        };
        sdk.and(histograms)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.otlp.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.otlp.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

impl MeshExporter {
    async fn export_histograms(&self, mesh: &Mesh, rm: &ResourceMetrics) -> OTelSdkResult {
        let metrics = histogram_metrics(mesh);
        if metrics.is_empty() {
            return Ok(());
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![proto::ResourceMetrics {
                resource: Some(rm.resource().into()),
                scope_metrics: vec![proto::ScopeMetrics {
                    scope: Some(ProtoScope {
                        name: SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..ProtoScope::default()
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        // The reader thread drives this future with a blocking executor;
        // the call itself (and its timer) runs on the runtime.
        let mut client = self.histograms.clone();
        let timeout = self.timeout;
        let call = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, client.export(request)).await });
        match call.await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(status))) => Err(OTelSdkError::InternalFailure(format!(
                "histogram export failed: {status}"
            ))),
            Ok(Err(_)) => Err(OTelSdkError::Timeout(timeout)),
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        }
    }
}

/// Nanoseconds since the epoch.
fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Every Istio series of `mesh`: reporter, destination cluster, labels,
/// counts.
fn with_series<R>(
    mesh: &Mesh,
    f: impl FnOnce(&Ctx<'_>, &[(Reporter, Option<&str>, Key, &Series)]) -> R,
) -> R {
    let rt = mesh.runtime().load();
    let m = mesh.metrics();
    let mut clusters: Vec<_> = rt.clusters.values().collect();
    clusters.sort_by(|a, b| a.config.name.cmp(&b.config.name));
    let mut tables: Vec<(Reporter, &SeriesTable)> = clusters
        .iter()
        .map(|c| (Reporter::Source, &**c.istio()))
        .collect();
    tables.push((Reporter::Source, m.unrouted()));
    tables.push((Reporter::Destination, m.inbound()));
    let rows: Vec<_> = tables
        .iter()
        .flat_map(|&(reporter, t)| {
            let cluster = t.destination().map(|c| c.as_str());
            t.series().map(move |(k, s)| (reporter, cluster, k, s))
        })
        .collect();
    let own = m.own_principal();
    let ctx = Ctx {
        m,
        own: own.as_deref().unwrap_or("unknown"),
    };
    f(&ctx, &rows)
}

/// The attributes every Istio metric shares.
fn peer_attributes(
    c: &Ctx<'_>,
    reporter: Reporter,
    peer: super::Peer,
    cluster: Option<&str>,
) -> Vec<KeyValue> {
    let [source, dest, source_principal, dest_principal, policy] = peer_values(c, reporter, peer);
    vec![
        KeyValue::new("reporter", reporter.as_str()),
        KeyValue::new("source_workload", source.to_owned()),
        KeyValue::new("source_principal", source_principal.to_owned()),
        KeyValue::new("destination_workload", dest.to_owned()),
        KeyValue::new("destination_principal", dest_principal.to_owned()),
        KeyValue::new(
            "destination_service",
            destination_service(cluster).to_owned(),
        ),
        KeyValue::new("connection_security_policy", policy.to_owned()),
    ]
}

/// The attributes of one request series (the Prometheus labels).
fn series_attributes(
    c: &Ctx<'_>,
    reporter: Reporter,
    cluster: Option<&str>,
    k: Key,
) -> Vec<KeyValue> {
    let mut a = peer_attributes(c, reporter, k.peer, cluster);
    a.push(KeyValue::new("response_code", k.code.to_string()));
    a.push(KeyValue::new(
        "grpc_response_status",
        k.grpc_status.map_or_else(String::new, |g| g.to_string()),
    ));
    a.push(KeyValue::new("response_flags", k.flag.as_str()));
    a.push(KeyValue::new("request_protocol", k.protocol.as_str()));
    a
}

/// A histogram family: name, description, unit, and its histogram in a
/// series.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Series) -> &Histogram,
);

/// The three Istio histograms of `mesh` as OTLP metrics (none without a
/// recorded request).
fn histogram_metrics(mesh: &Mesh) -> Vec<proto::Metric> {
    let start = nanos(mesh.metrics().started());
    let now = nanos(SystemTime::now());
    with_series(mesh, |ctx, rows| {
        if rows.is_empty() {
            return Vec::new();
        }
        let families: [Family; 3] = [
            (
                "istio_request_duration_milliseconds",
                "Request duration.",
                "ms",
                |s| &s.duration_ms,
            ),
            ("istio_request_bytes", "Request body sizes.", "By", |s| {
                &s.request_bytes
            }),
            ("istio_response_bytes", "Response body sizes.", "By", |s| {
                &s.response_bytes
            }),
        ];
        families
            .into_iter()
            .map(|(name, description, unit, pick)| {
                let data_points = rows
                    .iter()
                    .map(|&(reporter, cluster, k, s)| {
                        let h = pick(s);
                        let bucket_counts: Vec<u64> = h
                            .buckets
                            .iter()
                            .map(|b| b.load(Ordering::Relaxed))
                            .collect();
                        proto::HistogramDataPoint {
                            attributes: Attributes::from(series_attributes(
                                ctx, reporter, cluster, k,
                            ))
                            .0,
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            // The sum of the buckets, so that count and
                            // buckets agree under concurrent records.
                            count: bucket_counts.iter().sum(),
                            sum: Some(h.sum_milli.load(Ordering::Relaxed) as f64 / 1000.0),
                            bucket_counts,
                            explicit_bounds: BUCKETS.to_vec(),
                            ..proto::HistogramDataPoint::default()
                        }
                    })
                    .collect();
                proto::Metric {
                    name: name.to_owned(),
                    description: description.to_owned(),
                    unit: unit.to_owned(),
                    data: Some(proto::metric::Data::Histogram(proto::Histogram {
                        data_points,
                        aggregation_temporality: proto::AggregationTemporality::Cumulative as i32,
                    })),
                    ..proto::Metric::default()
                }
            })
            .collect()
    })
}

/// A `u64` observable counter named `name` whose callback observes what
/// `read` yields for the mesh.
fn counter(
    meter: &Meter,
    mesh: &WeakMesh,
    name: &'static str,
    description: &'static str,
    read: impl Fn(&Mesh, &dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    let mesh = mesh.clone();
    let _ = meter
        .u64_observable_counter(name)
        .with_description(description)
        .with_callback(move |o| {
            if let Some(m) = mesh.upgrade() {
                read(&m, o);
            }
        })
        .build();
}

/// A `u64` observable gauge, as [`counter`].
fn gauge(
    meter: &Meter,
    mesh: &WeakMesh,
    name: &'static str,
    description: &'static str,
    read: impl Fn(&Mesh, &dyn AsyncInstrument<u64>) + Send + Sync + 'static,
) {
    let mesh = mesh.clone();
    let _ = meter
        .u64_observable_gauge(name)
        .with_description(description)
        .with_callback(move |o| {
            if let Some(m) = mesh.upgrade() {
                read(&m, o);
            }
        })
        .build();
}

/// A per-cluster counter or gauge read from the mesh.
type PerCluster = fn(&Mesh, &str) -> Option<u64>;

/// Registers the mesh's counters and gauges on `meter` (see
/// [`Mesh::register_otel_metrics`]).
pub(crate) fn register(mesh: &Mesh, meter: &Meter) {
    let weak = mesh.downgrade();
    counter(
        meter,
        &weak,
        "istio_requests_total",
        "Total number of requests.",
        |mesh, o| {
            with_series(mesh, |ctx, rows| {
                for &(reporter, cluster, k, s) in rows {
                    o.observe(
                        s.requests.load(Ordering::Relaxed),
                        &series_attributes(ctx, reporter, cluster, k),
                    );
                }
            });
        },
    );
    for (name, description, opened) in [
        (
            "istio_tcp_connections_opened_total",
            "Total TCP connections opened.",
            true,
        ),
        (
            "istio_tcp_connections_closed_total",
            "Total TCP connections closed.",
            false,
        ),
    ] {
        counter(meter, &weak, name, description, move |mesh, o| {
            tcp(mesh, opened, o);
        });
    }
    counter(
        meter,
        &weak,
        "mesh_metrics_series_dropped_total",
        "Requests not recorded: their destination had no free series slot.",
        |mesh, o| {
            let rt = mesh.runtime().load();
            let m = mesh.metrics();
            let dropped = rt
                .clusters
                .values()
                .map(|c| c.istio().dropped())
                .sum::<u64>()
                + m.unrouted().dropped()
                + m.inbound().dropped();
            o.observe(dropped, &[]);
        },
    );
    counter(
        meter,
        &weak,
        "mesh_metrics_principals_overflow_total",
        "Requests whose peer principal was labelled unknown: the principal table was full.",
        |mesh, o| {
            o.observe(
                mesh.metrics().principals_overflow.load(Ordering::Relaxed),
                &[],
            );
        },
    );
    let per_cluster: [(&'static str, &'static str, bool, PerCluster); 7] = [
        (
            "mesh_cluster_retries_total",
            "Retries granted.",
            true,
            |m, c| m.retry_counts(c).map(|r| r.0),
        ),
        (
            "mesh_cluster_retries_refused_total",
            "Retries refused by the retry budget or maxRetries.",
            true,
            |m, c| m.retry_counts(c).map(|r| r.1),
        ),
        (
            "mesh_cluster_circuit_breaker_overflow_total",
            "Requests refused by the circuit breaker's request limit.",
            true,
            |m, c| m.cluster_stats(c).map(|s| s.overflow_requests),
        ),
        (
            "mesh_cluster_circuit_breaker_pending_overflow_total",
            "Requests refused by the circuit breaker's pending limit.",
            true,
            |m, c| m.cluster_stats(c).map(|s| s.overflow_pending),
        ),
        (
            "mesh_cluster_ejections_total",
            "Endpoints ejected by outlier detection.",
            true,
            |m, c| m.cluster_stats(c).map(|s| s.ejections_total),
        ),
        (
            "mesh_cluster_ejected_endpoints",
            "Endpoints ejected now.",
            false,
            |m, c| m.cluster_stats(c).map(|s| u64::from(s.ejected)),
        ),
        (
            "mesh_cluster_requests_in_flight",
            "Requests admitted by the circuit breaker and not finished.",
            false,
            |m, c| m.cluster_stats(c).map(|s| s.requests_in_flight),
        ),
    ];
    for (name, description, is_counter, read) in per_cluster {
        let observe = move |mesh: &Mesh, o: &dyn AsyncInstrument<u64>| {
            for cluster in mesh.cluster_names() {
                if let Some(v) = read(mesh, cluster.as_str()) {
                    o.observe(v, &[KeyValue::new("cluster", cluster.as_str().to_owned())]);
                }
            }
        };
        if is_counter {
            counter(meter, &weak, name, description, observe);
        } else {
            gauge(meter, &weak, name, description, observe);
        }
    }
    gauge(
        meter,
        &weak,
        "mesh_cluster_endpoints",
        "Endpoints of the cluster, by the health the config gives them.",
        |mesh, o| {
            for cluster in mesh.cluster_names() {
                let Some(eps) = mesh.cluster_endpoints(cluster.as_str()) else {
                    continue;
                };
                for (health, h) in [
                    ("healthy", mesh_core::model::Health::Healthy),
                    ("unhealthy", mesh_core::model::Health::Unhealthy),
                    ("draining", mesh_core::model::Health::Draining),
                    ("unknown", mesh_core::model::Health::Unknown),
                ] {
                    let n = eps.iter().filter(|e| e.health == h).count() as u64;
                    o.observe(
                        n,
                        &[
                            KeyValue::new("cluster", cluster.as_str().to_owned()),
                            KeyValue::new("health", health),
                        ],
                    );
                }
            }
        },
    );
    counter(
        meter,
        &weak,
        "mesh_config_updates_total",
        "Config updates offered to the store, by source and result.",
        |mesh, o| {
            for (source, c) in mesh.store().update_counts() {
                for (result, n) in [("accepted", c.accepted), ("rejected", c.rejected)] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new("source", source.as_str().to_owned()),
                            KeyValue::new("result", result),
                        ],
                    );
                }
            }
        },
    );
    #[cfg(feature = "xds")]
    register_xds(meter, &weak);
}

/// `istio_tcp_connections_{opened,closed}_total`, as the Prometheus
/// endpoint renders them.
fn tcp(mesh: &Mesh, opened: bool, o: &dyn AsyncInstrument<u64>) {
    let pick = |t: &super::TcpCounters| if opened { t.opened() } else { t.closed() };
    with_series(mesh, |ctx, _| {
        let rt = mesh.runtime().load();
        let m = mesh.metrics();
        let tables = rt
            .clusters
            .values()
            .map(|c| &**c.istio())
            .chain(std::iter::once(&**m.unrouted()));
        for t in tables {
            if t.tcp().opened() == 0 {
                continue;
            }
            let cluster = t.destination().map(|c| c.as_str());
            o.observe(
                pick(t.tcp()),
                &peer_attributes(ctx, Reporter::Source, super::Peer::default(), cluster),
            );
        }
        for (i, t) in m.inbound_tcp.iter().enumerate() {
            if t.opened() == 0 {
                continue;
            }
            let peer = super::Peer {
                mutual_tls: i % 2 == 1,
                principal: (i / 2) as u8,
            };
            o.observe(
                pick(t),
                &peer_attributes(ctx, Reporter::Destination, peer, None),
            );
        }
    });
}

/// gRFC A78's xDS client metrics, under A78's names.
#[cfg(feature = "xds")]
fn register_xds(meter: &Meter, weak: &WeakMesh) {
    use super::xds::{AUTHORITY, TARGET};
    use mesh_xds::client::resource_type_label;

    fn server(uri: &str) -> [KeyValue; 2] {
        [
            KeyValue::new("grpc.target", TARGET),
            KeyValue::new("grpc.xds.server", uri.to_owned()),
        ]
    }
    for (name, description, valid) in [
        (
            "grpc.xds_client.resource_updates_valid",
            "Resources received from the xDS server that were valid.",
            true,
        ),
        (
            "grpc.xds_client.resource_updates_invalid",
            "Resources received from the xDS server that were invalid.",
            false,
        ),
    ] {
        counter(meter, weak, name, description, move |mesh, o| {
            let Some(xds) = mesh.xds() else { return };
            for s in xds.metrics().servers {
                let counts = if valid {
                    s.resource_updates_valid
                } else {
                    s.resource_updates_invalid
                };
                for (t, n) in counts {
                    let [a, b] = server(&s.uri);
                    o.observe(
                        n,
                        &[
                            a,
                            b,
                            KeyValue::new("grpc.xds.resource_type", resource_type_label(t)),
                        ],
                    );
                }
            }
        });
    }
    counter(
        meter,
        weak,
        "grpc.xds_client.server_failure",
        "Times the xDS server went from healthy to unhealthy.",
        |mesh, o| {
            let Some(xds) = mesh.xds() else { return };
            for s in xds.metrics().servers {
                o.observe(s.server_failure, &server(&s.uri));
            }
        },
    );
    gauge(
        meter,
        weak,
        "grpc.xds_client.connected",
        "Whether the xDS client has a working ADS stream to the xDS server.",
        |mesh, o| {
            let Some(xds) = mesh.xds() else { return };
            for s in xds.metrics().servers {
                o.observe(u64::from(s.connected), &server(&s.uri));
            }
        },
    );
    gauge(
        meter,
        weak,
        "grpc.xds_client.resources",
        "Number of xDS resources.",
        |mesh, o| {
            let Some(xds) = mesh.xds() else { return };
            for (t, state, n) in xds.metrics().cache_states {
                o.observe(
                    n,
                    &[
                        KeyValue::new("grpc.target", TARGET),
                        KeyValue::new("grpc.xds.authority", AUTHORITY),
                        KeyValue::new("grpc.xds.cache_state", state.as_str()),
                        KeyValue::new("grpc.xds.resource_type", resource_type_label(t)),
                    ],
                );
            }
        },
    );
}

impl Mesh {
    /// Registers this mesh's counters and gauges (Istio's
    /// `istio_requests_total` and `istio_tcp_connections_*_total`, the
    /// `mesh_*` internals, and with the `xds` feature gRFC A78's
    /// `grpc.xds_client.*`) as OpenTelemetry observable instruments on
    /// `meter`, whose callbacks read the same atomics the Prometheus
    /// endpoint reads. The histograms need the exporter of
    /// [`OtlpMetrics`] (the API has no observable histogram; see the
    /// [module docs](self)). The callbacks hold the mesh weakly.
    pub fn register_otel_metrics(&self, meter: &Meter) {
        register(self, meter);
    }
}
