//! Fault injection from VirtualService `fault`, over real loopback
//! sockets with scripted backends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_examples::scripted::Scripted;
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml, within_sigmas};
use tower::ServiceExt;

fn config(backend: &Scripted, protocol: &str, fault: &str) -> String {
    format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: svc }}\nspec:\n  hosts: [svc]\n  http:\n  - route: [{{ destination: {{ host: svc }} }}]\n    fault:\n{fault}",
        yaml::service_entry("svc", 8080, protocol, &[(backend.addr(), "v1")])
    )
}

async fn send(mesh: &mesh_tower::Mesh, grpc: bool) -> http::Response<Bytes> {
    let mut req = http::Request::get("http://svc:8080/x");
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

#[tokio::test(start_paused = true)]
async fn injected_delay_holds_the_request_then_sends_it() {
    init_tracing();
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&config(
        &backend,
        "HTTP",
        "      delay: { fixedDelay: 7s, percentage: { value: 100 } }\n",
    ));
    let start = tokio::time::Instant::now();
    let res = send(&mesh, false).await;
    assert_eq!(res.status(), 200);
    assert!(
        start.elapsed() >= Duration::from_secs(7),
        "answered after {:?}",
        start.elapsed()
    );
    assert_eq!(backend.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn injected_http_abort_never_reaches_the_backend() {
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&config(
        &backend,
        "HTTP",
        "      abort: { httpStatus: 418, percentage: { value: 100 } }\n",
    ));
    let res = send(&mesh, false).await;
    assert_eq!(res.status(), 418);
    assert_eq!(res.body(), "fault filter abort");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn injected_grpc_abort_is_trailers_only() {
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&config(
        &backend,
        "GRPC",
        "      abort: { grpcStatus: RESOURCE_EXHAUSTED, percentage: { value: 100 } }\n",
    ));
    let res = send(&mesh, true).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert!(res.body().is_empty());
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(start_paused = true)]
async fn abort_percentages_select_their_share() {
    let backend = Scripted::start("b").await.unwrap();
    for (percent, p) in [(0.0, 0.0), (100.0, 1.0), (50.0, 0.5)] {
        let mesh = mesh_from_yaml(&config(
            &backend,
            "HTTP",
            &format!("      abort: {{ httpStatus: 503, percentage: {{ value: {percent} }} }}\n"),
        ));
        let before = backend.hits();
        let n = 2000;
        let mut aborted = 0;
        for _ in 0..n {
            if send(&mesh, false).await.status() == 503 {
                aborted += 1;
            }
        }
        assert!(
            within_sigmas(aborted, n, p, 5.0),
            "{percent}%: {aborted} of {n} aborted"
        );
        assert_eq!(
            backend.hits() - before,
            n - aborted,
            "the rest reached the backend"
        );
    }
}

/// Istio applies faults before the router's retries: an injected abort
/// is an answer, never retried. With retries on 5xx below the fault, an
/// abort that went through them would be retried to success almost
/// always; above them the aborted share stays the configured one.
#[tokio::test(start_paused = true)]
async fn injected_aborts_are_not_retried() {
    let backend = Scripted::start("b").await.unwrap();
    let mesh = mesh_from_yaml(&format!(
        "{}    retries: {{ attempts: 3, retryOn: 5xx }}\n",
        config(
            &backend,
            "HTTP",
            "      abort: { httpStatus: 503, percentage: { value: 50 } }\n",
        )
    ));
    let n = 1000;
    let mut aborted = 0;
    for _ in 0..n {
        let res = send(&mesh, false).await;
        if res.status() == 503 {
            assert_eq!(res.body(), "fault filter abort");
            aborted += 1;
        }
    }
    assert!(
        within_sigmas(aborted, n, 0.5, 5.0),
        "{aborted} of {n} aborted"
    );
    assert_eq!(
        backend.hits(),
        n - aborted,
        "one attempt per request that passed"
    );
}
