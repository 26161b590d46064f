//! Per-resource xDS status through CSDS (`envoy.service.status.v3`, gRFC
//! A40) over a real loopback gRPC connection, and the same as JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use mesh_xds::csds::{self, StatusSource};
use mesh_xds::pb::envoy::admin::v3::ClientResourceStatus;
use mesh_xds::pb::envoy::config::core::v3::Node;
use mesh_xds::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use mesh_xds::pb::envoy::service::status::v3::{ClientStatusRequest, ConfigStatus};
use mesh_xds::pb::envoy::r#type::matcher::v3::NodeMatcher;
use mesh_xds::pb::google::protobuf::Any;
use mesh_xds::{ResourceState, ResourceStatus, TypeUrl};

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn status(type_url: TypeUrl, name: &str, state: ResourceState) -> ResourceStatus {
    ResourceStatus {
        type_url,
        name: name.into(),
        state,
        version: None,
        last_updated: None,
        cached: false,
        error: None,
        error_at: None,
        error_version: None,
        ignored_fields: Vec::new(),
    }
}

/// One of each state, as the client would report them.
fn statuses() -> Vec<ResourceStatus> {
    vec![
        ResourceStatus {
            version: Some("7".into()),
            last_updated: Some(at(1_796_100_000)),
            cached: true,
            ignored_fields: vec!["http_filters[0].typed_config.stat_prefix".into()],
            ..status(
                TypeUrl::Cluster,
                "outbound|9080||reviews.default.svc.cluster.local",
                ResourceState::Acked,
            )
        },
        ResourceStatus {
            version: Some("3".into()),
            last_updated: Some(at(1_796_000_000)),
            cached: true,
            error: Some(
                "virtual_hosts[0].routes[1].route.weighted_clusters: weights sum to 0".into(),
            ),
            error_at: Some(at(1_796_100_001)),
            error_version: Some("4".into()),
            ..status(
                TypeUrl::Listener,
                "reviews.default.svc.cluster.local:9080",
                ResourceState::Nacked,
            )
        },
        status(
            TypeUrl::Listener,
            "echo.echo.svc.cluster.local:7070",
            ResourceState::Requested,
        ),
        status(
            TypeUrl::ClusterLoadAssignment,
            "gone",
            ResourceState::DoesNotExist,
        ),
        status(TypeUrl::RouteConfiguration, "slow", ResourceState::Timeout),
        ResourceStatus {
            error: Some("server: permission denied".into()),
            error_at: Some(at(1_796_100_002)),
            ..status(TypeUrl::Cluster, "denied", ResourceState::ReceivedError)
        },
    ]
}

fn any(type_url: TypeUrl, bytes: &[u8]) -> Any {
    Any {
        type_url: type_url.as_str().into(),
        value: bytes.to_vec(),
    }
}

struct FakeClient {
    statuses: Mutex<Vec<ResourceStatus>>,
}

impl StatusSource for FakeClient {
    fn node(&self) -> Node {
        Node {
            id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
            cluster: "a".into(),
            ..Node::default()
        }
    }

    fn status(&self) -> Vec<ResourceStatus> {
        self.statuses.lock().unwrap().clone()
    }

    fn raw_resources(&self) -> Vec<(TypeUrl, String, Option<Any>)> {
        vec![
            (
                TypeUrl::Listener,
                "reviews.default.svc.cluster.local:9080".into(),
                Some(any(TypeUrl::Listener, b"lds-v3")),
            ),
            (
                TypeUrl::Cluster,
                "outbound|9080||reviews.default.svc.cluster.local".into(),
                Some(any(TypeUrl::Cluster, b"cds-v7")),
            ),
            (
                TypeUrl::Listener,
                "echo.echo.svc.cluster.local:7070".into(),
                None,
            ),
        ]
    }
}

async fn serve(
    source: Arc<FakeClient>,
) -> ClientStatusDiscoveryServiceClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(csds::server(source))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    ClientStatusDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

