//! Outlier detection from `DestinationRule.trafficPolicy.outlierDetection`,
//! over real loopback sockets on paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_examples::scripted::{Action, SERVED_BY, Scripted};
use mesh_examples::yaml::service_entry;
use mesh_tower::{Mesh, MeshClient};
use tower::ServiceExt;

const CLUSTER: &str = "outbound|8080||backend.default.svc.cluster.local";

fn yaml(addrs: &[SocketAddr], outlier: &str) -> String {
    let eps: Vec<(SocketAddr, &str)> = addrs.iter().map(|a| (*a, "v1")).collect();
    format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: backend }}\nspec:\n  host: backend\n  trafficPolicy:\n    loadBalancer: {{ simple: ROUND_ROBIN }}\n    outlierDetection:\n{outlier}",
        service_entry("backend", 8080, "HTTP", &eps)
    )
}

/// Sends one GET; returns the status and the backend that answered, or
/// the error.
async fn send(client: &MeshClient) -> Result<(u16, String), mesh_tower::Error> {
    let req = http::Request::get("http://backend:8080/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = client.clone().oneshot(req).await?;
    let by = res
        .headers()
        .get(SERVED_BY)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Ok((res.status().as_u16(), by))
}

fn ejected(mesh: &Mesh) -> Vec<bool> {
    mesh.cluster_endpoints(CLUSTER)
        .unwrap()
        .iter()
        .map(|e| e.ejected)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn five_consecutive_5xx_eject_an_endpoint_until_its_time_is_up() {
    let good = Scripted::start("good").await.unwrap();
    let good2 = Scripted::start("good2").await.unwrap();
    let bad = Scripted::start("bad").await.unwrap();
    bad.set_default(Action::status(503));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &[good.addr(), good2.addr(), bad.addr()],
        // Istio's consecutive5xxErrors default, 5.
        "      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n",
    ));
    let client = mesh.client();
    // Round robin: every third request reaches `bad`; its fifth 503 ejects it.
    for _ in 0..15 {
        send(&client).await.unwrap();
    }
    assert_eq!(bad.hits(), 5);
    assert_eq!(ejected(&mesh), [false, false, true]);
    let stats = mesh.cluster_stats(CLUSTER).unwrap();
    assert_eq!((stats.ejected, stats.ejections_total), (1, 1));

    for _ in 0..60 {
        assert_eq!(send(&client).await.unwrap().0, 200);
    }
    assert_eq!(bad.hits(), 5, "an ejected endpoint gets no traffic");

    // Back after baseEjectionTime, at the next interval sweep.
    tokio::time::sleep(Duration::from_secs(31)).await;
    bad.set_default(Action::status(200));
    for _ in 0..30 {
        assert_eq!(send(&client).await.unwrap().0, 200);
    }
    assert!(bad.hits() >= 5 + 9, "bad is back: {} hits", bad.hits());
    assert_eq!(ejected(&mesh), [false, false, false]);
}

#[tokio::test(start_paused = true)]
async fn trailers_only_grpc_unavailable_counts_as_a_5xx() {
    let good = Scripted::start("good").await.unwrap();
    let bad = Scripted::start("bad").await.unwrap();
    // HTTP 200 with grpc-status 14 in its only HEADERS frame.
    bad.set_default(Action::GrpcTrailersOnly(14));
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &[good.addr(), bad.addr()],
        "      consecutive5xxErrors: 3\n      interval: 1s\n      maxEjectionPercent: 100\n",
    ));
    let client = mesh.client();
    for _ in 0..10 {
        send(&client).await.unwrap();
    }
    assert_eq!(bad.hits(), 3, "ejected after its third UNAVAILABLE");
    assert_eq!(ejected(&mesh), [false, true]);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_refuses_connections_is_ejected_and_avoided() {
    let good = Scripted::start("good").await.unwrap();
    // A port nothing listens on.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &[good.addr(), closed],
        "      consecutiveGatewayErrors: 2\n      consecutive5xxErrors: 0\n      maxEjectionPercent: 50\n",
    ));
    let client = mesh.client();
    let mut failures = 0;
    // 20 s: within the first ejection (baseEjectionTime 30s).
    for _ in 0..10 {
        // Past the endpoint's not-ready backoff after a failed connect (1
        // s), so the balancer tries it again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        match send(&client).await {
            Ok((200, by)) => assert_eq!(by, "good"),
            Ok((s, _)) => panic!("status {s}"),
            Err(e) => {
                assert!(e.is_connect(), "{e}");
                failures += 1;
            }
        }
    }
    // Istio's default retry policy (connect-failure) resends both failed
    // attempts to the good endpoint, so the caller sees none of them.
    assert_eq!(failures, 0, "connect failures are retried elsewhere");
    assert_eq!(
        ejected(&mesh),
        [false, true],
        "two connect failures eject it"
    );
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_keeps_most_endpoints_in_rotation() {
    let backends = [
        Scripted::start("a").await.unwrap(),
        Scripted::start("b").await.unwrap(),
        Scripted::start("c").await.unwrap(),
        Scripted::start("d").await.unwrap(),
    ];
    for b in &backends {
        b.set_default(Action::status(500));
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(Scripted::addr).collect();
    // maxEjectionPercent 50 of 4: at most two ejected.
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&addrs, "      maxEjectionPercent: 50\n"));
    let client = mesh.client();
    for _ in 0..100 {
        send(&client).await.unwrap();
    }
    let stats = mesh.cluster_stats(CLUSTER).unwrap();
    assert_eq!(stats.ejected, 2);
    assert!(stats.ejections_overflow > 0);
}

#[tokio::test(start_paused = true)]
async fn ejections_survive_a_config_push_that_keeps_the_cluster() {
    let good = Scripted::start("good").await.unwrap();
    let bad = Scripted::start("bad").await.unwrap();
    bad.set_default(Action::status(502));
    let text = yaml(
        &[good.addr(), bad.addr()],
        "      consecutive5xxErrors: 2\n      maxEjectionPercent: 50\n",
    );
    let mesh = mesh_tests::mesh_from_yaml(&text);
    let client = mesh.client();
    for _ in 0..4 {
        send(&client).await.unwrap();
    }
    assert_eq!(ejected(&mesh), [false, true]);
    // The same cluster with a VirtualService added.
    mesh_tests::republish(
        &mesh,
        &format!(
            "{text}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: backend }}\nspec:\n  hosts: [backend]\n  http:\n  - route:\n    - destination: {{ host: backend }}\n"
        ),
    )
    .await;
    assert_eq!(ejected(&mesh), [false, true]);
    let hits = bad.hits();
    for _ in 0..10 {
        assert_eq!(send(&client).await.unwrap().0, 200);
    }
    assert_eq!(bad.hits(), hits);
}
