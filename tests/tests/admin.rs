//! The admin endpoint against the store and the balancer: a file source
//! changes the config, and `/config_dump`, `/clusters` and `/check_route`
//! show what the store and the runtime hold after each change, including
//! a rejected update and an ejected endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::init_tracing;
use mesh_tower::{Mesh, admin};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const SVC: &str = "outbound|8080||svc.default.svc.cluster.local";

async fn serve_admin(mesh: &Mesh) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = admin::router(mesh.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// `GET path` as raw HTTP/1.1: the status and the body as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut res = String::new();
    s.read_to_string(&mut res).await.unwrap();
    let status = res[9..12].parse().unwrap();
    let body = res.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

fn config(endpoints: &[SocketAddr]) -> String {
    let eps: Vec<_> = endpoints.iter().map(|a| (*a, "v1")).collect();
    let mut y = yaml::service_entry("svc", 8080, "HTTP", &eps);
    y.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: svc }
spec:
  hosts: [svc]
  http:
  - name: canary
    match: [{ headers: { x-canary: { exact: "1" } } }]
    route: [{ destination: { host: svc }, weight: 100 }]
    timeout: 2s
  - name: default
    route: [{ destination: { host: svc } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: svc }
spec:
  host: svc
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    outlierDetection: { consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100 }
"#,
    );
    y
}

/// The file source's id in the dump.
fn source_of(dump: &Value) -> String {
    dump["sources"][0]["source"].as_str().unwrap().to_owned()
}