#[tokio::test]
async fn fetch_reports_every_resource_with_its_state_version_error_and_value() {
    let source = Arc::new(FakeClient {
        statuses: Mutex::new(statuses()),
    });
    let mut client = serve(source).await;
    let res = client
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.config.len(), 1);
    let c = &res.config[0];
    assert_eq!(
        c.node.as_ref().unwrap().id,
        "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"
    );
    let got: Vec<(&str, &str, ClientResourceStatus)> = c
        .generic_xds_configs
        .iter()
        .map(|g| {
            (
                g.type_url.rsplit('.').next().unwrap(),
                g.name.as_str(),
                ClientResourceStatus::try_from(g.client_status).unwrap(),
            )
        })
        .collect();
    // Cascade order, then name.
    assert_eq!(
        got,
        [
            (
                "Listener",
                "echo.echo.svc.cluster.local:7070",
                ClientResourceStatus::Requested
            ),
            (
                "Listener",
                "reviews.default.svc.cluster.local:9080",
                ClientResourceStatus::Nacked
            ),
            ("RouteConfiguration", "slow", ClientResourceStatus::Timeout),
            ("Cluster", "denied", ClientResourceStatus::ReceivedError),
            (
                "Cluster",
                "outbound|9080||reviews.default.svc.cluster.local",
                ClientResourceStatus::Acked
            ),
            (
                "ClusterLoadAssignment",
                "gone",
                ClientResourceStatus::DoesNotExist
            ),
        ]
    );
    for g in &c.generic_xds_configs {
        assert_eq!(
            g.config_status,
            ConfigStatus::Unknown as i32,
            "client side: not set"
        );
        assert!(!g.is_static_resource);
    }

    let nacked = &c.generic_xds_configs[1];
    assert_eq!(
        nacked.version_info, "3",
        "the version in use, not the rejected one"
    );
    assert_eq!(nacked.last_updated.as_ref().unwrap().seconds, 1_796_000_000);
    assert_eq!(
        nacked.xds_config.as_ref().unwrap().value,
        b"lds-v3",
        "the cached value"
    );
    let e = nacked.error_state.as_ref().unwrap();
    assert_eq!(
        e.details,
        "virtual_hosts[0].routes[1].route.weighted_clusters: weights sum to 0"
    );
    assert_eq!(e.version_info, "4");
    assert_eq!(
        e.last_update_attempt.as_ref().unwrap().seconds,
        1_796_100_001
    );

    let acked = &c.generic_xds_configs[4];
    assert_eq!(acked.version_info, "7");
    assert_eq!(acked.xds_config.as_ref().unwrap().value, b"cds-v7");
    assert!(acked.error_state.is_none());

    let requested = &c.generic_xds_configs[0];
    assert!(requested.xds_config.is_none());
    assert!(requested.last_updated.is_none());
    assert_eq!(requested.version_info, "");

    let denied = &c.generic_xds_configs[3];
    assert_eq!(
        denied.error_state.as_ref().unwrap().details,
        "server: permission denied"
    );
    assert!(denied.xds_config.is_none());
}

