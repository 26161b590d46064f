//! The server driven by a raw tonic ADS client over a real socket.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use mesh_core::file::FileSource;
use mesh_core::{ConfigStore, SourceId};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AdsServer;
use crate::TypeUrl;

fn mesh(weights: &[(&str, u32)], extra_service: bool) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: reviews }\nspec:\n  hosts: [reviews]\n  ports: [{ number: 9080, name: http, protocol: HTTP }]\n  resolution: STATIC\n  endpoints:\n  - { address: 127.0.0.1, ports: { http: 7001 }, labels: { version: v1 } }\n  - { address: 127.0.0.2, ports: { http: 7002 }, labels: { version: v2 } }\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: reviews }\nspec:\n  host: reviews\n  trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }\n  subsets:\n  - { name: v1, labels: { version: v1 } }\n  - { name: v2, labels: { version: v2 } }\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews }\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n",
    );
    for (subset, w) in weights {
        s.push_str(&format!(
            "    - {{ destination: {{ host: reviews, subset: {subset} }}, weight: {w} }}\n"
        ));
    }
    if extra_service {
        s.push_str("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: ratings }\nspec:\n  hosts: [ratings]\n  ports: [{ number: 9090, name: http, protocol: HTTP }]\n  resolution: STATIC\n  endpoints:\n  - { address: 127.0.0.3, ports: { http: 7003 } }\n");
    }
    s
}

fn publish(store: &ConfigStore, yaml: &str) -> u64 {
    let t = FileSource::parse_str("mesh.yaml", yaml).unwrap();
    store.publish(SourceId::new("test"), t.resources).unwrap().0
}

struct Harness {
    store: ConfigStore,
    server: AdsServer,
    client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn harness(yaml: &str) -> Harness {
    let store = ConfigStore::new();
    publish(&store, yaml);
    let server = AdsServer::new(&store);
    server.wait_for_version(store.version().0).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Harness {
        store,
        server,
        client,
        _shutdown: tx,
    }
}

/// Waits (at most 10 s) until `cond` holds: the server handles a request
/// concurrently with store pushes, and a test orders the two this way.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

fn acked(server: &AdsServer, type_url: TypeUrl) -> Option<String> {
    server
        .streams()
        .first()
        .and_then(|s| s.acked.get(type_url.as_str()).cloned())
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(h: &mut Harness) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let rx = h
            .client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, type_url: TypeUrl, names: &[&str], version: &str, nonce: &str) {
        self.send_req(DiscoveryRequest {
            node: Some(Node {
                id: "test-node".into(),
                ..Node::default()
            }),
            type_url: type_url.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..DiscoveryRequest::default()
        })
        .await;
    }

    async fn send_req(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .expect("the stream is open")
    }
}

fn names<M: Message + Default + HasName>(
    resources: &[envoy_types::pb::google::protobuf::Any],
) -> Vec<String> {
    resources
        .iter()
        .map(|a| M::decode(&*a.value).unwrap().name())
        .collect()
}

trait HasName {
    fn name(&self) -> String;
}

impl HasName for PbCluster {
    fn name(&self) -> String {
        self.name.clone()
    }
}

impl HasName for PbListener {
    fn name(&self) -> String {
        self.name.clone()
    }
}

