//! The ADS server over the file source, as `mesh serve-xds` runs it: a
//! SotW and a delta stream open on the same server, the file is edited,
//! and both streams get the push; an invalid edit pushes nothing and the
//! last good config stays served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_xds::TypeUrl;
use mesh_xds::pb::envoy::config::core::v3::Node;
use mesh_xds::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use mesh_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_xds::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use mesh_xds::server::AdsServer;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn yaml(w1: u32, w2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  ports: [{{ number: 9080, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints:
  - {{ address: 127.0.0.1, ports: {{ http: 7001 }}, labels: {{ version: v1 }} }}
  - {{ address: 127.0.0.2, ports: {{ http: 7002 }}, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: reviews }}
spec:
  host: reviews
  subsets:
  - {{ name: v1, labels: {{ version: v1 }} }}
  - {{ name: v2, labels: {{ version: v2 }} }}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews }}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{ destination: {{ host: reviews, subset: v1 }}, weight: {w1} }}
    - {{ destination: {{ host: reviews, subset: v2 }}, weight: {w2} }}
"
    )
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn weights(bytes: &[u8]) -> Vec<u32> {
    let rc = RouteConfiguration::decode(bytes).unwrap();
    let Some(route::Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
        panic!("a forwarding route")
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!("a split")
    };
    w.clusters.iter().map(|c| c.weight.unwrap().value).collect()
}

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn file_edits_are_pushed_to_sotw_and_delta_streams_and_bad_edits_are_not() {
    mesh_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    write(&path, &yaml(80, 20));
    let store = ConfigStore::new();
    let watcher = FileSource::new(&path)
        .with_debounce(Duration::from_millis(20))
        .watch(store.clone())
        .unwrap();
    let server = AdsServer::new(&store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let node = Some(Node {
        id: "file-test".into(),
        ..Node::default()
    });

    let (sotw_tx, rx) = mpsc::channel(4);
    let mut sotw = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    sotw_tx
        .send(DiscoveryRequest {
            node: node.clone(),
            type_url: TypeUrl::RouteConfiguration.as_str().into(),
            resource_names: vec!["9080".into()],
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    let (delta_tx, rx) = mpsc::channel(4);
    let mut delta = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    delta_tx
        .send(DeltaDiscoveryRequest {
            node,
            type_url: TypeUrl::RouteConfiguration.as_str().into(),
            resource_names_subscribe: vec!["9080".into()],
            ..DeltaDiscoveryRequest::default()
        })
        .await
        .unwrap();

    let s1 = tokio::time::timeout(LIMIT, sotw.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(weights(&s1.resources[0].value), [80, 20]);
    let d1 = tokio::time::timeout(LIMIT, delta.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        weights(&d1.resources[0].resource.as_ref().unwrap().value),
        [80, 20]
    );
    sotw_tx
        .send(DiscoveryRequest {
            type_url: TypeUrl::RouteConfiguration.as_str().into(),
            resource_names: vec!["9080".into()],
            version_info: s1.version_info.clone(),
            response_nonce: s1.nonce.clone(),
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap();
    delta_tx
        .send(DeltaDiscoveryRequest {
            type_url: TypeUrl::RouteConfiguration.as_str().into(),
            response_nonce: d1.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await
        .unwrap();

    // An invalid edit (weights summing to 0) is rejected: nothing pushed.
    let mut reloads = watcher.subscribe();
    let attempt = reloads.borrow_and_update().attempt;
    write(&path, &yaml(0, 0));
    let event = tokio::time::timeout(LIMIT, reloads.wait_for(|e| e.attempt > attempt))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(event.result.is_err(), "{event:?}");
    assert_eq!(
        server.current().version,
        s1.version_info.parse::<u64>().unwrap()
    );

    // A good edit: both streams get exactly the new split, next.
    write(&path, &yaml(30, 70));
    let s2 = tokio::time::timeout(LIMIT, sotw.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(weights(&s2.resources[0].value), [30, 70]);
    assert_eq!(s2.version_info, store.version().0.to_string());
    let d2 = tokio::time::timeout(LIMIT, delta.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        weights(&d2.resources[0].resource.as_ref().unwrap().value),
        [30, 70]
    );
    assert_ne!(d2.resources[0].version, d1.resources[0].version);
    assert_eq!(server.nack_count(), 0);
    let _ = stop.send(());
}
