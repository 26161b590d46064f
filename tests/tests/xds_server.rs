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

/// What a route table becomes over xDS, by the two documented encodings
/// that are not one to one (docs/ARCHITECTURE.md, "xDS server and
/// serve-xds"): an Envoy route has exactly one match, so a route with
/// several clauses is one route per clause, and "any path" (no clause, or
/// a clause without a path condition) is the prefix `/`.
fn over_xds(table: &mesh_core::model::RouteTable) -> mesh_core::model::RouteTable {
    use mesh_core::model::{
        PathMatch, Route, RouteAction, RouteMatch, VirtualHost, WeightedClusters,
    };
    use std::sync::Arc;
    let slash = |mut m: RouteMatch| {
        if m.path == PathMatch::Any {
            m.path = PathMatch::Prefix("/".into());
        }
        m
    };
    // One target: Envoy's `cluster` specifier has no weight.
    let single = |mut r: Route| {
        if let RouteAction::Forward(f) = &mut r.action
            && let [only] = f.clusters.targets()
        {
            f.clusters = WeightedClusters::single(only.cluster.clone());
        }
        r
    };
    let vhosts = table
        .virtual_hosts()
        .iter()
        .map(|vh| VirtualHost {
            routes: vh
                .routes
                .iter()
                .flat_map(|r| {
                    let clauses: Vec<RouteMatch> = if r.matches.is_empty() {
                        vec![RouteMatch::any()]
                    } else {
                        r.matches.to_vec()
                    };
                    clauses.into_iter().map(move |m| {
                        single(Route {
                            matches: Arc::from([slash(m)]),
                            ..r.clone()
                        })
                    })
                })
                .collect(),
            ..vh.clone()
        })
        .collect();
    mesh_core::model::RouteTable::try_new(table.name().clone(), vhosts).unwrap()
}