#[tokio::test]
async fn sotw_wildcard_cds_is_acked_then_pushed_on_every_store_change() {
    let mut h = harness(&mesh(&[("v1", 80), ("v2", 20)], false)).await;
    let mut s = Sotw::open(&mut h).await;
    s.send(TypeUrl::Cluster, &[], "", "").await;
    let r1 = s.recv().await;
    assert_eq!(r1.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(r1.version_info, h.store.version().0.to_string());
    assert_eq!(
        names::<PbCluster>(&r1.resources),
        [
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
        ]
    );
    // ACK: no new response until the store changes.
    s.send(TypeUrl::Cluster, &[], &r1.version_info, &r1.nonce)
        .await;
    eventually("ack", || {
        acked(&h.server, TypeUrl::Cluster).as_ref() == Some(&r1.version_info)
    })
    .await;
    let v2 = publish(&h.store, &mesh(&[("v1", 80), ("v2", 20)], true));
    let r2 = s.recv().await;
    assert_eq!(
        r2.version_info,
        v2.to_string(),
        "the next response is the push"
    );
    assert_ne!(r2.nonce, r1.nonce);
    assert_eq!(r2.resources.len(), 4, "the full set, with ratings");
    // A deletion is the full set without the cluster (A3.4).
    s.send(TypeUrl::Cluster, &[], &r2.version_info, &r2.nonce)
        .await;
    eventually("ack", || {
        acked(&h.server, TypeUrl::Cluster).as_ref() == Some(&r2.version_info)
    })
    .await;
    let v3 = publish(&h.store, &mesh(&[("v1", 80), ("v2", 20)], false));
    let r3 = s.recv().await;
    assert_eq!(r3.version_info, v3.to_string());
    assert_eq!(r3.resources.len(), 3);
    assert_eq!(h.server.nack_count(), 0);
}

#[tokio::test]
async fn sotw_nack_is_recorded_and_not_answered_with_the_same_content() {
    let mut h = harness(&mesh(&[("v1", 50), ("v2", 50)], false)).await;
    let mut s = Sotw::open(&mut h).await;
    s.send(TypeUrl::Cluster, &[], "", "").await;
    let r1 = s.recv().await;
    s.send_req(DiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        version_info: String::new(),
        response_nonce: r1.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "cluster x: bad".into(),
            ..Status::default()
        }),
        ..DiscoveryRequest::default()
    })
    .await;
    eventually("nack", || h.server.nack_count() == 1).await;
    let v2 = publish(&h.store, &mesh(&[("v1", 50), ("v2", 50)], true));
    let r2 = s.recv().await;
    assert_eq!(
        r2.version_info,
        v2.to_string(),
        "no resend of the NACKed content"
    );
    let nacks = h.server.nacks();
    assert_eq!(nacks.len(), 1);
    assert_eq!(nacks[0].node, "test-node");
    assert_eq!(nacks[0].nonce, r1.nonce);
    assert_eq!(nacks[0].message, "cluster x: bad");
    assert!(!nacks[0].delta);
}

#[tokio::test]
async fn sotw_requests_with_a_stale_nonce_are_ignored() {
    let mut h = harness(&mesh(&[("v1", 50), ("v2", 50)], false)).await;
    let mut s = Sotw::open(&mut h).await;
    s.send(TypeUrl::Cluster, &[], "", "").await;
    let r1 = s.recv().await;
    let v2 = publish(&h.store, &mesh(&[("v1", 50), ("v2", 50)], true));
    let r2 = s.recv().await;
    assert_eq!(r2.version_info, v2.to_string());
    // An ACK of r1 that crossed r2 on the wire, now naming one cluster: stale
    // (A7.8), so neither recorded nor answered.
    s.send(
        TypeUrl::Cluster,
        &["outbound|9090||ratings.default.svc.cluster.local"],
        &r1.version_info,
        &r1.nonce,
    )
    .await;
    // The ACK of r2 with that one name changes the subscription: answered.
    s.send(
        TypeUrl::Cluster,
        &["outbound|9090||ratings.default.svc.cluster.local"],
        &r2.version_info,
        &r2.nonce,
    )
    .await;
    let r3 = s.recv().await;
    assert_eq!(
        names::<PbCluster>(&r3.resources),
        ["outbound|9090||ratings.default.svc.cluster.local"]
    );
    assert_eq!(
        h.server.streams()[0].acked[TypeUrl::Cluster.as_str()],
        r2.version_info
    );
}

#[tokio::test]
async fn sotw_named_types_return_exactly_the_requested_names() {
    let mut h = harness(&mesh(&[("v1", 50), ("v2", 50)], false)).await;
    let mut s = Sotw::open(&mut h).await;
    // EDS by name, one unknown name among them (A1.10).
    s.send(
        TypeUrl::ClusterLoadAssignment,
        &["outbound|9080|v2|reviews.default.svc.cluster.local", "nope"],
        "",
        "",
    )
    .await;
    let r = s.recv().await;
    assert_eq!(r.resources.len(), 1);
    let cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
        &*r.resources[0].value,
    )
    .unwrap();
    assert_eq!(
        cla.cluster_name,
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        cla.endpoints[0].lb_endpoints.len(),
        1,
        "only the v2 endpoint"
    );
    // LDS wildcard: Envoy listeners only; an API listener only by name.
    s.send(TypeUrl::Listener, &[], "", "").await;
    let r = s.recv().await;
    assert_eq!(names::<PbListener>(&r.resources), ["0.0.0.0_9080"]);
    s.send(
        TypeUrl::Listener,
        &["reviews.default.svc.cluster.local:9080"],
        &r.version_info,
        &r.nonce,
    )
    .await;
    let r = s.recv().await;
    let l = PbListener::decode(&*r.resources[0].value).unwrap();
    assert_eq!(l.name, "reviews.default.svc.cluster.local:9080");
    assert!(l.api_listener.is_some() && l.address.is_none());
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(h: &mut Harness) -> Self {
        let (tx, rx) = mpsc::channel(8);
        let rx = h
            .client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, type_url: TypeUrl, sub: &[&str], unsub: &[&str], nonce: &str) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: Some(Node {
                    id: "delta-node".into(),
                    ..Node::default()
                }),
                type_url: type_url.as_str().into(),
                resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
                resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
                response_nonce: nonce.into(),
                ..DeltaDiscoveryRequest::default()
            })
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a response within 10 s")
            .unwrap()
            .expect("the stream is open")
    }
}