#[tokio::test]
async fn contents_can_be_excluded_and_node_matchers_are_refused() {
    let source = Arc::new(FakeClient {
        statuses: Mutex::new(statuses()),
    });
    let mut client = serve(source).await;
    let res = client
        .fetch_client_status(ClientStatusRequest {
            exclude_resource_contents: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let c = &res.config[0];
    assert_eq!(c.generic_xds_configs.len(), 6);
    assert!(c.generic_xds_configs.iter().all(|g| g.xds_config.is_none()));

    let e = client
        .fetch_client_status(ClientStatusRequest {
            node_matchers: vec![NodeMatcher::default()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("node_matchers are not supported"),
        "{e}"
    );
}

#[tokio::test]
async fn stream_answers_each_request_with_the_status_of_that_moment() {
    let source = Arc::new(FakeClient {
        statuses: Mutex::new(vec![status(
            TypeUrl::Listener,
            "l",
            ResourceState::Requested,
        )]),
    });
    let mut client = serve(Arc::clone(&source)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut responses = client
        .stream_client_status(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();

    tx.send(ClientStatusRequest::default()).await.unwrap();
    let first = responses.next().await.unwrap().unwrap();
    assert_eq!(
        first.config[0].generic_xds_configs[0].client_status,
        ClientResourceStatus::Requested as i32
    );

    source.statuses.lock().unwrap()[0] = ResourceStatus {
        version: Some("1".into()),
        last_updated: Some(at(5)),
        cached: true,
        ..status(TypeUrl::Listener, "l", ResourceState::Acked)
    };
    tx.send(ClientStatusRequest::default()).await.unwrap();
    let second = responses.next().await.unwrap().unwrap();
    let g = &second.config[0].generic_xds_configs[0];
    assert_eq!(g.client_status, ClientResourceStatus::Acked as i32);
    assert_eq!(g.version_info, "1");

    drop(tx);
    assert!(
        responses.next().await.is_none(),
        "the stream ends with the requests"
    );
}

/// A request stream from a bounded channel.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<ClientStatusRequest>,
) -> impl futures::Stream<Item = ClientStatusRequest> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[test]
fn status_json_lists_the_same_resources_for_the_admin_endpoint() {
    let source = FakeClient {
        statuses: Mutex::new(statuses()),
    };
    let j = csds::status_json(&source.node(), &source.status());
    assert_eq!(
        j["node"]["id"],
        "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local"
    );
    assert_eq!(j["node"]["cluster"], "a");
    let r = j["resources"].as_array().unwrap();
    assert_eq!(r.len(), 6);
    assert_eq!(
        r[1],
        serde_json::json!({
            "type": "Listener",
            "type_url": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": "reviews.default.svc.cluster.local:9080",
            "status": "NACKED",
            "version": "3",
            "last_updated": "2026-11-30T00:53:20.000Z",
            "cached": true,
            "error": {
                "details": "virtual_hosts[0].routes[1].route.weighted_clusters: weights sum to 0",
                "version": "4",
                "at": "2026-12-01T04:40:01.000Z",
            },
            "ignored_fields": [],
        })
    );
    assert_eq!(r[4]["status"], "ACKED");
    assert_eq!(
        r[4]["ignored_fields"],
        serde_json::json!(["http_filters[0].typed_config.stat_prefix"])
    );
    assert_eq!(r[4]["error"], serde_json::Value::Null);
    let states: Vec<&str> = r.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        [
            "REQUESTED",
            "NACKED",
            "TIMEOUT",
            "RECEIVED_ERROR",
            "ACKED",
            "DOES_NOT_EXIST"
        ]
    );
}

/// The ADS client is a `StatusSource`: CSDS shows what it watches, as the
/// cascade arrives and when the server sends an invalid update.
#[tokio::test(start_paused = true)]
async fn csds_over_the_real_client_follows_the_cascade_and_a_nack() {
    use mesh_tests::xds_script::{
        self, ScriptedAds, cluster, invalid_cluster, listener, response, route,
    };

    let server = ScriptedAds::start();
    let store = mesh_core::ConfigStore::new();
    let client = mesh_xds::XdsClient::start_with(
        xds_script::config(1, mesh_xds::config::Protocol::StateOfTheWorld),
        store,
        mesh_xds::client::ClientOptions {
            connector: Some(xds_script::connector(vec![Arc::clone(&server)])),
            decoder: None,
        },
    );
    let _watch = client.watch_listener("svc:80");
    let source = Arc::new(client.clone());
    let fetch = || {
        let c = csds::client_config(
            StatusSource::node(&*source),
            &StatusSource::status(&*source),
            StatusSource::raw_resources(&*source),
            true,
        );
        c.generic_xds_configs
            .into_iter()
            .map(|g| {
                let status = ClientResourceStatus::try_from(g.client_status).unwrap();
                (
                    g.name,
                    status,
                    g.version_info,
                    g.error_state.map(|e| e.details),
                )
            })
            .collect::<Vec<_>>()
    };

    let mut s = server.sotw_stream().await;
    assert_eq!(s.recv().await.resource_names, ["svc:80"]);
    assert_eq!(
        fetch(),
        [(
            "svc:80".to_owned(),
            ClientResourceStatus::Requested,
            String::new(),
            None
        )]
    );
    assert_eq!(source.node().id, "node-1");

    s.send(response(
        TypeUrl::Listener,
        "1",
        "l1",
        vec![listener("svc:80", "rt")],
    ))
    .await;
    s.recv().await; // ACK
    s.recv().await; // RDS request
    s.send(response(
        TypeUrl::RouteConfiguration,
        "1",
        "r1",
        vec![route("rt", &["c"])],
    ))
    .await;
    s.recv().await; // ACK
    s.recv().await; // CDS request
    s.send(response(
        TypeUrl::Cluster,
        "1",
        "c1",
        vec![cluster("c", "c")],
    ))
    .await;
    s.recv().await; // ACK
    s.recv().await; // EDS request
    let got = fetch();
    let acked = |n: &str| {
        (
            n.to_owned(),
            ClientResourceStatus::Acked,
            "1".to_owned(),
            None,
        )
    };
    assert_eq!(
        got,
        [
            acked("svc:80"),
            acked("rt"),
            acked("c"),
            (
                "c".to_owned(),
                ClientResourceStatus::Requested,
                String::new(),
                None
            ),
        ]
    );

    s.send(response(
        TypeUrl::Cluster,
        "2",
        "c2",
        vec![invalid_cluster("c")],
    ))
    .await;
    let nack = s.recv().await;
    assert!(nack.error_detail.is_some());
    let got = fetch();
    let (name, status, version, error) = &got[2];
    assert_eq!(
        (name.as_str(), *status),
        ("c", ClientResourceStatus::Nacked)
    );
    assert_eq!(version, "1", "the cached version stays in use");
    assert!(
        error.as_deref().is_some_and(|e| e.contains("choice_count")),
        "{error:?}"
    );
}

/// The mesh with its one subscriber: an `xds:///` client watches its
/// listener while it lives, calls that xDS state cannot route fail with
/// 503 / UNAVAILABLE naming the listener, its state and the node, and the
/// admin router's `/xds_status` shows the same state.
#[tokio::test(start_paused = true)]
async fn mesh_clients_watch_their_listener_and_xds_errors_name_resource_and_node() {
    use http_body_util::BodyExt;
    use mesh_tests::xds_script::{self, ScriptedAds};
    use tower::ServiceExt;

    let server = ScriptedAds::start();
    let store = mesh_core::ConfigStore::new();
    let client = mesh_xds::XdsClient::start_with(
        xds_script::config(1, mesh_xds::config::Protocol::StateOfTheWorld),
        store.clone(),
        mesh_xds::client::ClientOptions {
            connector: Some(xds_script::connector(vec![Arc::clone(&server)])),
            decoder: None,
        },
    );
    let mesh = mesh_tower::Mesh::builder(store).with_xds(client).build();
    assert!(mesh.xds().is_some());

    let svc = mesh
        .client_for("xds:///svc.ns.svc.cluster.local:80")
        .unwrap();
    let mut s = server.sotw_stream().await;
    let first = s.recv().await;
    assert_eq!(first.type_url, TypeUrl::Listener.as_str());
    assert_eq!(first.resource_names, ["svc.ns.svc.cluster.local:80"]);

    let call = |c: mesh_tower::MeshClient| async move {
        let req = http::Request::get("/hello")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        c.oneshot(req).await.unwrap_err()
    };
    let e = call(svc.clone()).await;
    assert!(e.is_xds_unavailable(), "{e}");
    assert_eq!(e.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
    assert_eq!(
        e.to_string(),
        "xds: listener \"svc.ns.svc.cluster.local:80\" has not been received yet (REQUESTED; node \"node-1\")"
    );

    // The does-not-exist timer (15 s on a connected stream, A3.1).
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    let e = call(svc.clone()).await;
    assert_eq!(
        e.to_string(),
        "xds: listener \"svc.ns.svc.cluster.local:80\" does not exist (DOES_NOT_EXIST; node \"node-1\")"
    );

    let admin = mesh_tower::admin::router(mesh.clone());
    let res = admin
        .oneshot(
            http::Request::get("/xds_status")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["node"]["id"], "node-1");
    assert_eq!(j["resources"][0]["name"], "svc.ns.svc.cluster.local:80");
    assert_eq!(j["resources"][0]["status"], "DOES_NOT_EXIST");

    // Dropping the last client of the target unsubscribes its listener:
    // nothing is watched any more, so the stream closes (rule A1.12).
    drop(svc);
    s.expect_closed(std::time::Duration::from_secs(5)).await;

    // A mesh without a subscriber has no /xds_status.
    let plain = mesh_tower::Mesh::new(mesh_core::ConfigStore::new());
    let res = mesh_tower::admin::router(plain)
        .oneshot(
            http::Request::get("/xds_status")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::NOT_FOUND);
}
