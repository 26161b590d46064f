//! The xDS conformance suite, second part: fallback hazards (A6.6, A6.7)
//! and the LDS → RDS → CDS → EDS cascade (A8.2 – A8.7) of section A of
//! `rules-xds-security-resilience.md`, one test per rule, named after it,
//! against the scripted ADS server (`mesh_tests::xds_script`) over
//! in-memory pipes, on paused time unless a real backend is called.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::ConfigStore;
use mesh_core::model::RouteAction;
use mesh_tests::xds_script::{
    self, Mode, ScriptedAds, SotwStream, cluster, endpoints, invalid_cluster, invalid_listener,
    listener, response, route,
};
use mesh_xds::client::{ClientOptions, Connector};
use mesh_xds::config::{ClientConfig, Protocol};
use mesh_xds::pb::envoy::config::cluster::v3 as cds;
use mesh_xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_xds::pb::google::protobuf::Any;
use mesh_xds::{ResourceState, TypeUrl, XdsClient};
use prost::Message;
use tokio::time::sleep;
use tower::ServiceExt;

const L: TypeUrl = TypeUrl::Listener;
const R: TypeUrl = TypeUrl::RouteConfiguration;
const C: TypeUrl = TypeUrl::Cluster;
const E: TypeUrl = TypeUrl::ClusterLoadAssignment;

struct Env {
    servers: Vec<Arc<ScriptedAds>>,
    client: XdsClient,
    store: ConfigStore,
    /// The server index of every connection attempt, in order.
    attempts: Arc<Mutex<Vec<usize>>>,
}

fn start_with(n: usize, tweak: impl FnOnce(&mut ClientConfig)) -> Env {
    let servers: Vec<_> = (0..n).map(|_| ScriptedAds::start()).collect();
    let mut config = xds_script::config(n, Protocol::StateOfTheWorld);
    tweak(&mut config);
    let store = ConfigStore::new();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let inner = xds_script::connector(servers.clone());
    let log = Arc::clone(&attempts);
    let connector: Connector = Arc::new(move |i, cfg| {
        log.lock().unwrap().push(i);
        inner(i, cfg)
    });
    let client = XdsClient::start_with(
        config,
        store.clone(),
        ClientOptions {
            connector: Some(connector),
            decoder: None,
        },
    );
    Env {
        servers,
        client,
        store,
        attempts,
    }
}

fn start() -> Env {
    start_with(1, |_| {})
}

impl Env {
    fn attempts(&self) -> Vec<usize> {
        self.attempts.lock().unwrap().clone()
    }

    fn state(&self, t: TypeUrl, name: &str) -> ResourceState {
        self.client
            .status()
            .into_iter()
            .find(|s| s.type_url == t && s.name == name)
            .map(|s| s.state)
            .unwrap_or_else(|| panic!("no status for {} {name}", t.as_str()))
    }
}

/// The next request, asserted to be of type `t`.
async fn expect(s: &mut SotwStream, t: TypeUrl) -> DiscoveryRequest {
    let r = s.recv().await;
    assert_eq!(r.type_url, t.as_str(), "unexpected request: {r:?}");
    r
}

fn names(r: &DiscoveryRequest) -> Vec<&str> {
    r.resource_names.iter().map(String::as_str).collect()
}

/// Serves `lis` → `rt` → `clusters` (each `<c>` with EDS `<c>-eds` and
/// one endpoint), version `v`; returns after the last ACK.
async fn serve_cascade(s: &mut SotwStream, lis: &str, rt: &str, clusters: &[&str], v: &str) {
    s.send(response(L, v, &format!("l-{v}"), vec![listener(lis, rt)]))
        .await;
    expect(s, L).await;
    expect(s, R).await;
    s.send(response(R, v, &format!("r-{v}"), vec![route(rt, clusters)]))
        .await;
    expect(s, R).await;
    expect(s, C).await;
    let cs = clusters
        .iter()
        .map(|c| cluster(c, &format!("{c}-eds")))
        .collect();
    s.send(response(C, v, &format!("c-{v}"), cs)).await;
    expect(s, C).await;
    expect(s, E).await;
    let es = clusters
        .iter()
        .enumerate()
        .map(|(i, c)| endpoints(&format!("{c}-eds"), &[&format!("10.0.0.{}:80", i + 1)]))
        .collect();
    s.send(response(E, v, &format!("e-{v}"), es)).await;
    expect(s, E).await;
}

/// The clusters of the published route table of `listener`, or `None`
/// when the listener is not published.
fn published_route(store: &ConfigStore, listener: &str) -> Option<Vec<String>> {
    let snap = store.snapshot();
    let l = snap.listener(listener)?;
    let table = snap
        .route_table(l.route_table()?.as_str())
        .expect("a published listener has its route table (A8.1)");
    let mut out = BTreeSet::new();
    for vh in table.virtual_hosts() {
        for r in vh.routes.iter() {
            if let RouteAction::Forward(f) = &r.action {
                for t in f.clusters.targets() {
                    out.insert(t.cluster.as_str().to_owned());
                }
            }
        }
    }
    for c in &out {
        assert!(
            snap.cluster(c).is_some() && snap.endpoints(c).is_some(),
            "torn snapshot: the route names {c}, which is not published"
        );
    }
    Some(out.into_iter().collect())
}

/// The endpoint addresses published for cluster `c`.
fn published_endpoints(store: &ConfigStore, c: &str) -> Option<Vec<String>> {
    let snap = store.snapshot();
    let set = snap.endpoints(c)?;
    Some(
        set.endpoints()
            .iter()
            .map(|e| format!("{:?}", e.address))
            .collect(),
    )
}