#[tokio::test]
async fn delta_subscribe_unsubscribe_and_removed_resources() {
    let mut h = harness(&mesh(&[("v1", 50), ("v2", 50)], true)).await;
    let mut d = Delta::open(&mut h).await;
    let ratings = "outbound|9090||ratings.default.svc.cluster.local";
    let v1 = "outbound|9080|v1|reviews.default.svc.cluster.local";
    d.send(TypeUrl::Cluster, &[ratings, v1, "missing"], &[], "")
        .await;
    let r1 = d.recv().await;
    let mut got: Vec<_> = r1.resources.iter().map(|r| r.name.clone()).collect();
    got.sort();
    assert_eq!(got, [v1, ratings]);
    assert_eq!(
        r1.removed_resources,
        ["missing"],
        "non-existence is reported (A7.7)"
    );
    assert!(r1.resources.iter().all(|r| !r.version.is_empty()));
    // ACK, then unsubscribe v1: nothing to send for that alone.
    d.send(TypeUrl::Cluster, &[], &[v1], &r1.nonce).await;
    eventually("ack", || acked(&h.server, TypeUrl::Cluster).is_some()).await;
    // The store drops ratings: it is removed; v1 is not mentioned.
    let v = publish(&h.store, &mesh(&[("v1", 50), ("v2", 50)], false));
    let r2 = d.recv().await;
    assert_eq!(r2.system_version_info, v.to_string());
    assert!(r2.resources.is_empty());
    assert_eq!(r2.removed_resources, [ratings]);
    // A weight change touches the route table only: a delta client
    // subscribed to clusters hears nothing; re-adding ratings sends it.
    d.send(TypeUrl::Cluster, &[], &[], &r2.nonce).await;
    eventually("ack", || {
        acked(&h.server, TypeUrl::Cluster) == Some(r2.system_version_info.clone())
    })
    .await;
    let v = publish(&h.store, &mesh(&[("v1", 10), ("v2", 90)], true));
    let r3 = d.recv().await;
    assert_eq!(r3.system_version_info, v.to_string());
    assert_eq!(
        r3.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        [ratings]
    );
    assert_eq!(h.server.nack_count(), 0);
    assert_eq!(
        h.server.streams()[0].acked[TypeUrl::Cluster.as_str()],
        r2.system_version_info
    );
}

#[tokio::test]
async fn delta_wildcard_sends_only_changed_resources() {
    let mut h = harness(&mesh(&[("v1", 50), ("v2", 50)], false)).await;
    let mut d = Delta::open(&mut h).await;
    d.send(TypeUrl::RouteConfiguration, &["9080"], &[], "")
        .await;
    let r = d.recv().await;
    assert_eq!(r.resources.len(), 1);
    let old = r.resources[0].version.clone();
    d.send(TypeUrl::RouteConfiguration, &[], &[], &r.nonce)
        .await;
    eventually("ack", || {
        acked(&h.server, TypeUrl::RouteConfiguration).is_some()
    })
    .await;
    publish(&h.store, &mesh(&[("v1", 90), ("v2", 10)], false));
    let r = d.recv().await;
    assert_eq!(r.resources.len(), 1);
    assert_ne!(r.resources[0].version, old, "the split changed the route");
    // CDS wildcard (explicit "*"): the three reviews clusters.
    d.send(TypeUrl::Cluster, &["*"], &[], "").await;
    let r = d.recv().await;
    assert_eq!(r.resources.len(), 3);
}
