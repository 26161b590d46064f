use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use mesh_core::file::FileSource;
use mesh_core::{ConfigStore, SourceId};
use prost::Message;

use super::EncodedSnapshot;

const MESH: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews }
spec:
  hosts: [reviews]
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints:
  - { address: 127.0.0.1, ports: { http: 7001 }, labels: { version: v1 } }
  - { address: 127.0.0.2, ports: { http: 7002 }, labels: { version: v2 }, weight: 3 }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: external }
spec:
  hosts: [api.example.com]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 80 }
    - { destination: { host: reviews, subset: v2 }, weight: 20 }
";

fn encoded() -> EncodedSnapshot {
    let store = ConfigStore::new();
    let t = FileSource::parse_str("mesh.yaml", MESH).unwrap();
    store.publish(SourceId::new("t"), t.resources).unwrap();
    EncodedSnapshot::encode(&store.snapshot())
}

#[test]
fn client_listeners_are_envoy_listeners_with_rds_over_ads() {
    let e = encoded();
    let l = PbListener::decode(&*e.listeners["0.0.0.0_9080"].any.value).unwrap();
    let hcm = &l.filter_chains[0].filters[0];
    let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any)) =
        &hcm.config_type
    else {
        panic!("typed config")
    };
    let hcm = HttpConnectionManager::decode(&*any.value).unwrap();
    let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("rds")
    };
    assert_eq!(rds.route_config_name, "9080");
    assert!(rds.config_source.unwrap().config_source_specifier.is_some());
    assert_eq!(
        hcm.http_filters.last().unwrap().name,
        "envoy.filters.http.router",
        "the router is last (gRFC A39)"
    );
    // API listeners: one per `<host>:<port>` domain, served by name.
    assert!(e.api_listeners.contains_key("reviews:9080"));
    assert!(
        e.api_listeners
            .contains_key("reviews.default.svc.cluster.local:9080")
    );
    assert!(!e.listeners.contains_key("reviews:9080"));
}

#[test]
fn weighted_splits_and_no_timeout_are_explicit() {
    let e = encoded();
    let rc = RouteConfiguration::decode(&*e.routes["9080"].any.value).unwrap();
    let vh = &rc.virtual_hosts[0];
    assert!(vh.domains.iter().any(|d| d == "reviews:9080"));
    let Some(route::Action::Route(action)) = &vh.routes[0].action else {
        panic!("forward")
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &action.cluster_specifier
    else {
        panic!("weighted")
    };
    let split: Vec<(String, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        split,
        [
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local".into(),
                80
            ),
            (
                "outbound|9080|v2|reviews.default.svc.cluster.local".into(),
                20
            )
        ]
    );
    let timeout = action.timeout.unwrap();
    assert_eq!(
        (timeout.seconds, timeout.nanos),
        (0, 0),
        "0 disables Envoy's 15 s default"
    );
}

#[test]
fn clusters_are_eds_over_ads_and_dns_clusters_carry_their_endpoints() {
    let e = encoded();
    let name = "outbound|9080|v2|reviews.default.svc.cluster.local";
    let c = PbCluster::decode(&*e.clusters[name].any.value).unwrap();
    assert_eq!(c.lb_policy, 0, "ROUND_ROBIN");
    assert!(c.eds_cluster_config.unwrap().eds_config.is_some());
    let cla = ClusterLoadAssignment::decode(&*e.endpoints[name].any.value).unwrap();
    let lle = &cla.endpoints[0];
    assert_eq!(lle.lb_endpoints.len(), 1);
    assert_eq!(lle.lb_endpoints[0].load_balancing_weight.unwrap().value, 3);
    assert_eq!(lle.load_balancing_weight.unwrap().value, 3);
    let dns = "outbound|80||api.example.com";
    let c = PbCluster::decode(&*e.clusters[dns].any.value).unwrap();
    assert!(c.load_assignment.is_some() && c.eds_cluster_config.is_none());
    assert!(!e.endpoints.contains_key(dns), "no EDS for a DNS cluster");
}

#[test]
fn versions_are_content_hashes() {
    let (a, b) = (encoded(), encoded());
    assert_eq!(a.clusters, b.clusters);
    assert_ne!(
        a.clusters["outbound|9080|v1|reviews.default.svc.cluster.local"].version,
        a.clusters["outbound|9080|v2|reviews.default.svc.cluster.local"].version
    );
}