/// A VirtualService with most route features the file source knows.
const RICH: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: shop }
spec:
  hosts: [shop.example.com]
  ports: [{ number: 8080, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints:
  - { address: 127.0.0.1, ports: { http: 7001 }, labels: { version: v1 } }
  - { address: 127.0.0.2, ports: { http: 7002 }, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: shop }
spec:
  host: shop.example.com
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: shop }
spec:
  hosts: [shop.example.com]
  http:
  - name: api
    match:
    - uri: { prefix: /api/ }
      headers: { x-tenant: { exact: t1 } }
    route:
    - { destination: { host: shop.example.com, subset: v2 } }
    timeout: 2s
    retries: { attempts: 3, perTryTimeout: 500ms, retryOn: \"5xx,reset\" }
    fault: { abort: { httpStatus: 503, percentage: { value: 10 } } }
    headers: { request: { set: { x-a: b } }, response: { remove: [x-internal] } }
    rewrite: { uri: /v2/api/ }
  - name: exact
    match: [{ uri: { exact: /healthz } }]
    route: [{ destination: { host: shop.example.com, subset: v1 } }]
  - name: regex
    match: [{ uri: { regex: \"/items/[0-9]+\" } }]
    route:
    - { destination: { host: shop.example.com, subset: v1 }, weight: 70 }
    - { destination: { host: shop.example.com, subset: v2 }, weight: 30 }
  - route: [{ destination: { host: shop.example.com, subset: v1 } }]
";

/// `translate::decode(encode(x)) == x` for the route tables of the demo's
/// configs and of a rich VirtualService, and for the API listeners' port
/// and route table, every cluster and every endpoint set.
#[test]
fn resources_round_trip_through_the_translators() {
    use mesh_examples::yaml::{Split, many_routes, virtual_service};
    use mesh_xds::encode::EncodedSnapshot;
    use mesh_xds::{DecodeContext, XdsResource, translate};

    let addr = |p| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let mut configs = vec![
        (
            "demo canary",
            [
                mesh_examples::yaml::service_entry(
                    "reviews",
                    9080,
                    "HTTP",
                    &[(addr(1), "v1"), (addr(2), "v2")],
                ),
                mesh_examples::yaml::destination_rule("reviews", "ROUND_ROBIN", &["v1", "v2"]),
                virtual_service(
                    "reviews",
                    &Split::Weights(&[("v1", 90), ("v2", 10)]),
                    Some("100ms"),
                ),
            ]
            .join("---\n"),
        ),
        (
            "demo header routing",
            [
                mesh_examples::yaml::service_entry(
                    "reviews",
                    9080,
                    "HTTP",
                    &[(addr(1), "v1"), (addr(2), "v2")],
                ),
                mesh_examples::yaml::destination_rule("reviews", "LEAST_REQUEST", &["v1", "v2"]),
                virtual_service(
                    "reviews",
                    &Split::Header {
                        header: "x-canary",
                        value: "true",
                        canary: "v2",
                        stable: "v1",
                    },
                    None,
                ),
            ]
            .join("---\n"),
        ),
        (
            "many routes",
            many_routes(50, &[addr(1), addr(2)], "RANDOM"),
        ),
    ];
    configs.push(("rich", RICH.to_owned()));
    let ctx = DecodeContext::default();
    for (what, yaml) in configs {
        let store = ConfigStore::new();
        let t = FileSource::parse_str("mesh.yaml", &yaml).unwrap();
        store.publish("t".into(), t.resources).unwrap();
        let snapshot = store.snapshot();
        let encoded = EncodedSnapshot::encode(&snapshot);
        for table in snapshot.route_tables() {
            let r = &encoded.routes[table.name().as_str()];
            let decoded = translate::decode(TypeUrl::RouteConfiguration, &r.any, &ctx)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let XdsResource::RouteConfiguration(back) = decoded.resource else {
                panic!("{what}: not a route table")
            };
            assert_eq!(
                back,
                over_xds(table),
                "{what}: route table {}",
                table.name()
            );
            assert!(
                decoded.ignored.is_empty(),
                "{what}: ignored {:?}",
                decoded.ignored
            );
        }
        for (name, r) in &encoded.api_listeners {
            let decoded = translate::decode(TypeUrl::Listener, &r.any, &ctx)
                .unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
            let XdsResource::Listener(l) = decoded.resource else {
                panic!("{what}: not a listener")
            };
            let model = snapshot
                .listeners()
                .find(|m| m.port == l.listener.port)
                .unwrap_or_else(|| panic!("{what}: {name}: no model listener on that port"));
            assert_eq!(
                l.listener.route_table(),
                model.route_table(),
                "{what}: {name}"
            );
            assert_eq!(l.rds_name(), model.route_table().map(|n| n.as_str()));
        }
        for cluster in snapshot.clusters() {
            let r = &encoded.clusters[cluster.name.as_str()];
            let decoded = translate::decode(TypeUrl::Cluster, &r.any, &ctx)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let XdsResource::Cluster(back) = decoded.resource else {
                panic!("{what}: not a cluster")
            };
            assert_eq!(back.cluster, **cluster, "{what}: cluster {}", cluster.name);
            assert_eq!(back.eds_name(), Some(cluster.name.as_str()));
            assert!(
                decoded.ignored.is_empty(),
                "{what}: ignored {:?}",
                decoded.ignored
            );
        }
        for set in snapshot.endpoint_sets() {
            let r = &encoded.endpoints[set.cluster().as_str()];
            let decoded = translate::decode(TypeUrl::ClusterLoadAssignment, &r.any, &ctx)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let XdsResource::Endpoints(back) = decoded.resource else {
                panic!("{what}: not endpoints")
            };
            assert_eq!(
                back.endpoints,
                set.endpoints(),
                "{what}: endpoints of {}",
                set.cluster()
            );
            assert!(
                decoded.ignored.is_empty(),
                "{what}: ignored {:?}",
                decoded.ignored
            );
        }
    }
}