// === A.6 fallback hazards ===

/// A6.6 (gRFC A71 "Potential issues"): what a switch between servers
/// guarantees. Every snapshot published across the switch is complete
/// (gRFC A74), and nothing from the old server is dropped before the new
/// server replaces it; resources of two servers may meet in one snapshot
/// (gRFC A71's config tear: the client keeps its cache per name, as gRPC
/// does). Flapping: a primary that comes and goes once everything is
/// cached never sends the client to the fallback again.
#[tokio::test(start_paused = true)]
async fn a6_6_server_switch_publishes_only_complete_configs_and_no_flapping() {
    let env = start_with(2, |_| {});
    let _w = env.client.watch_listener("svc:80");
    let mut p = env.servers[0].sotw_stream().await;
    expect(&mut p, L).await;
    serve_cascade(&mut p, "svc:80", "rt", &["c1"], "p1").await;
    assert_eq!(
        published_route(&env.store, "svc:80").unwrap(),
        ["c1"],
        "primary's config"
    );
    // The primary switches the route to c2 and dies before sending c2.
    p.send(response(R, "p2", "r-p2", vec![route("rt", &["c2"])]))
        .await;
    expect(&mut p, R).await;
    assert_eq!(names(&expect(&mut p, C).await), ["c2"]);
    assert_eq!(
        published_route(&env.store, "svc:80").unwrap(),
        ["c1"],
        "the half-received update is not published"
    );
    env.servers[0].set_mode(Mode::Refuse);
    p.fail(tonic::Status::unavailable("primary down")).await;

    // The fallback has a different route for the same name: it wins once
    // complete, and no snapshot in between names a missing cluster.
    let mut f = env.servers[1].sotw_stream().await;
    let mut opening = BTreeMap::new();
    for _ in 0..3 {
        let r = f.recv().await;
        opening.insert(r.type_url.clone(), r);
    }
    assert_eq!(names(&opening[C.as_str()]), ["c2"], "the c2 of the primary");
    f.send(response(L, "f1", "l-f1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut f, L).await;
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c1"]);
    f.send(response(R, "f1", "r-f1", vec![route("rt", &["c3"])]))
        .await;
    expect(&mut f, R).await;
    assert_eq!(names(&expect(&mut f, C).await), ["c3"], "c2 dropped");
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c1"]);
    f.send(response(C, "f1", "c-f1", vec![cluster("c3", "c3-eds")]))
        .await;
    expect(&mut f, C).await;
    expect(&mut f, E).await;
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c1"]);
    f.send(response(
        E,
        "f1",
        "e-f1",
        vec![endpoints("c3-eds", &["10.0.3.1:80"])],
    ))
    .await;
    expect(&mut f, E).await;
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c3"]);
    assert!(env.store.snapshot().cluster("c1").is_none());
    assert_eq!(env.client.metrics().server, 1);

    // The primary returns: it wins back on its first response (A6.3).
    env.servers[0].set_mode(Mode::Accept);
    // The probe was opened while c2 was still wanted: its opening asks for
    // what was wanted then, and once adopted the client subscribes the
    // difference (c3 and its assignment, not c2).
    let mut p = env.servers[0].sotw_stream().await;
    let mut opened = BTreeMap::new();
    while let Some(r) = p.try_recv(Duration::from_millis(10)).await {
        opened.insert(r.type_url.clone(), r);
    }
    assert_eq!(names(&opened[C.as_str()]), ["c2"]);
    p.send(response(L, "p3", "l-p3", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut p, L).await;
    assert_eq!(names(&expect(&mut p, C).await), ["c3"]);
    assert_eq!(names(&expect(&mut p, E).await), ["c3-eds"]);
    assert!(f.try_recv(Duration::from_secs(5)).await.is_none());
    assert_eq!(env.client.metrics().server, 0);
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c3"]);
    let fallback_connects = env.servers[1].connects();

    // Flapping primary with everything cached: down, up, down, up...
    for round in 0..3 {
        env.servers[0].set_mode(Mode::Refuse);
        p.fail(tonic::Status::unavailable("flap")).await;
        sleep(Duration::from_secs(30)).await;
        assert_eq!(
            env.servers[1].connects(),
            fallback_connects,
            "round {round}: the fallback is not contacted while everything is cached"
        );
        assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c3"]);
        env.servers[0].set_mode(Mode::Accept);
        p = env.servers[0].sotw_stream().await;
        for _ in 0..4 {
            p.recv().await;
        }
    }
}

/// A6.7: Envoy's failover (`grpc_mux_failover_test.cc`) tries the primary
/// twice, then alternates, and after a source answered reconnects only to
/// it. We follow gRFC A71 instead: every round goes primary then fallback
/// at once (no second primary attempt), rounds are separated by the
/// backoff, and a stream that ended after a response starts over at the
/// primary, even when the fallback was the one that answered.
#[tokio::test(start_paused = true)]
async fn a6_7_reconnect_order_is_grfc_a71_not_envoy_alternation() {
    let env = start_with(2, |_| {});
    env.servers[0].set_mode(Mode::Refuse);
    env.servers[1].set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        env.attempts(),
        [0, 1],
        "first round: primary, then fallback"
    );
    // Backoff 1 s ±20 %, then 1.6 s ±20 %: two more rounds within 4 s.
    sleep(Duration::from_secs(4)).await;
    assert_eq!(
        env.attempts(),
        [0, 1, 0, 1, 0, 1],
        "rounds of primary then fallback (Envoy: 0, 0, 1, 0, 1, ...)"
    );
    // The fallback comes up and serves everything.
    env.servers[1].set_mode(Mode::Accept);
    let mut f = env.servers[1].sotw_stream().await;
    expect(&mut f, L).await;
    serve_cascade(&mut f, "svc:80", "rt", &["c1"], "f1").await;
    let n = env.attempts().len();
    assert_eq!(env.attempts()[n - 2..], [0, 1]);
    // The fallback ends its stream after responses: the next stream is
    // attempted at the primary first (Envoy: only the fallback again).
    f.close();
    sleep(Duration::from_secs(2)).await;
    let after = env.attempts()[n..].to_vec();
    assert_eq!(
        after.first(),
        Some(&0),
        "reconnect starts at the primary: {after:?}"
    );
    // Everything is cached: the primary's failure does not send the client
    // back to the fallback (A6.2), so only the primary is tried.
    sleep(Duration::from_secs(20)).await;
    let after = env.attempts()[n..].to_vec();
    assert!(after.len() >= 3, "{after:?}");
    assert!(after.iter().all(|i| *i == 0), "{after:?}");
    assert!(published_route(&env.store, "svc:80").is_some());
}

// === A.8 cascade ===

/// A8.2: an LDS or RDS error fails the config only without a cached value
/// (or on does-not-exist with `fail_on_data_errors`); with one, the
/// cached config keeps serving. The reason reaches the data plane.
#[tokio::test(start_paused = true)]
async fn a8_2_listener_and_route_errors_fail_the_config_only_without_a_cached_value() {
    let env = start();
    let mesh = mesh_tower::Mesh::builder(env.store.clone())
        .with_xds(env.client.clone())
        .build();
    let svc = mesh.client_for("xds:///svc:80").unwrap();
    let mut s = env.servers[0].sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    // RDS rejected with nothing cached: the listener is not published and
    // calls fail UNAVAILABLE naming the route configuration.
    let mut bad = mesh_xds::pb::envoy::config::route::v3::RouteConfiguration::decode(
        route("rt", &["c1"]).value.as_slice(),
    )
    .unwrap();
    bad.virtual_hosts[0].domains.clear();
    let bad = Any {
        type_url: R.as_str().into(),
        value: bad.encode_to_vec(),
    };
    s.send(response(R, "1", "r1", vec![bad.clone()])).await;
    let nack = expect(&mut s, R).await;
    let reason = nack.error_detail.unwrap().message;
    assert!(
        reason.contains("rt") && reason.contains("domains"),
        "{reason}"
    );
    assert_eq!(env.state(R, "rt"), ResourceState::Nacked);
    assert!(published_route(&env.store, "svc:80").is_none());
    let e = call(&svc, "/x").await.unwrap_err();
    assert!(e.is_xds_unavailable(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("route configuration \"rt\"") && msg.contains("NACKED"),
        "{msg}"
    );
    assert!(msg.contains("node-1"), "{msg}");

    // A valid RDS completes it; a later rejected LDS or RDS keeps it.
    s.send(response(R, "2", "r2", vec![route("rt", &["c1"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(C, "1", "c1", vec![cluster("c1", "e1")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("e1", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["c1"]);
    s.send(response(R, "3", "r3", vec![bad])).await;
    assert!(expect(&mut s, R).await.error_detail.is_some());
    s.send(response(
        L,
        "2",
        "l2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    assert!(expect(&mut s, L).await.error_detail.is_some());
    assert_eq!(
        published_route(&env.store, "svc:80").unwrap(),
        ["c1"],
        "the cached listener and route keep serving"
    );
    // A deletion of the listener keeps the cached one by default (gRFC A88);
    // see the next part for fail_on_data_errors.
    s.send(response(L, "3", "l3", vec![])).await;
    expect(&mut s, L).await;
    assert_eq!(env.state(L, "svc:80"), ResourceState::DoesNotExist);
    assert!(published_route(&env.store, "svc:80").is_some());

    // With fail_on_data_errors, does-not-exist fails the whole config.
    let env = start_with(1, |c| c.servers[0].features.fail_on_data_errors = true);
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.servers[0].sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", &["c1"], "1").await;
    assert!(published_route(&env.store, "svc:80").is_some());
    s.send(response(L, "2", "l2", vec![])).await;
    expect(&mut s, L).await;
    assert!(published_route(&env.store, "svc:80").is_none());
    assert!(env.store.snapshot().cluster("c1").is_none());
}

async fn call(
    svc: &mesh_tower::MeshClient,
    path: &str,
) -> Result<http::Response<mesh_tower::ResponseBody>, mesh_tower::Error> {
    let req = http::Request::get(path)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    svc.clone().oneshot(req).await
}

/// A8.3: cluster errors are isolated. A cluster that was rejected with no
/// cached value fails only the calls routed to it, UNAVAILABLE with the
/// reason (gRFC A74's `resolution_note`) and the node; the other cluster
/// of the same route table serves. Real backend, real time.
#[tokio::test]
async fn a8_3_one_bad_cluster_fails_only_the_calls_routed_to_it() {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = backend.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "good" });
    let server = tokio::spawn(async move { axum::serve(backend, app).await });

    let env = start();
    let mesh = mesh_tower::Mesh::builder(env.store.clone())
        .with_xds(env.client.clone())
        .build();
    let svc = mesh.client_for("xds:///svc:80").unwrap();
    let mut s = env.servers[0].sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    // /good/ → good, everything else → bad.
    s.send(response(R, "1", "r1", vec![route("rt", &["good", "bad"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(
        C,
        "1",
        "c1",
        vec![cluster("good", "good-eds"), invalid_cluster("bad")],
    ))
    .await;
    let nack = expect(&mut s, C).await;
    assert!(nack.error_detail.unwrap().message.contains("bad"));
    assert_eq!(names(&expect(&mut s, E).await), ["good-eds"]);
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("good-eds", &[&addr.to_string()])],
    ))
    .await;
    expect(&mut s, E).await;

    let ok = call(&svc, "/good/hello")
        .await
        .expect("the good cluster serves");
    assert_eq!(ok.status(), http::StatusCode::OK);
    let e = call(&svc, "/other").await.unwrap_err();
    assert!(e.is_xds_unavailable(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("cluster \"bad\""), "{msg}");
    assert!(
        msg.contains("NACKED") && msg.contains("choice_count"),
        "the rejection reason: {msg}"
    );
    assert!(msg.contains("node \"node-1\""), "{msg}");
    // The store's warnings say the same.
    let st = env.store.source_status(&"xds".into()).unwrap();
    assert!(
        st.warnings.iter().any(|w| w.contains("\"bad\"")),
        "{:?}",
        st.warnings
    );
    // Still serving the good one after the failure.
    assert_eq!(
        call(&svc, "/good/again").await.unwrap().status(),
        http::StatusCode::OK
    );
    server.abort();
}

/// An aggregate cluster (`envoy.clusters.aggregate`, gRFC A37) of
/// `children`.
fn aggregate_cluster(name: &str, children: &[&str]) -> Any {
    let cfg = mesh_xds::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig {
        clusters: children.iter().map(|c| (*c).to_owned()).collect(),
    };
    let c = cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::ClusterType(
            cds::cluster::CustomClusterType {
                name: "envoy.clusters.aggregate".into(),
                typed_config: Some(Any {
                    type_url:
                        "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
                            .into(),
                    value: cfg.encode_to_vec(),
                }),
            },
        )),
        lb_policy: cds::cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    Any {
        type_url: C.as_str().into(),
        value: c.encode_to_vec(),
    }
}

/// A8.4: aggregate clusters are not supported (the model has no cluster
/// of clusters; see docs/ARCHITECTURE.md). One is NACKed with the field
/// and the reason, and like any failed cluster (A8.3) it fails only the
/// calls routed to it; the other clusters keep working.
#[tokio::test(start_paused = true)]
async fn a8_4_aggregate_clusters_are_rejected_naming_the_field_and_isolated() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.servers[0].sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.send(response(R, "1", "r1", vec![route("rt", &["plain", "agg"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(
        C,
        "1",
        "c1",
        vec![
            cluster("plain", "plain-eds"),
            aggregate_cluster("agg", &["primary", "secondary"]),
        ],
    ))
    .await;
    let nack = expect(&mut s, C).await;
    let msg = nack.error_detail.unwrap().message;
    assert!(msg.contains("agg"), "names the resource: {msg}");
    assert!(msg.contains("cluster_type"), "names the field: {msg}");
    assert!(
        msg.contains("aggregate") && msg.contains("not supported"),
        "says why: {msg}"
    );
    assert!(msg.contains("primary, secondary"), "{msg}");
    // The children are never subscribed.
    let eds = expect(&mut s, E).await;
    assert_eq!(names(&eds), ["plain-eds"]);
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("plain-eds", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    s.expect_silence(Duration::from_secs(1)).await;
    assert_eq!(
        published_route(&env.store, "svc:80").unwrap(),
        ["agg", "plain"]
    );
    assert_eq!(published_endpoints(&env.store, "plain").unwrap().len(), 1);
    assert!(published_endpoints(&env.store, "agg").unwrap().is_empty());
    assert_eq!(env.state(C, "agg"), ResourceState::Nacked);
}

// === A8.6: every arrival order ===

/// A server that holds a set of resources and answers every subscription
/// from it, as a real SotW server does; checks every ACK.
struct Holder {
    stream: SotwStream,
    held: BTreeMap<(u8, String), Any>,
    requested: BTreeMap<u8, BTreeSet<String>>,
    nonce: u64,
}

fn idx(t: TypeUrl) -> u8 {
    TypeUrl::ALL.iter().position(|x| *x == t).unwrap() as u8
}

impl Holder {
    async fn answer(&mut self, t: TypeUrl) {
        let names = self.requested.get(&idx(t)).cloned().unwrap_or_default();
        let resources: Vec<Any> = names
            .iter()
            .filter_map(|n| self.held.get(&(idx(t), n.clone())).cloned())
            .collect();
        if resources.is_empty() {
            return;
        }
        self.nonce += 1;
        let n = self.nonce.to_string();
        self.stream.send(response(t, &n, &n, resources)).await;
    }

    /// Makes `any` (of type `t`, named `name`) available; sends it when
    /// the client subscribed to it.
    async fn offer(&mut self, t: TypeUrl, name: &str, any: Any) {
        self.held.insert((idx(t), name.to_owned()), any);
        if self
            .requested
            .get(&idx(t))
            .is_some_and(|n| n.contains(name))
        {
            self.answer(t).await;
        }
    }

    /// Reads requests until the client is quiet, answering new
    /// subscriptions; after every request, `check` sees the store.
    async fn settle(&mut self, mut check: impl FnMut()) {
        while let Some(req) = self.stream.try_recv(Duration::from_millis(50)).await {
            check();
            assert!(req.error_detail.is_none(), "NACK: {req:?}");
            let t = TypeUrl::parse(&req.type_url).unwrap();
            let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
            let old = self.requested.insert(idx(t), names.clone());
            if old.as_ref() != Some(&names) {
                self.answer(t).await;
            }
        }
        check();
    }
}

/// The published config as comparable values.
fn published(store: &ConfigStore) -> String {
    let snap = store.snapshot();
    format!(
        "{:?}|{:?}|{:?}|{:?}",
        snap.listener("svc:80"),
        snap.listener("svc:80")
            .and_then(|l| snap.route_table(l.route_table()?.as_str())),
        ["c1", "c2"].map(|c| snap.cluster(c)),
        ["c1", "c2"].map(|c| snap.endpoints(c)),
    )
}

/// A8.6: the control plane may send CDS, EDS, LDS and RDS in any order.
/// For each of the 24 orders, from nothing and then for an update to new
/// names, the published config is only ever the previous complete one or
/// the new complete one (never a mix, never a route to a missing
/// cluster), and every order ends in the same config.
#[tokio::test(start_paused = true)]
async fn a8_6_every_arrival_order_ends_in_the_same_config_and_never_tears() {
    let mut orders = Vec::new();
    permutations(&mut vec![L, R, C, E], 0, &mut orders);
    assert_eq!(orders.len(), 24);
    let mut finals: BTreeSet<(String, String)> = BTreeSet::new();
    for order in &orders {
        let env = start();
        let _w = env.client.watch_listener("svc:80");
        let mut h = Holder {
            stream: env.servers[0].sotw_stream().await,
            held: BTreeMap::new(),
            requested: BTreeMap::new(),
            nonce: 0,
        };
        h.settle(|| {}).await;
        let v1 = |t: TypeUrl| match t {
            TypeUrl::Listener => ("svc:80", listener("svc:80", "rt1")),
            TypeUrl::RouteConfiguration => ("rt1", route("rt1", &["c1"])),
            TypeUrl::Cluster => ("c1", cluster("c1", "e1")),
            _ => ("e1", endpoints("e1", &["10.0.0.1:80"])),
        };
        let v2 = |t: TypeUrl| match t {
            TypeUrl::Listener => ("svc:80", listener("svc:80", "rt2")),
            TypeUrl::RouteConfiguration => ("rt2", route("rt2", &["c2"])),
            TypeUrl::Cluster => ("c2", cluster("c2", "e2")),
            _ => ("e2", endpoints("e2", &["10.0.0.2:80"])),
        };
        let ctx = format!("{:?}", order.iter().map(|t| idx(*t)).collect::<Vec<_>>());
        // From nothing: unpublished until complete, then v1.
        for t in order {
            let (name, any) = v1(*t);
            h.offer(*t, name, any).await;
            h.settle(|| {
                let r = published_route(&env.store, "svc:80");
                assert!(
                    r.is_none() || r.as_deref() == Some(&["c1".to_owned()][..]),
                    "{ctx}: {r:?}"
                );
            })
            .await;
        }
        assert_eq!(
            published_route(&env.store, "svc:80").unwrap(),
            ["c1"],
            "{ctx}"
        );
        let first = published(&env.store);
        // Update to new names, same order: v1 until v2 is complete.
        for t in order {
            let (name, any) = v2(*t);
            h.offer(*t, name, any).await;
            h.settle(|| {
                let r = published_route(&env.store, "svc:80").unwrap();
                assert!(r == ["c1"] || r == ["c2"], "{ctx}: {r:?}");
            })
            .await;
        }
        assert_eq!(
            published_route(&env.store, "svc:80").unwrap(),
            ["c2"],
            "{ctx}"
        );
        assert!(env.store.snapshot().cluster("c1").is_none(), "{ctx}");
        finals.insert((first, published(&env.store)));
    }
    assert_eq!(finals.len(), 1, "every order ends alike: {finals:#?}");
}

fn permutations(v: &mut Vec<TypeUrl>, k: usize, out: &mut Vec<Vec<TypeUrl>>) {
    if k == v.len() {
        out.push(v.clone());
        return;
    }
    for i in k..v.len() {
        v.swap(k, i);
        permutations(v, k + 1, out);
        v.swap(k, i);
    }
}

/// A8.7 (warming): a cluster update is used only once what it needs has
/// arrived. A cluster that moves to another EDS assignment keeps serving
/// its previous version (cluster and endpoints) until the new assignment
/// arrives, while the rest of the listener keeps updating. An update that
/// keeps the assignment name uses the cached assignment at once: the
/// cached one is the current one, and a SotW server does not resend an
/// unchanged assignment (waiting, as Envoy does, would stall forever on
/// gRPC-style control planes).
#[tokio::test(start_paused = true)]
async fn a8_7_a_cluster_change_is_used_only_after_its_new_eds_arrives() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.servers[0].sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", &["a", "b"], "1").await;
    let a1 = published_endpoints(&env.store, "a").unwrap();
    let b1 = published_endpoints(&env.store, "b").unwrap();
    // Cluster a moves to the assignment a-new; b is unchanged.
    s.send(response(
        C,
        "2",
        "c-2",
        vec![cluster("a", "a-new"), cluster("b", "b-eds")],
    ))
    .await;
    expect(&mut s, C).await;
    assert_eq!(names(&expect(&mut s, E).await), ["a-new", "b-eds"]);
    assert_eq!(
        published_endpoints(&env.store, "a").unwrap(),
        a1,
        "a still serves its previous endpoints"
    );
    // Meanwhile b's endpoints change: applied although a is warming.
    s.send(response(
        E,
        "2",
        "e-2",
        vec![endpoints("b-eds", &["10.0.9.9:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    let b2 = published_endpoints(&env.store, "b").unwrap();
    assert_ne!(b2, b1, "b is not held back by a's warming");
    assert_eq!(published_endpoints(&env.store, "a").unwrap(), a1);
    // A new route to a third cluster is not published before it is warm.
    s.send(response(R, "2", "r-2", vec![route("rt", &["a", "b", "c"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["a", "b"]);
    // a's new assignment arrives: a switches to it.
    s.send(response(
        E,
        "3",
        "e-3",
        vec![
            endpoints("a-new", &["10.0.7.7:80"]),
            endpoints("b-eds", &["10.0.9.9:80"]),
        ],
    ))
    .await;
    expect(&mut s, E).await;
    let a2 = published_endpoints(&env.store, "a").unwrap();
    assert_ne!(a2, a1);
    assert!(a2[0].contains("10.0.7.7"), "{a2:?}");
    // A change that keeps the assignment name applies at once.
    let mut rr = cds::Cluster::decode(cluster("b", "b-eds").value.as_slice()).unwrap();
    rr.lb_policy = cds::cluster::LbPolicy::RingHash as i32;
    let b_ring = Any {
        type_url: C.as_str().into(),
        value: rr.encode_to_vec(),
    };
    s.send(response(
        C,
        "3",
        "c-3",
        vec![cluster("a", "a-new"), b_ring, cluster("c", "c-eds")],
    ))
    .await;
    expect(&mut s, C).await;
    assert_eq!(names(&expect(&mut s, E).await), ["a-new", "b-eds", "c-eds"]);
    let snap = env.store.snapshot();
    assert!(
        matches!(
            snap.cluster("b").unwrap().lb_policy,
            mesh_core::model::LbPolicy::RingHash { .. }
        ),
        "b's new version is used with its cached endpoints"
    );
    assert_eq!(published_endpoints(&env.store, "b").unwrap(), b2);
    assert_eq!(published_route(&env.store, "svc:80").unwrap(), ["a", "b"]);
    s.send(response(
        E,
        "4",
        "e-4",
        vec![endpoints("c-eds", &["10.0.5.5:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    assert_eq!(
        published_route(&env.store, "svc:80").unwrap(),
        ["a", "b", "c"]
    );
}

// === A.9 server-side xDS ===

mod server_side {
    use super::*;
    use mesh_tower::{ServeConfig, ServingState, TransportMode};
    use mesh_xds::pb::envoy::config::core::v3 as core;
    use mesh_xds::pb::envoy::config::listener::v3 as lds;
    use mesh_xds::pb::envoy::config::rbac::v3 as rbac;
    use mesh_xds::pb::envoy::config::route::v3 as rds;
    use mesh_xds::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
    use mesh_xds::pb::envoy::extensions::filters::http::router::v3::Router;
    use mesh_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    fn typed<M: Message>(type_url: &str, m: &M) -> Any {
        Any {
            type_url: type_url.into(),
            value: m.encode_to_vec(),
        }
    }

    /// What a server filter chain carries.
    #[derive(Clone, Copy, Default)]
    pub(super) struct Chain {
        /// An RBAC filter (DENY requests with `x-deny: 1`).
        pub(super) rbac: bool,
        /// The routes by reference (RDS `srv-rt`) instead of inline.
        pub(super) rds: bool,
        /// A `filter_chain_match`.
        pub(super) matching: Option<fn() -> lds::FilterChainMatch>,
    }

    // Istio still sends `exact_match` in RBAC header matchers.
    #[allow(deprecated)]
    fn chain(c: Chain) -> lds::FilterChain {
        let mut filters = Vec::new();
        if c.rbac {
            let policy = rbac::Policy {
                permissions: vec![rbac::Permission {
                    rule: Some(rbac::permission::Rule::Header(
                        mesh_xds::pb::envoy::config::route::v3::HeaderMatcher {
                            name: "x-deny".into(),
                            header_match_specifier: Some(
                                mesh_xds::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::ExactMatch(
                                    "1".into(),
                                ),
                            ),
                            ..Default::default()
                        },
                    )),
                }],
                principals: vec![rbac::Principal {
                    identifier: Some(rbac::principal::Identifier::Any(true)),
                }],
                ..Default::default()
            };
            filters.push(hcm::HttpFilter {
                name: "envoy.filters.http.rbac".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(typed(
                    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                    &rbac_filter::Rbac {
                        rules: Some(rbac::Rbac {
                            action: rbac::rbac::Action::Deny as i32,
                            policies: [("ns-deny-0".to_owned(), policy)].into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ))),
                ..Default::default()
            });
        }
        filters.push(hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(typed(
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                &Router::default(),
            ))),
            ..Default::default()
        });
        let routes = if c.rds {
            hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                config_source: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        core::AggregatedConfigSource {},
                    )),
                    resource_api_version: core::ApiVersion::V3 as i32,
                    ..Default::default()
                }),
                route_config_name: "srv-rt".into(),
            })
        } else {
            hcm::http_connection_manager::RouteSpecifier::RouteConfig(rds::RouteConfiguration {
                name: "inbound".into(),
                virtual_hosts: vec![rds::VirtualHost {
                    name: "inbound".into(),
                    domains: vec!["*".into()],
                    routes: vec![rds::Route {
                        r#match: Some(rds::RouteMatch {
                            path_specifier: Some(rds::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(rds::route::Action::NonForwardingAction(
                            rds::NonForwardingAction {},
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            })
        };
        let manager = hcm::HttpConnectionManager {
            stat_prefix: "inbound".into(),
            route_specifier: Some(routes),
            http_filters: filters,
            ..Default::default()
        };
        lds::FilterChain {
            filter_chain_match: c.matching.map(|f| f()),
            filters: vec![lds::Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(lds::filter::ConfigType::TypedConfig(typed(
                    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    &manager,
                ))),
            }],
            ..Default::default()
        }
    }

    /// A server listener `name` on `addr` with `chains`.
    pub(super) fn server_listener(name: &str, addr: SocketAddr, chains: &[Chain]) -> Any {
        let l = lds::Listener {
            name: name.into(),
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: addr.ip().to_string(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                        u32::from(addr.port()),
                    )),
                    ..Default::default()
                })),
            }),
            filter_chains: chains.iter().map(|c| chain(*c)).collect(),
            ..Default::default()
        };
        typed(L.as_str(), &l)
    }

    use std::net::SocketAddr;

    struct Served {
        env: Env,
        addr: SocketAddr,
        name: String,
        state: watch::Receiver<ServingState>,
        task: tokio::task::JoinHandle<()>,
        s: SotwStream,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A plaintext server following its xDS listener, on real time.
    async fn serve(tweak: impl FnOnce(&mut ClientConfig)) -> Served {
        let env = start_with(1, tweak);
        let mesh = mesh_tower::Mesh::builder(env.store.clone())
            .with_xds(env.client.clone())
            .build();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let name = mesh_xds::client::server_listener_name(None, addr);
        let app = axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    sleep(Duration::from_millis(300)).await;
                    "slow"
                }),
            )
            .fallback(|| async { "ok" });
        let (tx, state) = watch::channel(ServingState::NotServing("starting".into()));
        let config =
            ServeConfig::new(TransportMode::Disable).with_drain_grace(Duration::from_secs(5));
        let task = tokio::spawn(async move {
            mesh_tower::serve_xds(tcp, mesh, config, app, tx)
                .await
                .unwrap();
        });
        let mut s = env.servers[0].sotw_stream().await;
        let r = expect(&mut s, L).await;
        assert_eq!(names(&r), [name.as_str()]);
        Served {
            env,
            addr,
            name,
            state,
            task,
            s,
        }
    }

    async fn wait_state(rx: &mut watch::Receiver<ServingState>, serving: bool) -> ServingState {
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| {
                s.is_serving() == serving && *s != ServingState::NotServing("starting".into())
            }),
        )
        .await
        .expect("serving state in time")
        .unwrap()
        .clone()
    }

    /// Connects, writes `hello` and returns the first bytes the server
    /// answers (empty: it closed the connection without writing a byte).
    async fn probe(addr: SocketAddr, hello: &[u8]) -> Vec<u8> {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(hello).await;
        let mut buf = vec![0; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the server answers or closes")
            .unwrap_or(0);
        buf.truncate(n);
        buf
    }

    /// An HTTP/2 connection (prior knowledge).
    async fn h2(
        addr: SocketAddr,
    ) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        send
    }

    async fn get(
        send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        path: &str,
    ) -> Result<String, hyper::Error> {
        use http_body_util::BodyExt;
        send.ready().await?;
        let req = http::Request::get(format!("http://svc{path}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let res = send.send_request(req).await?;
        let body = res.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// A TLS ClientHello's first bytes (a handshake record).
    const CLIENT_HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03,
    ];
    /// The HTTP/2 connection preface.
    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A9.1 (gRFC A36 "Serving and Not Serving"): with no server listener
    /// yet, or after it is deleted, the port is bound but every connection
    /// is closed at once, without a TLS ServerHello or HTTP/2 SETTINGS;
    /// the serving state says why. Real sockets, real time.
    #[tokio::test]
    async fn a9_1_without_a_listener_the_server_accepts_and_closes_and_says_why() {
        let mut sv = serve(|c| c.servers[0].features.fail_on_data_errors = true).await;
        let why = wait_state(&mut sv.state, false).await;
        let ServingState::NotServing(reason) = why else {
            unreachable!()
        };
        assert!(
            reason.contains(&sv.name) && reason.contains("REQUESTED") && reason.contains("node-1"),
            "{reason}"
        );
        assert!(
            probe(sv.addr, CLIENT_HELLO).await.is_empty(),
            "no ServerHello"
        );
        assert!(probe(sv.addr, H2_PREFACE).await.is_empty(), "no SETTINGS");

        // The listener arrives: serving.
        let lis = server_listener(&sv.name, sv.addr, &[Chain::default()]);
        sv.s.send(response(L, "1", "l1", vec![lis])).await;
        expect(&mut sv.s, L).await;
        assert_eq!(wait_state(&mut sv.state, true).await, ServingState::Serving);
        let mut conn = h2(sv.addr).await;
        assert_eq!(get(&mut conn, "/").await.unwrap(), "ok");
        let answer = probe(sv.addr, H2_PREFACE).await;
        assert!(!answer.is_empty(), "serving: the server speaks HTTP/2");

        // Deleted (fail_on_data_errors: the cached one is dropped): not
        // serving again, and the open connection is drained.
        sv.s.send(response(L, "2", "l2", vec![])).await;
        expect(&mut sv.s, L).await;
        let ServingState::NotServing(reason) = wait_state(&mut sv.state, false).await else {
            unreachable!()
        };
        assert!(reason.contains("does not exist"), "{reason}");
        assert!(probe(sv.addr, H2_PREFACE).await.is_empty());
        assert!(get(&mut conn, "/").await.is_err(), "drained");
    }

    /// A9.2 (gRFC A36): a Listener update drains the connections accepted
    /// before it gracefully (requests in flight finish, new requests go to
    /// new connections) and never closes the port; a store change that
    /// does not touch the listener (a client route update, an RDS the
    /// server listener names by reference) drains nothing. Real sockets.
    #[tokio::test]
    async fn a9_2_a_listener_update_drains_gracefully_and_an_rds_update_does_not() {
        let mut sv = serve(|_| {}).await;
        let _client_side = sv.env.client.watch_listener("svc:80");
        // The LDS request now names both listeners.
        expect(&mut sv.s, L).await;
        let v1 = server_listener(
            &sv.name,
            sv.addr,
            &[Chain {
                rds: true,
                ..Chain::default()
            }],
        );
        sv.s.send(response(
            L,
            "1",
            "l1",
            vec![v1.clone(), listener("svc:80", "rt")],
        ))
        .await;
        expect(&mut sv.s, L).await;
        assert_eq!(
            names(&expect(&mut sv.s, R).await),
            ["rt"],
            "srv-rt is not subscribed"
        );
        wait_state(&mut sv.state, true).await;
        let mut old = h2(sv.addr).await;
        assert_eq!(get(&mut old, "/").await.unwrap(), "ok");

        // Store changes that leave the server listener alone.
        sv.s.send(response(
            R,
            "1",
            "r1",
            vec![route("rt", &["c1"]), route("srv-rt", &["c9"])],
        ))
        .await;
        expect(&mut sv.s, R).await;
        expect(&mut sv.s, C).await;
        sv.s.send(response(C, "1", "c1", vec![cluster("c1", "e1")]))
            .await;
        expect(&mut sv.s, C).await;
        expect(&mut sv.s, E).await;
        sv.s.send(response(
            E,
            "1",
            "e1",
            vec![endpoints("e1", &["10.0.0.1:80"])],
        ))
        .await;
        expect(&mut sv.s, E).await;
        assert!(sv.env.store.snapshot().listener("svc:80").is_some());
        sleep(Duration::from_millis(100)).await;
        assert_eq!(
            get(&mut old, "/").await.unwrap(),
            "ok",
            "not drained by route, cluster or endpoint updates"
        );

        // The listener changes (an RBAC filter): old connections drain.
        let in_flight = {
            let mut c = old.clone();
            tokio::spawn(async move { get(&mut c, "/slow").await })
        };
        sleep(Duration::from_millis(50)).await;
        let v2 = server_listener(
            &sv.name,
            sv.addr,
            &[Chain {
                rds: true,
                rbac: true,
                ..Chain::default()
            }],
        );
        sv.s.send(response(L, "2", "l2", vec![v2, listener("svc:80", "rt")]))
            .await;
        let ack = expect(&mut sv.s, L).await;
        assert!(ack.error_detail.is_none(), "{ack:?}");
        assert_eq!(
            in_flight.await.unwrap().unwrap(),
            "slow",
            "the request in flight finishes"
        );
        tokio::time::timeout(Duration::from_secs(5), async {
            while get(&mut old, "/").await.is_ok() {
                sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the old connection is drained (GOAWAY)");
        assert!(sv.state.borrow().is_serving(), "the port stays open");
        let mut new = h2(sv.addr).await;
        assert_eq!(get(&mut new, "/").await.unwrap(), "ok");
    }
}

/// A9.3 (gRFC A36 `FilterChainMatch`): proxyless servers do not sniff.
/// Filter chains that match on `server_names`, `application_protocols` or
/// a `transport_protocol` other than `raw_buffer` never match (they are
/// dropped and recorded as ignored); `raw_buffer` matches; a listener
/// with no chain that can match is rejected with the reason.
#[test]
fn a9_3_no_sniffing_only_raw_buffer_filter_chains_match() {
    use mesh_xds::pb::envoy::config::listener::v3 as lds;
    use server_side::{Chain, server_listener};
    let addr: std::net::SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let ctx = mesh_xds::resource::DecodeContext::default();
    let sni = || lds::FilterChainMatch {
        server_names: vec!["svc.example".into()],
        ..Default::default()
    };
    let alpn = || lds::FilterChainMatch {
        application_protocols: vec!["h2".into()],
        ..Default::default()
    };
    let tls = || lds::FilterChainMatch {
        transport_protocol: "tls".into(),
        ..Default::default()
    };
    let raw = || lds::FilterChainMatch {
        transport_protocol: "raw_buffer".into(),
        ..Default::default()
    };
    let with = |m: fn() -> lds::FilterChainMatch| Chain {
        matching: Some(m),
        ..Chain::default()
    };
    let any = server_listener(
        "inbound",
        addr,
        &[with(sni), with(alpn), with(tls), with(raw)],
    );
    let d = mesh_xds::translate::decode(L, &any, &ctx).expect("the raw_buffer chain serves");
    for i in 0..3 {
        assert!(
            d.ignored.contains(&format!("filter_chains[{i}]")),
            "chain {i} never matches: {:?}",
            d.ignored
        );
    }
    assert!(!d.ignored.contains(&"filter_chains[3]".to_owned()));
    let only_sniffing = server_listener("inbound", addr, &[with(sni), with(alpn), with(tls)]);
    let e = mesh_xds::translate::decode(L, &only_sniffing, &ctx).unwrap_err();
    assert!(
        e.reason.contains("no filter chain can match"),
        "{}",
        e.reason
    );
}
