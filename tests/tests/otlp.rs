//! Spans over OTLP: three services on loopback (client -> A -> B), a mesh
//! on each with its own `OtlpExporter`, and an in-test OTLP collector
//! (tonic `TraceService` from `opentelemetry-proto`). One trace arrives
//! with the links the headers carried: client call -> client attempt ->
//! A server -> A's call -> A's attempts (B fails once with 503, A retries)
//! -> B server (one per attempt). W3C, B3 single and B3 multi inputs all
//! continue the caller's trace; a malformed `traceparent` starts a new
//! one. A `tracing` span in A's handler joins the trace through
//! `tracing-opentelemetry`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_examples::backends::Server;
use mesh_examples::{publish_yaml, yaml};
use mesh_tower::trace::{OtlpExporter, Propagators, Sampling};
use mesh_tower::{Mesh, MeshClient};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as OtelStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// A span as the collector received it, with its service.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<Value> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone()?.value)
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attr(key)? {
            Value::IntValue(i) => Some(i),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> Option<String> {
        match self.attr(key)? {
            Value::StringValue(s) => Some(s),
            _ => None,
        }
    }

    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap()
    }

    fn is_error(&self) -> bool {
        self.span
            .status
            .as_ref()
            .is_some_and(|s| s.code == OtelStatus::Error as i32)
    }

    fn id(&self) -> &[u8] {
        &self.span.span_id
    }

    fn parent(&self) -> &[u8] {
        &self.span.parent_span_id
    }
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.clone()?.value? {
                    Value::StringValue(s) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Got {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves the collector on a loopback port; returns its endpoint.
async fn collector() -> (Collector, String, tokio::task::JoinHandle<()>) {
    let c = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn({
        let svc = TraceServiceServer::new(c.clone());
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

struct Services {
    collector: Collector,
    exporters: Vec<OtlpExporter>,
    a: Server,
    _b: Server,
    b_failures: Arc<AtomicU32>,
    client: MeshClient,
    _collector_task: tokio::task::JoinHandle<()>,
}

impl Services {
    /// Exports everything the three services recorded, then takes the
    /// spans of `trace` from the collector.
    async fn spans_of(&self, trace: &[u8]) -> Vec<Got> {
        for e in &self.exporters {
            e.flush().await;
        }
        let mut all = self.collector.spans.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) = all.drain(..).partition(|g| g.span.trace_id == trace);
        *all = rest;
        mine
    }
}

fn exporter(endpoint: &str, service: &'static str) -> OtlpExporter {
    OtlpExporter::builder()
        .with_endpoint(endpoint)
        .with_service_name(service)
        .with_timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn mesh(yaml: &str, exporter: &OtlpExporter) -> Mesh {
    let store = mesh_core::ConfigStore::new();
    publish_yaml(&store, yaml);
    Mesh::builder(store)
        .with_span_exporter(exporter.clone())
        .build()
}

/// B answers 503 once per `b_failures`, then 200. A's handler records a
/// `tracing` span, then calls B (the route retries 5xx once). A samples
/// every request that arrives without a trace.
async fn services() -> Services {
    let (collector, endpoint, collector_task) = collector().await;
    let (ex_client, ex_a, ex_b) = (
        exporter(&endpoint, "client"),
        exporter(&endpoint, "a"),
        exporter(&endpoint, "b"),
    );

    let b_failures = Arc::new(AtomicU32::new(0));
    let b_mesh = mesh("", &ex_b);
    let b = Server::start_with_layer(
        axum::Router::new().route(
            "/b",
            get({
                let failures = Arc::clone(&b_failures);
                move || async move {
                    let fail = failures
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        ),
        b_mesh.server_layer(),
    )
    .await
    .unwrap();

    let mut a_yaml = yaml::service_entry("b", 8080, "HTTP", &[(b.addr(), "v1")]);
    a_yaml.push_str(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: b }\n\
         spec:\n  hosts: [b]\n  http:\n  - name: to-b\n    route: [{ destination: { host: b } }]\n    \
         retries: { attempts: 1, retryOn: 5xx }\n",
    );
    let a_mesh = mesh(&a_yaml, &ex_a);
    let a_client = a_mesh.client();
    let a = Server::start_with_layer(
        axum::Router::new().route(
            "/a",
            get(move || async move {
                {
                    let work = tracing::info_span!("a.prepare", step = "lookup");
                    let _e = work.enter();
                    tracing::info!(items = 3, "prepared");
                }
                let req = http::Request::get("http://b:8080/b")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let res = a_client.oneshot(req).await.unwrap();
                res.status()
            }),
        ),
        a_mesh.server_layer().with_sampling(Sampling::always()),
    )
    .await
    .unwrap();

    let client_mesh = mesh(
        &yaml::service_entry("a", 8080, "HTTP", &[(a.addr(), "v1")]),
        &ex_client,
    );
    // The application's `tracing` spans go through A's exporter (one
    // process per service in real life; here the test's thread).
    let subscriber =
        tracing_subscriber::registry().with(mesh_tower::trace::otel::layer(&ex_a).with_filter(
            tracing_subscriber::filter::filter_fn(|m| m.target().starts_with("otlp")),
        ));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    Services {
        collector,
        exporters: vec![ex_client, ex_a, ex_b],
        a,
        _b: b,
        b_failures,
        // Every format, B3 single included (not in the defaults).
        client: client_mesh.client().with_propagators(Propagators::all()),
        _collector_task: collector_task,
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn one<'a>(spans: &'a [Got], what: &str, f: impl Fn(&Got) -> bool) -> &'a Got {
    let found: Vec<_> = spans.iter().filter(|g| f(g)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\nall: {spans:#?}");
    found[0]
}

/// Checks the links of one client -> A -> B trace with a retried attempt;
/// returns the client's call span.
fn check_chain(spans: &[Got], caller: Option<&[u8]>) -> Got {
    let by_id: HashMap<&[u8], &Got> = spans.iter().map(|g| (g.id(), g)).collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique");

    let call = one(spans, "client call", |g| {
        g.service == "client" && g.kind() == SpanKind::Client && g.int("mesh.attempts").is_some()
    });
    if let Some(p) = caller {
        assert_eq!(call.parent(), p, "the client call continues the caller");
    }
    assert_eq!(call.int("mesh.attempts"), Some(1));
    assert_eq!(call.int("mesh.retries"), Some(0));
    assert_eq!(call.int("http.response.status_code"), Some(200));
    assert_eq!(call.str("http.request.method").as_deref(), Some("GET"));
    assert_eq!(call.str("server.address").as_deref(), Some("a"));
    assert_eq!(call.span.name, "GET");

    let attempt = one(spans, "client attempt", |g| {
        g.service == "client" && g.parent() == call.id()
    });
    assert_eq!(attempt.kind(), SpanKind::Client);
    assert_eq!(attempt.int("mesh.attempt"), Some(1));

    let a_server = one(spans, "A server", |g| {
        g.service == "a" && g.kind() == SpanKind::Server
    });
    assert_eq!(a_server.parent(), attempt.id(), "A's parent is the attempt");
    assert_eq!(a_server.span.name, "GET /a");
    assert_eq!(a_server.str("http.route").as_deref(), Some("/a"));
    assert_eq!(a_server.str("url.path").as_deref(), Some("/a"));
    assert_eq!(a_server.int("http.response.status_code"), Some(200));
    assert!(!a_server.is_error());

    // The application's `tracing` span, a child of A's server span, with
    // its event.
    let work = one(spans, "A's tracing span", |g| g.span.name == "a.prepare");
    assert_eq!(work.service, "a");
    assert_eq!(work.parent(), a_server.id());
    assert_eq!(work.str("step").as_deref(), Some("lookup"));
    assert_eq!(work.span.events.len(), 1, "{work:#?}");

    let a_call = one(spans, "A's call", |g| {
        g.service == "a" && g.kind() == SpanKind::Client && g.parent() == a_server.id()
    });
    assert_eq!(a_call.int("mesh.attempts"), Some(2), "{a_call:#?}");
    assert_eq!(a_call.int("mesh.retries"), Some(1));
    let cluster = a_call.str("mesh.cluster").unwrap();
    assert!(cluster.contains('b'), "{cluster}");
    assert_eq!(a_call.int("http.response.status_code"), Some(200));

    let mut a_attempts: Vec<&Got> = spans
        .iter()
        .filter(|g| g.service == "a" && g.parent() == a_call.id())
        .collect();
    a_attempts.sort_by_key(|g| g.int("mesh.attempt"));
    assert_eq!(a_attempts.len(), 2, "{a_attempts:#?}");
    let (first, retry) = (a_attempts[0], a_attempts[1]);
    assert_eq!(first.int("mesh.attempt"), Some(1));
    assert_eq!(first.int("http.response.status_code"), Some(503));
    assert!(first.is_error(), "a 503 attempt is an error");
    assert_eq!(first.str("mesh.route").as_deref(), Some("to-b"));
    assert!(first.str("mesh.endpoint").is_some());
    assert_eq!(retry.int("mesh.attempt"), Some(2));
    assert_eq!(retry.int("http.request.resend_count"), Some(1));
    assert_eq!(retry.int("http.response.status_code"), Some(200));
    assert!(!retry.is_error());

    for (attempt, code) in [(first, 503), (retry, 200)] {
        let b = one(spans, "B server", |g| {
            g.service == "b" && g.parent() == attempt.id()
        });
        assert_eq!(b.kind(), SpanKind::Server);
        assert_eq!(b.int("http.response.status_code"), Some(code));
        assert_eq!(b.is_error(), code >= 500);
    }
    assert_eq!(spans.len(), 9, "{spans:#?}");
    call.clone()
}

async fn send_through_client(s: &Services, headers: &[(&str, &str)]) {
    s.b_failures.store(1, Ordering::Relaxed);
    let mut req = http::Request::get("http://a:8080/a");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = s
        .client
        .clone()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();
}

/// One test, so that the global `tracing` subscriber is set once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_reaches_the_collector_with_parent_child_links() {
    let s = services().await;

    // W3C Trace Context in: the trace continues.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    send_through_client(&s, &[("traceparent", &format!("00-{trace}-{parent}-01"))]).await;
    let spans = s.spans_of(&hex(trace)).await;
    check_chain(&spans, Some(&hex(parent)));

    // B3 single in.
    let trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let parent = "e457b5a2e4d86bd1";
    send_through_client(&s, &[("b3", &format!("{trace}-{parent}-1"))]).await;
    let spans = s.spans_of(&hex(trace)).await;
    check_chain(&spans, Some(&hex(parent)));

    // B3 multi in.
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let parent = "a2fb4a1d1a96d312";
    send_through_client(
        &s,
        &[
            ("x-b3-traceid", trace),
            ("x-b3-spanid", parent),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let spans = s.spans_of(&hex(trace)).await;
    check_chain(&spans, Some(&hex(parent)));

    // A malformed traceparent sent straight to A: ignored, A starts a new
    // trace (A samples every untraced request) and B continues it.
    s.b_failures.store(1, Ordering::Relaxed);
    let bad = "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01";
    let mut stream = tokio::net::TcpStream::connect(s.a.addr()).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /a HTTP/1.1\r\nhost: a\r\nconnection: close\r\ntraceparent: {bad}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut res = String::new();
    stream.read_to_string(&mut res).await.unwrap();
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    for e in &s.exporters {
        e.flush().await;
    }
    let all = s.collector.spans.lock().unwrap().clone();
    let root = one(&all, "A's new root", |g| {
        g.service == "a" && g.kind() == SpanKind::Server
    });
    assert!(root.parent().is_empty(), "a new trace: {root:#?}");
    assert_ne!(root.span.trace_id, hex("4bf92f3577b34da6a3ce929d0e0e473f"));
    let new_trace = root.span.trace_id.clone();
    assert!(
        all.iter().all(|g| g.span.trace_id == new_trace),
        "B continues A's new trace"
    );
    assert_eq!(
        all.iter().filter(|g| g.service == "b").count(),
        2,
        "B served the attempt and the retry"
    );
    for e in &s.exporters {
        assert_eq!(e.stats().dropped(), 0);
        assert_eq!(e.stats().failed(), 0);
        assert_eq!(e.stats().exported(), e.stats().submitted());
    }
}

const TELEMETRY_MESH: &str = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
metadata: { name: mesh-default, namespace: istio-system }\nspec:\n  tracing:\n  \
- randomSamplingPercentage: 100\n    customTags:\n      team: { literal: { value: books } }\n      \
user: { header: { name: x-user, defaultValue: nobody } }\n";

/// Sends one request through `svc`; returns whether the handler ran in a
/// sampled trace.
async fn serve_one<S>(svc: &mut S, headers: &[(&str, &str)]) -> bool
where
    S: tower::Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<Empty<Bytes>>,
            Error = std::convert::Infallible,
        >,
{
    let mut req = http::Request::get("/cart");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    res.headers().contains_key("x-sampled")
}

#[tokio::test]
async fn telemetry_resources_set_sampling_reporting_and_tags_live() {
    use mesh_core::model::{Labels, Workload};
    use tower::Layer;

    let (collector, endpoint, _task) = collector().await;
    let ex = exporter(&endpoint, "cart");
    let store = mesh_core::ConfigStore::new();
    publish_yaml(&store, TELEMETRY_MESH);
    let mesh = Mesh::builder(store)
        .with_span_exporter(ex.clone())
        .with_workload_scope(Workload::new("shop", Labels::new([("app", "cart")])))
        .build();
    let mut svc = mesh.server_layer().layer(tower::service_fn(
        |_req: http::Request<Empty<Bytes>>| async {
            let mut res = http::Response::new(Empty::<Bytes>::new());
            if mesh_tower::trace::current_span().is_some_and(|s| s.sampled) {
                res.headers_mut()
                    .insert("x-sampled", http::HeaderValue::from_static("1"));
            }
            Ok::<_, std::convert::Infallible>(res)
        },
    ));
    let take = || async {
        ex.flush().await;
        std::mem::take(&mut *collector.spans.lock().unwrap())
    };

    // Mesh-wide 100%: an untraced request starts a trace; the tags are on
    // its span.
    assert!(serve_one(&mut svc, &[("x-user", "alice")]).await);
    let spans = take().await;
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].str("team").as_deref(), Some("books"));
    assert_eq!(spans[0].str("user").as_deref(), Some("alice"));
    assert!(serve_one(&mut svc, &[]).await);
    assert_eq!(take().await[0].str("user").as_deref(), Some("nobody"));

    // The namespace overrides the mesh: 0%, picked up live.
    let ns = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
              metadata: { name: shop, namespace: shop }\nspec:\n  tracing:\n  \
              - randomSamplingPercentage: 0\n";
    mesh_tests::republish(&mesh, &format!("{TELEMETRY_MESH}{ns}")).await;
    for _ in 0..20 {
        assert!(!serve_one(&mut svc, &[]).await);
    }
    assert!(take().await.is_empty());

    // A workload-level policy turns reporting off: a sampled trace that
    // arrives is still continued (the handler sees it), no span is sent.
    let wl = "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\n\
              metadata: { name: cart, namespace: shop }\nspec:\n  \
              selector: { matchLabels: { app: cart } }\n  tracing:\n  \
              - disableSpanReporting: true\n";
    mesh_tests::republish(&mesh, &format!("{TELEMETRY_MESH}{ns}{wl}")).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert!(serve_one(&mut svc, &[("traceparent", tp)]).await);
    assert!(take().await.is_empty());

    // Back to the mesh default: reported again.
    mesh_tests::republish(&mesh, TELEMETRY_MESH).await;
    assert!(serve_one(&mut svc, &[("traceparent", tp)]).await);
    assert_eq!(take().await.len(), 1);
}
