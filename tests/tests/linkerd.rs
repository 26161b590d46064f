//! Linkerd ServiceProfile and SMI TrafficSplit, from the same file as the
//! Istio kinds, over real loopback sockets with scripted backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_examples::scripted::{Action, SERVED_BY, Scripted};
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml, within_sigmas};
use tower::ServiceExt;

async fn send(
    mesh: &mesh_tower::Mesh,
    method: &str,
    url: &str,
) -> Result<http::Response<Bytes>, mesh_tower::Error> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = mesh.client().oneshot(req).await?;
    let (parts, body) = res.into_parts();
    Ok(http::Response::from_parts(
        parts,
        body.collect().await.unwrap().to_bytes(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_90_10_lands_within_5_sigma() {
    init_tracing();
    let v1 = Scripted::start("v1").await.unwrap();
    let v2 = Scripted::start("v2").await.unwrap();
    let config = [
        yaml::service_entry("web", 8080, "HTTP", &[(v1.addr(), "v1")]),
        yaml::service_entry("web-v1", 8080, "HTTP", &[(v1.addr(), "v1")]),
        yaml::service_entry("web-v2", 8080, "HTTP", &[(v2.addr(), "v2")]),
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: { name: web }\nspec:\n  service: web\n  backends:\n  - { service: web-v1, weight: 900m }\n  - { service: web-v2, weight: 100m }\n".to_owned(),
    ]
    .join("---\n");
    let mesh = mesh_from_yaml(&config);
    let n = 4000u64;
    let mut to_v2 = 0;
    for _ in 0..n {
        let res = send(&mesh, "GET", "http://web:8080/").await.unwrap();
        assert_eq!(res.status(), 200);
        if res.headers()[SERVED_BY] == "v2" {
            to_v2 += 1;
        }
    }
    assert!(
        within_sigmas(to_v2, n, 0.1, 5.0),
        "v2 got {to_v2} of {n}, expected 10%"
    );
    assert_eq!(v1.hits() + v2.hits(), n);
}

fn profile_config(backend: &Scripted) -> String {
    format!(
        "{}---\n{}",
        yaml::service_entry("web", 8080, "HTTP", &[(backend.addr(), "v1")]),
        r#"apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: web.default.svc.cluster.local, namespace: default }
spec:
  routes:
  - name: GET /books
    condition: { all: [{ method: GET }, { pathRegex: "/books(/.*)?" }] }
    isRetryable: true
    timeout: 300ms
  - name: POST /books
    condition: { method: POST }
"#
    )
}

#[tokio::test(start_paused = true)]
async fn service_profile_route_timeout_bounds_the_call() {
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&profile_config(&backend));
    backend.set_default(Action::delayed(Duration::from_secs(2)));
    let start = tokio::time::Instant::now();
    let err = send(&mesh, "GET", "http://web:8080/books/1")
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "gave up at the route timeout, after {:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn retryable_routes_are_retried_and_others_are_not() {
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&profile_config(&backend));
    backend.push([Action::status(503), Action::status(503)]);
    let res = send(&mesh, "GET", "http://web:8080/books/7").await.unwrap();
    assert_eq!(res.status(), 200, "retried until it succeeded");
    assert_eq!(backend.hits(), 3);

    backend.push([Action::status(503)]);
    let res = send(&mesh, "POST", "http://web:8080/books").await.unwrap();
    assert_eq!(res.status(), 503, "not isRetryable: not retried");
    assert_eq!(backend.hits(), 4);
}
