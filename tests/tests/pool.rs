//! The HTTP/2 connection pool: one multiplexed connection per endpoint,
//! another when its streams run out, `maxRequestsPerConnection` and
//! `idleTimeout` enforced, closed connections replaced. Real loopback
//! sockets, paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_examples::scripted::{Action, Scripted};
use mesh_examples::yaml::service_entry;
use mesh_tower::{Mesh, MeshClient};
use tower::ServiceExt;

const CLUSTER: &str = "outbound|8080||backend.default.svc.cluster.local";

fn yaml(backend: &Scripted, pool: &str) -> String {
    let mut s = service_entry("backend", 8080, "HTTP2", &[(backend.addr(), "v1")]);
    if !pool.is_empty() {
        s.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: backend }}\nspec:\n  host: backend\n  trafficPolicy:\n    connectionPool:\n{pool}"
        ));
    }
    s
}

async fn get(client: &MeshClient) -> u16 {
    let req = http::Request::get("http://backend:8080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = client.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

async fn burst(client: &MeshClient, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.spawn(async move { get(&client).await });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), 200);
    }
}

/// (open now, opened so far).
fn connections(mesh: &Mesh) -> (usize, u64) {
    mesh.cluster_endpoints(CLUSTER).unwrap()[0]
        .http2_connections
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_http2_connection() {
    let backend = Scripted::start("b1").await.unwrap();
    backend.set_default(Action::delayed(Duration::from_millis(100)));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&backend, ""));
    let client = mesh.client();
    burst(&client, 50).await;
    assert_eq!(backend.max_in_flight(), 50, "multiplexed, not serialized");
    assert_eq!(backend.connections(), 1);
    assert_eq!(connections(&mesh), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn another_connection_opens_when_streams_run_out() {
    let backend = Scripted::start("b1").await.unwrap();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&backend, ""));
    let client = mesh.client();
    // The first request learns the server's SETTINGS (hyper's server
    // allows 200 concurrent streams).
    assert_eq!(get(&client).await, 200);
    backend.set_default(Action::delayed(Duration::from_millis(100)));
    burst(&client, 250).await;
    assert_eq!(backend.max_in_flight(), 250);
    assert_eq!(backend.connections(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_connections_caps_connections_and_queues_on_them() {
    let backend = Scripted::start("b1").await.unwrap();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&backend, "      tcp: { maxConnections: 1 }\n"));
    let client = mesh.client();
    assert_eq!(get(&client).await, 200);
    backend.set_default(Action::delayed(Duration::from_millis(100)));
    burst(&client, 250).await;
    assert_eq!(backend.connections(), 1);
    assert_eq!(backend.max_in_flight(), 200, "the server's stream limit");
}

#[tokio::test(start_paused = true)]
async fn max_concurrent_streams_opens_connections_before_the_peer_limit() {
    let backend = Scripted::start("b1").await.unwrap();
    backend.set_default(Action::delayed(Duration::from_millis(100)));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &backend,
        "      http: { maxConcurrentStreams: 10 }\n",
    ));
    let client = mesh.client();
    burst(&client, 35).await;
    assert_eq!(backend.max_in_flight(), 35);
    assert_eq!(backend.connections(), 4, "10 streams per connection");
}

#[tokio::test(start_paused = true)]
async fn max_requests_per_connection_rotates_http2_connections() {
    let backend = Scripted::start("b1").await.unwrap();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &backend,
        "      http: { maxRequestsPerConnection: 3 }\n",
    ));
    let client = mesh.client();
    for _ in 0..9 {
        assert_eq!(get(&client).await, 200);
    }
    assert_eq!(backend.connections(), 3);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        connections(&mesh),
        (0, 3),
        "a connection that served its requests closes"
    );
}

#[tokio::test(start_paused = true)]
async fn max_requests_per_connection_one_opens_a_connection_per_request() {
    let backend = Scripted::start("b1").await.unwrap();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &backend,
        "      http: { maxRequestsPerConnection: 1 }\n",
    ));
    let client = mesh.client();
    for _ in 0..5 {
        assert_eq!(get(&client).await, 200);
    }
    assert_eq!(backend.connections(), 5);
    assert_eq!(connections(&mesh).1, 5);
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_after_the_idle_timeout() {
    let backend = Scripted::start("b1").await.unwrap();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&backend, "      http: { idleTimeout: 5s }\n"));
    let client = mesh.client();
    assert_eq!(get(&client).await, 200);
    assert_eq!(connections(&mesh), (1, 1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections(&mesh), (1, 1), "not idle long enough");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(connections(&mesh), (0, 1), "closed after 5s idle");
    assert_eq!(get(&client).await, 200);
    assert_eq!(connections(&mesh), (1, 2), "a new one on demand");
}

#[tokio::test(start_paused = true)]
async fn a_connection_the_server_closed_is_replaced() {
    let backend = Scripted::start("b1").await.unwrap();
    let addr = backend.addr();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&backend, ""));
    let client = mesh.client();
    assert_eq!(get(&client).await, 200);
    drop(backend);
    // Let the client see the close.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let backend = Scripted::start_on(addr, "b1-again").await.unwrap();
    assert_eq!(get(&client).await, 200);
    assert_eq!(backend.connections(), 1);
    assert_eq!(connections(&mesh), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn requests_waiting_for_a_failed_connect_share_its_error() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mesh =
        mesh_tests::mesh_from_yaml(&service_entry("backend", 8080, "HTTP2", &[(closed, "v1")]));
    let client = mesh.client();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let client = client.clone();
        tasks.spawn(async move {
            let req = http::Request::get("http://backend:8080/")
                .body(Empty::<Bytes>::new())
                .unwrap();
            client.oneshot(req).await.unwrap_err()
        });
    }
    while let Some(e) = tasks.join_next().await {
        let e = e.unwrap();
        assert!(e.is_connect(), "{e}");
        assert_eq!(e.http_status(), 503);
    }
    assert_eq!(connections(&mesh), (0, 0));
}
