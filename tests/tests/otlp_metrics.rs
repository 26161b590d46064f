//! Metrics over OTLP: one mesh as client and server sends requests with
//! known response codes, `OtlpMetrics` exports every 100 ms to an in-test
//! OTLP collector (`opentelemetry-proto`'s tonic `MetricsService`), and
//! the collector receives `istio_requests_total` with Istio's attributes
//! and the exact counts sent, the histograms with their units, counts and
//! sums, and a mesh-internal gauge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::Mesh;
use mesh_tower::metrics::otlp::OtlpMetrics;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, Metric};
use tower::ServiceExt;

/// The metrics of every request received, newest last, with the
/// resource's `service.name`.
#[derive(Clone, Default)]
struct Collector {
    metrics: Arc<Mutex<Vec<(String, Metric)>>>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut out = self.metrics.lock().unwrap();
        for rm in request.into_inner().resource_metrics {
            let service = rm
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(str_value)
                .unwrap_or_default();
            for sm in rm.scope_metrics {
                assert_eq!(sm.scope.as_ref().unwrap().name, "mesh-tower");
                for m in sm.metrics {
                    out.push((service.clone(), m));
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// The newest export of metric `name`.
    fn latest(&self, name: &str) -> Option<(String, Metric)> {
        let all = self.metrics.lock().unwrap();
        all.iter().rev().find(|(_, m)| m.name == name).cloned()
    }
}

fn str_value(kv: &KeyValue) -> Option<String> {
    match kv.value.clone()?.value? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(str_value)
}

async fn collector() -> (Collector, String, tokio::task::JoinHandle<()>) {
    let c = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn({
        let svc = MetricsServiceServer::new(c.clone());
        async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        }
    });
    (c, format!("http://{addr}"), task)
}

async fn send(mesh: &Mesh, path: &str) -> u16 {
    let res = mesh
        .client()
        .oneshot(
            http::Request::get(format!("http://svc:8080{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

/// `istio_requests_total` of one reporter by `response_code`, from the
/// newest export.
fn requests_by_code(c: &Collector, reporter: &str) -> BTreeMap<String, u64> {
    let Some((_, m)) = c.latest("istio_requests_total") else {
        return BTreeMap::new();
    };
    let Some(Data::Sum(sum)) = m.data else {
        panic!("istio_requests_total is not a sum: {m:?}");
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let mut out = BTreeMap::new();
    for p in sum
        .data_points
        .iter()
        .filter(|p| attr(&p.attributes, "reporter").as_deref() == Some(reporter))
    {
        let code = attr(&p.attributes, "response_code").unwrap();
        let v = match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => {
                i as u64
            }
            ref v => panic!("not an int: {v:?}"),
        };
        *out.entry(code).or_insert(0) += v;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_collector_receives_istio_counts_histograms_and_internals() {
    init_tracing();
    let app = axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }));
    let placeholder: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mesh = mesh_from_yaml(&yaml::service_entry(
        "svc",
        8080,
        "HTTP",
        &[(placeholder, "v1")],
    ));
    let server = Server::start_with_layer(app, mesh.server_layer())
        .await
        .unwrap();
    mesh_tests::republish(
        &mesh,
        &yaml::service_entry("svc", 8080, "HTTP", &[(server.addr(), "v1")]),
    )
    .await;
    let (collector, endpoint, task) = collector().await;
    let metrics = OtlpMetrics::builder()
        .with_endpoint(endpoint)
        .with_interval(Duration::from_millis(100))
        .with_service_name("svc-test")
        .build(&mesh)
        .unwrap();

    // 500, not 503: Istio's default retry policy retries 503.
    let sent = [("/ok", 200, 7u64), ("/fail", 500, 4), ("/teapot", 418, 2)];
    for (path, code, n) in sent {
        for _ in 0..n {
            assert_eq!(send(&mesh, path).await, code);
        }
    }
    let expected: BTreeMap<String, u64> = sent
        .iter()
        .map(|(_, code, n)| (code.to_string(), *n))
        .collect();

    // Exports run every 100 ms: wait for one taken after the requests
    // (bounded; the data, not the time, is asserted).
    let mut got = (BTreeMap::new(), BTreeMap::new());
    for _ in 0..300 {
        got = (
            requests_by_code(&collector, "destination"),
            requests_by_code(&collector, "source"),
        );
        let histogram_count = collector
            .latest("istio_request_duration_milliseconds")
            .and_then(|(_, m)| match m.data {
                Some(Data::Histogram(h)) => Some(h.data_points.iter().map(|p| p.count).sum()),
                _ => None,
            })
            .unwrap_or(0u64);
        if got.0 == expected && got.1 == expected && histogram_count == 26 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.0, expected, "destination");
    assert_eq!(got.1, expected, "source");

    // Istio's attributes, the Prometheus label names.
    let (service, m) = collector.latest("istio_requests_total").unwrap();
    assert_eq!(service, "svc-test");
    let Some(Data::Sum(sum)) = m.data else {
        unreachable!()
    };
    for p in &sum.data_points {
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        for key in [
            "reporter",
            "source_workload",
            "source_principal",
            "destination_workload",
            "destination_principal",
            "destination_service",
            "connection_security_policy",
            "response_code",
            "grpc_response_status",
            "response_flags",
            "request_protocol",
        ] {
            assert!(keys.contains(&key), "{key} missing in {keys:?}");
        }
        assert_eq!(attr(&p.attributes, "request_protocol").unwrap(), "http");
        assert_eq!(attr(&p.attributes, "response_flags").unwrap(), "-");
        if attr(&p.attributes, "reporter").unwrap() == "source" {
            assert_eq!(
                attr(&p.attributes, "destination_service").unwrap(),
                "svc.default.svc.cluster.local"
            );
        }
    }

    // Histograms: units, counts, sums and bucket layout.
    let (_, duration) = collector
        .latest("istio_request_duration_milliseconds")
        .unwrap();
    assert_eq!(duration.unit, "ms");
    let Some(Data::Histogram(h)) = duration.data else {
        panic!("not a histogram")
    };
    assert_eq!(
        h.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    for p in &h.data_points {
        assert_eq!(p.explicit_bounds.len(), 19);
        assert_eq!(p.bucket_counts.len(), 20);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        assert!(p.sum.unwrap() >= 0.0);
    }
    let destination_count: u64 = h
        .data_points
        .iter()
        .filter(|p| attr(&p.attributes, "reporter").as_deref() == Some("destination"))
        .map(|p| p.count)
        .sum();
    assert_eq!(destination_count, 13);
    let (_, response_bytes) = collector.latest("istio_response_bytes").unwrap();
    assert_eq!(response_bytes.unit, "By");
    let Some(Data::Histogram(h)) = response_bytes.data else {
        panic!("not a histogram")
    };
    // Seven "ok" bodies of two bytes; the errors have empty bodies.
    let (count, bytes) = h
        .data_points
        .iter()
        .filter(|p| attr(&p.attributes, "reporter").as_deref() == Some("destination"))
        .fold((0, 0.0), |(c, s), p| (c + p.count, s + p.sum.unwrap()));
    assert_eq!((count, bytes), (13, 14.0));

    // A mesh internal: the cluster's endpoint count by health.
    let (_, endpoints) = collector.latest("mesh_cluster_endpoints").unwrap();
    let Some(Data::Gauge(g)) = endpoints.data else {
        panic!("mesh_cluster_endpoints is not a gauge")
    };
    let total: i64 = g
        .data_points
        .iter()
        .filter(|p| {
            attr(&p.attributes, "cluster").as_deref()
                == Some("outbound|8080||svc.default.svc.cluster.local")
        })
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => i,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 1);

    metrics.shutdown().await.unwrap();
    task.abort();
}