fn endpoints_of(dump: &Value) -> Vec<String> {
    let set = dump["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cluster"] == SVC)
        .unwrap();
    assert_eq!(set["source"], source_of(dump));
    let mut v: Vec<String> = set["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

fn cluster_endpoints(clusters: &Value) -> Vec<(String, bool)> {
    let c = clusters["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == SVC)
        .unwrap();
    let mut v: Vec<(String, bool)> = c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["load_score"].as_f64().is_some(), "{e}");
            (
                e["address"].as_str().unwrap().to_owned(),
                e["ejected"].as_bool().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn sorted(addrs: &[SocketAddr]) -> Vec<String> {
    let mut v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.sort();
    v
}

#[tokio::test]
async fn admin_endpoints_follow_the_store_and_the_balancer() {
    init_tracing();
    let good = Server::start(axum::Router::new().route("/", get(|| async { "ok" })))
        .await
        .unwrap();
    let bad =
        Server::start(axum::Router::new().route("/", get(|| async { StatusCode::BAD_GATEWAY })))
            .await
            .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let source = FileSource::new(&path);
    let store = ConfigStore::new();
    let mesh = Mesh::new(store.clone());
    let admin = serve_admin(&mesh).await;
    let apply = |yaml: String| {
        std::fs::write(&path, yaml).unwrap();
        source.publish(&store)
    };

    // One endpoint.
    let v1 = apply(config(&[good.addr()])).unwrap();
    mesh.applied(v1).await;
    let (status, dump) = get_json(admin, "/config_dump").await;
    assert_eq!(status, 200);
    assert_eq!(dump["version"], v1.0);
    assert_eq!(endpoints_of(&dump), sorted(&[good.addr()]));
    let cluster = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == SVC)
        .unwrap();
    assert_eq!(cluster["source"], source.source_id().as_str());
    assert_eq!(cluster["version"], v1.0);
    assert_eq!(cluster["service"], "svc.default.svc.cluster.local");
    assert!(
        cluster["config"].as_str().unwrap().contains("outlier"),
        "{cluster}"
    );
    let src = &dump["sources"][0];
    assert_eq!(src["source"], source.source_id().as_str());
    assert_eq!(src["accepted_version"], v1.0);
    assert!(src["accepted_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(src["last_rejection"], Value::Null);
    assert_eq!(src["updates"]["accepted"], 1);
    assert!(!dump["listeners"].as_array().unwrap().is_empty(), "{dump}");
    assert!(!dump["route_tables"].as_array().unwrap().is_empty());
    let (_, clusters) = get_json(admin, "/clusters").await;
    assert_eq!(
        cluster_endpoints(&clusters),
        vec![(good.addr().to_string(), false)]
    );

    // An endpoint added: the store, then the balancer, have both.
    let v2 = apply(config(&[good.addr(), bad.addr()])).unwrap();
    mesh.applied(v2).await;
    let (_, dump) = get_json(admin, "/config_dump").await;
    assert_eq!(endpoints_of(&dump), sorted(&[good.addr(), bad.addr()]));
    let cluster = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == SVC)
        .unwrap();
    assert_eq!(
        cluster["version"], v1.0,
        "the cluster itself did not change"
    );
    let es = dump["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["cluster"] == SVC)
        .unwrap();
    assert_eq!(es["version"], v2.0);
    let (_, clusters) = get_json(admin, "/clusters").await;
    let mut both = vec![
        (good.addr().to_string(), false),
        (bad.addr().to_string(), false),
    ];
    both.sort();
    assert_eq!(cluster_endpoints(&clusters), both);

    // The bad endpoint's first 502 ejects it (consecutive5xxErrors: 1).
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let res = mesh
            .client()
            .oneshot(
                http::Request::get("http://svc:8080/")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        res.into_body().collect().await.unwrap();
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    let (_, clusters) = get_json(admin, "/clusters").await;
    let mut ejected = vec![
        (good.addr().to_string(), false),
        (bad.addr().to_string(), true),
    ];
    ejected.sort();
    assert_eq!(cluster_endpoints(&clusters), ejected);

    // A rejected update (an unknown load balancer) changes nothing and
    // shows in the source's status.
    let broken = config(&[good.addr()]).replace("ROUND_ROBIN", "FASTEST");
    let err = apply(broken).unwrap_err();
    let (_, dump) = get_json(admin, "/config_dump").await;
    assert_eq!(dump["version"], v2.0);
    assert_eq!(endpoints_of(&dump), sorted(&[good.addr(), bad.addr()]));
    let src = &dump["sources"][0];
    assert_eq!(src["accepted_version"], v2.0);
    let reason = src["last_rejection"]["reason"].as_str().unwrap();
    assert!(reason.contains("FASTEST"), "{reason}");
    assert!(err.to_string().contains("FASTEST"), "{err}");
    assert_eq!(src["updates"]["accepted"], 2);
    assert_eq!(src["updates"]["rejected"], 1);

    // The endpoint removed again.
    let v3 = apply(config(&[good.addr()])).unwrap();
    mesh.applied(v3).await;
    let (_, dump) = get_json(admin, "/config_dump").await;
    assert_eq!(endpoints_of(&dump), sorted(&[good.addr()]));
    // An accepted update clears the last rejection (as Envoy's CSDS
    // `error_state`); the count stays.
    assert_eq!(dump["sources"][0]["last_rejection"], Value::Null);
    assert_eq!(dump["sources"][0]["updates"]["rejected"], 1);
    let (_, clusters) = get_json(admin, "/clusters").await;
    assert_eq!(
        cluster_endpoints(&clusters),
        vec![(good.addr().to_string(), false)]
    );

    // The offline route check on the live config.
    let (status, check) = get_json(
        admin,
        "/check_route?authority=svc&port=8080&path=/x&header=x-canary:1",
    )
    .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["route_name"], "canary");
    assert_eq!(check["timeout_ms"], 2000);
    assert_eq!(check["destinations"][0]["cluster"], SVC);
    assert_eq!(check["destinations"][0]["share"], 1.0);
    assert_eq!(check["destinations"][0]["endpoints"], 1);
    let (status, check) = get_json(admin, "/check_route?authority=svc:8080&method=POST").await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["route_name"], "default");
    let (status, check) = get_json(admin, "/check_route?authority=nowhere&port=8080").await;
    assert_eq!(status, 404, "{check}");
    assert!(check["error"].as_str().is_some());
    let (status, check) = get_json(admin, "/check_route?path=/").await;
    assert_eq!(status, 400);
    assert!(
        check["error"]
            .as_str()
            .unwrap()
            .contains("authority: required")
    );
}
