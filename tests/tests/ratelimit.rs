//! Local rate limiting from EnvoyFilter `envoy.filters.http.local_ratelimit`:
//! client side per cluster and server side per listener, over real
//! loopback sockets on paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::model::Labels;
use mesh_examples::backends::Server;
use mesh_examples::scripted::Scripted;
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml, republish};
use mesh_tower::ratelimit::Workload;
use tower::ServiceExt;

fn filter(context: &str, selector: &str, port: Option<u16>, max: u32, interval: &str) -> String {
    let listener = port
        .map(|p| format!("      listener: {{ portNumber: {p} }}\n"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{ name: rl }}
spec:
{selector}  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: {context}
{listener}    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: {{ max_tokens: {max}, tokens_per_fill: {max}, fill_interval: {interval} }}
            filter_enabled: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
            filter_enforced: {{ default_value: {{ numerator: 100, denominator: HUNDRED }} }}
"#
    )
}

async fn send(mesh: &mesh_tower::Mesh, url: &str, grpc: bool) -> http::Response<Bytes> {
    let mut req = http::Request::get(url);
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let res = mesh
        .client()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

fn client_config(backend: &Scripted, max: u32, timeout: &str) -> String {
    format!(
        "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: svc }}\nspec:\n  hosts: [svc]\n  http:\n  - route: [{{ destination: {{ host: svc }} }}]\n    timeout: {timeout}\n",
        yaml::service_entry("svc", 8080, "HTTP", &[(backend.addr(), "v1")]),
        filter("SIDECAR_OUTBOUND", "", Some(8080), max, "10s"),
    )
}

#[tokio::test(start_paused = true)]
async fn client_limit_answers_429_with_headers_and_refills() {
    init_tracing();
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&client_config(&backend, 3, "5s"));
    let url = "http://svc:8080/x";
    for _ in 0..3 {
        assert_eq!(send(&mesh, url, false).await.status(), 200);
    }
    let res = send(&mesh, url, false).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.body(), "local_rate_limited");
    assert_eq!(res.headers()["x-ratelimit-limit"], "3");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    let reset: u64 = res.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&reset), "reset {reset}");
    assert_eq!(backend.hits(), 3, "the limited request was not sent");

    // gRPC callers get RESOURCE_EXHAUSTED, Trailers-Only.
    let res = send(&mesh, url, true).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");

    tokio::time::advance(Duration::from_secs(10)).await;
    for _ in 0..3 {
        assert_eq!(send(&mesh, url, false).await.status(), 200);
    }
    assert_eq!(send(&mesh, url, false).await.status(), 429);
    assert_eq!(backend.hits(), 6);
}

#[tokio::test(start_paused = true)]
async fn client_bucket_survives_a_config_push_that_keeps_it() {
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&client_config(&backend, 2, "5s"));
    let url = "http://svc:8080/x";
    for _ in 0..2 {
        assert_eq!(send(&mesh, url, false).await.status(), 200);
    }
    // Another route timeout: the cluster's bucket is the same config.
    republish(&mesh, &client_config(&backend, 2, "7s")).await;
    assert_eq!(
        send(&mesh, url, false).await.status(),
        429,
        "the push did not refill the bucket"
    );
    // A new bucket config starts a new, full bucket.
    republish(&mesh, &client_config(&backend, 5, "7s")).await;
    assert_eq!(send(&mesh, url, false).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn server_limit_applies_to_the_selected_workload() {
    let selector = "  workloadSelector:\n    labels: { app: productpage }\n";
    // The server's own mesh holds the inbound EnvoyFilter.
    let server_mesh = mesh_from_yaml(&filter("SIDECAR_INBOUND", selector, None, 2, "60s"));
    let app = |w: Workload| {
        axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .layer(server_mesh.server_rate_limit(w))
    };
    let limited = Server::start(app(
        Workload::new(9080).with_labels(Labels::new([("app", "productpage"), ("v", "1")]))
    ))
    .await
    .unwrap();
    let other = Server::start(app(
        Workload::new(9080).with_labels(Labels::new([("app", "reviews")]))
    ))
    .await
    .unwrap();
    let client = mesh_from_yaml(
        &[
            yaml::service_entry("pp", 9080, "HTTP", &[(limited.addr(), "v1")]),
            yaml::service_entry("rv", 9080, "HTTP", &[(other.addr(), "v1")]),
        ]
        .join("---\n"),
    );
    let statuses = |host: &'static str| {
        let client = client.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..3 {
                out.push(
                    send(&client, &format!("http://{host}:9080/"), false)
                        .await
                        .status()
                        .as_u16(),
                );
            }
            out
        }
    };
    assert_eq!(statuses("pp").await, [200, 200, 429]);
    assert_eq!(statuses("rv").await, [200, 200, 200], "labels not selected");
    let res = send(&client, "http://pp:9080/", false).await;
    assert_eq!(res.headers()["x-ratelimit-limit"], "2");
    assert_eq!(res.headers()["x-ratelimit-reset"], "60");
}
