//! Circuit breaking from `DestinationRule.trafficPolicy.connectionPool`,
//! over real loopback sockets on paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_examples::scripted::{Action, Scripted};
use mesh_examples::yaml::service_entry;
use mesh_tower::MeshClient;
use tower::ServiceExt;

const CLUSTER: &str = "outbound|8080||backend.default.svc.cluster.local";

fn yaml(backend: &Scripted, protocol: &str, pool: &str) -> String {
    format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: backend }}\nspec:\n  host: backend\n  trafficPolicy:\n    connectionPool:\n{pool}",
        service_entry("backend", 8080, protocol, &[(backend.addr(), "v1")])
    )
}

/// Sends `n` concurrent GETs and returns (successes, circuit-open errors,
/// other errors).
async fn burst(client: &MeshClient, n: usize) -> (usize, usize, Vec<String>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.spawn(async move {
            let req = http::Request::get("http://backend:8080/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            match client.oneshot(req).await {
                Ok(res) => {
                    let status = res.status();
                    res.into_body().collect().await.unwrap();
                    Ok(status)
                }
                Err(e) => Err(e),
            }
        });
    }
    let (mut ok, mut open, mut other) = (0, 0, Vec::new());
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(s) if s == 200 => ok += 1,
            Ok(s) => other.push(format!("status {s}")),
            Err(e) if e.is_circuit_open() => {
                assert_eq!(e.http_status(), 503);
                open += 1;
            }
            Err(e) => other.push(e.to_string()),
        }
    }
    (ok, open, other)
}

#[tokio::test(start_paused = true)]
async fn http2_max_requests_admits_exactly_ten_and_fails_forty_fast() {
    let backend = Scripted::start("b1").await.unwrap();
    backend.set_default(Action::delayed(Duration::from_secs(1)));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &backend,
        "HTTP2",
        "      http: { http2MaxRequests: 10 }\n",
    ));
    let client = mesh.client();

    let started = tokio::time::Instant::now();
    let (ok, open, other) = burst(&client, 50).await;
    assert_eq!((ok, open), (10, 40), "other outcomes: {other:?}");
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(backend.max_in_flight(), 10);
    assert_eq!(backend.hits(), 10, "overflowing requests are never sent");
    assert!(started.elapsed() < Duration::from_secs(2));

    let stats = mesh.cluster_stats(CLUSTER).unwrap();
    assert_eq!(stats.overflow_requests, 40);
    assert_eq!(stats.requests_in_flight, 0, "permits are freed");

    // The limit frees up as responses finish: another burst does the same.
    let (ok, open, _) = burst(&client, 50).await;
    assert_eq!((ok, open), (10, 40));
    assert_eq!(mesh.cluster_stats(CLUSTER).unwrap().overflow_requests, 80);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_errors_fail_fast_without_waiting_for_the_backend() {
    let backend = Scripted::start("b1").await.unwrap();
    backend.set_default(Action::delayed(Duration::from_secs(10)));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &backend,
        "HTTP2",
        "      http: { http2MaxRequests: 1 }\n",
    ));
    let client = mesh.client();
    let slow = tokio::spawn({
        let client = client.clone();
        async move {
            let req = http::Request::get("http://backend:8080/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client.oneshot(req).await.map(|r| r.status())
        }
    });
    while backend.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let t = tokio::time::Instant::now();
    let req = http::Request::get("http://backend:8080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = client.clone().oneshot(req).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    assert_eq!(t.elapsed(), Duration::ZERO, "no wait at all");
    assert_eq!(
        err.to_string(),
        format!("circuit open: cluster {CLUSTER:?}: 1 requests in flight (http2MaxRequests)")
    );
    assert_eq!(slow.await.unwrap().unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn http1_max_connections_queues_up_to_max_pending_then_overflows() {
    let backend = Scripted::start("b1").await.unwrap();
    backend.set_default(Action::delayed(Duration::from_millis(100)));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &backend,
        "HTTP",
        "      tcp: { maxConnections: 2 }\n      http: { http1MaxPendingRequests: 3 }\n",
    ));
    let client = mesh.client();
    // 2 go at once, 3 wait for a connection, 5 overflow.
    let (ok, open, other) = burst(&client, 10).await;
    assert_eq!((ok, open), (5, 5), "{other:?}");
    assert_eq!(backend.max_in_flight(), 2);
    assert!(
        backend.connections() <= 2,
        "{} connections",
        backend.connections()
    );
    let stats = mesh.cluster_stats(CLUSTER).unwrap();
    assert_eq!((stats.overflow_pending, stats.requests_pending), (5, 0));
}

#[tokio::test(start_paused = true)]
async fn breaker_state_survives_a_config_push_that_keeps_the_limits() {
    let backend = Scripted::start("b1").await.unwrap();
    backend.set_default(Action::delayed(Duration::from_secs(1)));
    let text = yaml(&backend, "HTTP2", "      http: { http2MaxRequests: 5 }\n");
    let mesh = mesh_tests::mesh_from_yaml(&text);
    let client = mesh.client();
    let first = tokio::spawn({
        let client = client.clone();
        async move { burst(&client, 5).await }
    });
    while backend.in_flight() < 5 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The same cluster again, with a VirtualService added: the cluster's
    // 5 requests in flight still count.
    mesh_tests::republish(
        &mesh,
        &format!(
            "{text}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: backend }}\nspec:\n  hosts: [backend]\n  http:\n  - route:\n    - destination: {{ host: backend }}\n"
        ),
    )
    .await;
    let (ok, open, _) = burst(&client, 3).await;
    assert_eq!((ok, open), (0, 3));
    assert_eq!(first.await.unwrap().0, 5);
}
