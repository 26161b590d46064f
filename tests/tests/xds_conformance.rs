//! The xDS client conformance suite: one test per numbered rule of section
//! A of `rules-xds-security-resilience.md`, named after the rule, against
//! a scripted ADS server (`mesh_tests::xds_script`) over in-memory pipes,
//! on paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_core::ConfigStore;
use mesh_core::model::{HashKey, LbPolicy};
use mesh_tests::xds_script::{
    self, Mode, ScriptedAds, SotwStream, cluster, delta_response, endpoints, invalid_cluster,
    invalid_listener, listener, listener_inline, response, ring_hash_cluster, route, route_hashed,
};
use mesh_xds::client::ClientOptions;
use mesh_xds::config::{ClientConfig, Protocol};
use mesh_xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_xds::{ResourceState, ResourceStatus, TypeUrl, XdsClient};
use tokio::time::{Instant, advance, sleep};

const L: TypeUrl = TypeUrl::Listener;
const R: TypeUrl = TypeUrl::RouteConfiguration;
const C: TypeUrl = TypeUrl::Cluster;
const E: TypeUrl = TypeUrl::ClusterLoadAssignment;

struct Env {
    servers: Vec<Arc<ScriptedAds>>,
    client: XdsClient,
    store: ConfigStore,
}

fn start_with(n: usize, protocol: Protocol, tweak: impl FnOnce(&mut ClientConfig)) -> Env {
    let servers: Vec<_> = (0..n).map(|_| ScriptedAds::start()).collect();
    let mut config = xds_script::config(n, protocol);
    tweak(&mut config);
    let store = ConfigStore::new();
    let client = XdsClient::start_with(
        config,
        store.clone(),
        ClientOptions {
            connector: Some(xds_script::connector(servers.clone())),
            decoder: None,
        },
    );
    Env {
        servers,
        client,
        store,
    }
}

fn start() -> Env {
    start_with(1, Protocol::StateOfTheWorld, |_| {})
}

impl Env {
    fn server(&self) -> &Arc<ScriptedAds> {
        &self.servers[0]
    }

    fn status(&self, t: TypeUrl, name: &str) -> ResourceStatus {
        self.client
            .status()
            .into_iter()
            .find(|s| s.type_url == t && s.name == name)
            .unwrap_or_else(|| panic!("no status for {} {name}", t.as_str()))
    }

    fn has_status(&self, t: TypeUrl, name: &str) -> bool {
        self.client
            .status()
            .iter()
            .any(|s| s.type_url == t && s.name == name)
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

/// Serves a whole cascade `lis` → `rt` → `c` → `c-eds` with version
/// `v` and nonces `<type>-<v>`; returns after the EDS ACK.
async fn serve_cascade(s: &mut SotwStream, lis: &str, rt: &str, c: &str, v: &str) {
    s.send(response(L, v, &format!("l-{v}"), vec![listener(lis, rt)]))
        .await;
    expect(s, L).await;
    let r = expect(s, R).await;
    assert_eq!(names(&r), [rt]);
    s.send(response(R, v, &format!("r-{v}"), vec![route(rt, &[c])]))
        .await;
    expect(s, R).await;
    let r = expect(s, C).await;
    assert_eq!(names(&r), [c]);
    let eds = format!("{c}-eds");
    s.send(response(C, v, &format!("c-{v}"), vec![cluster(c, &eds)]))
        .await;
    expect(s, C).await;
    let r = expect(s, E).await;
    assert_eq!(names(&r), [eds.as_str()]);
    s.send(response(
        E,
        v,
        &format!("e-{v}"),
        vec![endpoints(&eds, &["10.0.0.1:80"])],
    ))
    .await;
    expect(s, E).await;
}

// === A.1 wire protocol ===

#[tokio::test(start_paused = true)]
async fn a1_1_first_request_of_every_stream_carries_node() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    let first = expect(&mut s, L).await;
    assert_eq!(first.node.as_ref().unwrap().id, "node-1");
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    let ack = expect(&mut s, L).await;
    assert!(ack.node.is_none(), "later requests omit the node");
    let rds = expect(&mut s, R).await;
    assert!(rds.node.is_none());
    s.close();
    let mut s2 = env.server().sotw_stream().await;
    let again = s2.recv().await;
    assert_eq!(
        again.node.as_ref().unwrap().id,
        "node-1",
        "node re-sent on the new stream"
    );
}

#[tokio::test(start_paused = true)]
async fn a1_2_every_response_is_acked_with_its_nonce() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    for (i, nonce) in ["a", "b", "c"].iter().enumerate() {
        let v = i.to_string();
        s.send(response(L, &v, nonce, vec![listener("svc:80", "rt")]))
            .await;
        let ack = expect(&mut s, L).await;
        assert_eq!(ack.response_nonce, *nonce);
        assert_eq!(ack.version_info, v);
        if i == 0 {
            expect(&mut s, R).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a1_3_nack_carries_previous_version_and_current_nonce() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    // A NACK of the very first response carries an empty version.
    s.send(response(
        L,
        "1",
        "n1",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    let nack = expect(&mut s, L).await;
    assert_eq!(nack.version_info, "");
    assert_eq!(nack.response_nonce, "n1");
    assert!(nack.error_detail.unwrap().message.contains("svc:80"));
    s.send(response(L, "2", "n2", vec![listener("svc:80", "rt")]))
        .await;
    let ack = expect(&mut s, L).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("2", "n2")
    );
    expect(&mut s, R).await;
    s.send(response(
        L,
        "3",
        "n3",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    let nack = expect(&mut s, L).await;
    assert_eq!(nack.version_info, "2", "the previously accepted version");
    assert_eq!(nack.response_nonce, "n3", "the current nonce");
    assert!(nack.error_detail.is_some());
}

#[tokio::test(start_paused = true)]
async fn a1_4_version_per_type_survives_reconnect_nonce_does_not() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "7").await;
    s.close();
    let mut s2 = env.server().sotw_stream().await;
    for t in [L, R, C, E] {
        let r = expect(&mut s2, t).await;
        assert_eq!(r.version_info, "7", "{} keeps its version", t.as_str());
        assert_eq!(r.response_nonce, "", "nonce is per stream");
    }
}

#[tokio::test(start_paused = true)]
async fn a1_5_error_detail_only_on_nack() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    assert!(expect(&mut s, L).await.error_detail.is_none());
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    assert!(
        expect(&mut s, L).await.error_detail.is_none(),
        "ACK has no error_detail"
    );
    assert!(expect(&mut s, R).await.error_detail.is_none());
    s.send(response(
        L,
        "2",
        "n2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    let nack = expect(&mut s, L).await;
    assert!(!nack.error_detail.unwrap().message.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a1_6_error_detail_message_is_capped() {
    let env = start();
    let long = format!("svc-{}:80", "x".repeat(5000));
    let _w = env.client.watch_listener(&long);
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![invalid_listener(&long, "rt")]))
        .await;
    let msg = expect(&mut s, L).await.error_detail.unwrap().message;
    assert!(
        msg.ends_with("...(truncated)"),
        "{}",
        &msg[msg.len() - 40..]
    );
    assert_eq!(msg.len(), 4096 + "...(truncated)".len());
    // The reason stays in the status.
    assert!(env.status(L, &long).error.unwrap().contains("http_filters"));
}

#[tokio::test(start_paused = true)]
async fn a1_7_inner_type_url_mismatch_is_nacked() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![cluster("svc:80", "e")]))
        .await;
    let nack = expect(&mut s, L).await;
    assert_eq!(nack.version_info, "");
    assert!(nack.error_detail.unwrap().message.contains("Cluster"));
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Requested);
}

#[tokio::test(start_paused = true)]
async fn a1_8_unwatched_type_is_rejected_without_poisoning_others() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(C, "1", "c1", vec![cluster("c", "e")]))
        .await;
    let nack = expect(&mut s, C).await;
    assert!(nack.error_detail.is_some());
    assert!(!env.has_status(C, "c"));
    // An unknown type is NACKed too.
    let mut odd = response(C, "1", "x1", vec![]);
    odd.type_url = "type.googleapis.com/example.Unknown".into();
    s.send(odd).await;
    let r = s.recv().await;
    assert_eq!(r.type_url, "type.googleapis.com/example.Unknown");
    assert!(r.error_detail.is_some());
    // LDS is unaffected.
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    let ack = expect(&mut s, L).await;
    assert!(ack.error_detail.is_none());
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Acked);
}

#[tokio::test(start_paused = true)]
async fn a1_9_duplicate_resource_names_are_nacked() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "n1",
        vec![listener("svc:80", "a"), listener("svc:80", "b")],
    ))
    .await;
    let nack = expect(&mut s, L).await;
    assert!(nack.error_detail.unwrap().message.contains("duplicate"));
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Nacked);
}

#[tokio::test(start_paused = true)]
async fn a1_10_unrequested_resources_are_ignored() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "n1",
        vec![listener("svc:80", "rt"), listener("other:81", "rt2")],
    ))
    .await;
    let ack = expect(&mut s, L).await;
    assert!(ack.error_detail.is_none());
    assert!(!env.has_status(L, "other:81"));
    let rds = expect(&mut s, R).await;
    assert_eq!(names(&rds), ["rt"], "only the requested listener's route");
}

/// A1.11 (grpc-java#11232): after every name of a type (here RDS) was
/// unsubscribed and the server answered, a re-subscription carries the
/// latest nonce of that type, and the next ACK is right. (Another watched
/// listener keeps the stream: with nothing watched it closes, A1.12.)
#[tokio::test(start_paused = true)]
async fn a1_11_resubscribe_after_unsubscribe_all_has_no_stale_nonce() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    let both = || vec![listener_inline("a:80", "c1"), listener("b:81", "rb")];
    s.send(response(L, "1", "l1", both())).await;
    expect(&mut s, L).await;
    assert_eq!(names(&expect(&mut s, R).await), ["rb"]);
    assert_eq!(names(&expect(&mut s, C).await), ["c1"]);
    s.send(response(R, "1", "r1", vec![route("rb", &["c1"])]))
        .await;
    expect(&mut s, R).await;
    drop(b);
    assert_eq!(names(&expect(&mut s, L).await), ["a:80"]);
    let unsub = expect(&mut s, R).await;
    assert!(unsub.resource_names.is_empty());
    // The server answers the unsubscription.
    s.send(response(R, "2", "r2", vec![])).await;
    assert_eq!(expect(&mut s, R).await.response_nonce, "r2");
    let _b = env.client.watch_listener("b:81");
    assert_eq!(names(&expect(&mut s, L).await), ["a:80", "b:81"]);
    s.send(response(L, "2", "l2", both())).await;
    expect(&mut s, L).await;
    let resub = expect(&mut s, R).await;
    assert_eq!(names(&resub), ["rb"]);
    assert_eq!(
        resub.response_nonce, "r2",
        "the latest nonce, not a stale one"
    );
    s.send(response(R, "3", "r3", vec![route("rb", &["c1"])]))
        .await;
    let ack = expect(&mut s, R).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("3", "r3")
    );
    assert!(ack.error_detail.is_none());
}

#[tokio::test(start_paused = true)]
async fn a1_13_next_response_is_read_after_the_previous_is_applied() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    // Three responses at once: each ACK arrives in order, and when the
    // ACK of a response arrives, its content is already in the store.
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    s.send(response(L, "2", "n2", vec![listener("svc:80", "rt")]))
        .await;
    s.send(response(L, "3", "n3", vec![listener("svc:80", "rt")]))
        .await;
    let mut acks = Vec::new();
    let mut rds = 0;
    while acks.len() < 3 {
        let r = s.recv().await;
        if r.type_url == L.as_str() {
            acks.push(r.response_nonce);
        } else {
            assert_eq!(r.type_url, R.as_str());
            rds += 1;
        }
    }
    assert_eq!(acks, ["n1", "n2", "n3"]);
    assert_eq!(rds, 1, "RDS subscribed once, after the first ACK");
    s.send(response(R, "1", "r1", vec![route("rt", &["c1"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(C, "1", "c1", vec![cluster("c1", "c1-eds")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("c1-eds", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    assert!(snap.listener("svc:80").is_some(), "applied before the ACK");
    assert_eq!(snap.endpoints("c1").unwrap().endpoints().len(), 1);
}

// === A.2 validation ===

#[tokio::test(start_paused = true)]
async fn a2_2_valid_resources_of_a_rejected_response_still_apply() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.send(response(R, "1", "r1", vec![route("rt", &["good", "bad"])]))
        .await;
    expect(&mut s, R).await;
    let cds = expect(&mut s, C).await;
    assert_eq!(names(&cds), ["bad", "good"]);
    s.send(response(
        C,
        "1",
        "c1",
        vec![cluster("good", "good-eds"), invalid_cluster("bad")],
    ))
    .await;
    let nack = expect(&mut s, C).await;
    assert!(nack.error_detail.unwrap().message.contains("bad"));
    assert_eq!(nack.version_info, "");
    assert_eq!(env.status(C, "good").state, ResourceState::Acked);
    assert_eq!(env.status(C, "bad").state, ResourceState::Nacked);
    let eds = expect(&mut s, E).await;
    assert_eq!(names(&eds), ["good-eds"]);
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("good-eds", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    // Published: the good cluster with its endpoints; the bad one without
    // endpoints (its calls fail), named in the warnings.
    let snap = env.store.snapshot();
    assert_eq!(snap.endpoints("good").unwrap().endpoints().len(), 1);
    assert!(snap.endpoints("bad").unwrap().endpoints().is_empty());
    let st = env.store.source_status(&"xds".into()).unwrap();
    assert!(
        st.warnings
            .iter()
            .any(|w| w.contains("\"bad\"") && w.contains("node-1")),
        "{:?}",
        st.warnings
    );
}

#[tokio::test(start_paused = true)]
async fn a2_3_nack_keeps_the_cached_version() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    let before = env.store.version();
    s.send(response(
        L,
        "2",
        "l-2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, L).await;
    let st = env.status(L, "svc:80");
    assert_eq!(st.state, ResourceState::Nacked);
    assert!(st.cached);
    assert_eq!(st.version.as_deref(), Some("1"));
    assert_eq!(st.error_version.as_deref(), Some("2"));
    assert!(st.error.is_some());
    assert_eq!(
        env.store.version(),
        before,
        "the config in use did not change"
    );
    assert!(env.store.snapshot().listener("svc:80").is_some());
}

#[tokio::test(start_paused = true)]
async fn a2_4_nack_without_cache_fails_only_that_resource() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    let r = expect(&mut s, L).await;
    assert_eq!(names(&r), ["a:80", "b:81"]);
    s.send(response(
        L,
        "1",
        "l1",
        vec![invalid_listener("a:80", "ra"), listener("b:81", "rb")],
    ))
    .await;
    expect(&mut s, L).await;
    let rds = expect(&mut s, R).await;
    assert_eq!(names(&rds), ["rb"]);
    s.send(response(R, "1", "r1", vec![route("rb", &["cb"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(C, "1", "c1", vec![cluster("cb", "cb")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("cb", &["10.0.0.2:81"])],
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    assert!(
        snap.listener("a:80").is_none(),
        "the rejected listener is not published"
    );
    assert!(snap.listener("b:81").is_some(), "the other one is");
    assert_eq!(env.status(L, "a:80").state, ResourceState::Nacked);
}

#[tokio::test(start_paused = true)]
async fn a2_5_nack_is_not_does_not_exist() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "n1",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, L).await;
    sleep(Duration::from_secs(60)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Nacked);
}

#[tokio::test(start_paused = true)]
async fn a2_6_unchanged_resource_does_not_republish() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    let v = env.store.version();
    // The same cluster again, under a new version: nothing to notify.
    s.send(response(C, "2", "c-2", vec![cluster("c1", "c1-eds")]))
        .await;
    let ack = expect(&mut s, C).await;
    assert_eq!(ack.version_info, "2");
    assert_eq!(env.store.version(), v);
    // A NACK, then the previously seen value again: notified (the state
    // returns to ACKED and the error clears).
    s.send(response(C, "3", "c-3", vec![invalid_cluster("c1")]))
        .await;
    expect(&mut s, C).await;
    assert_eq!(env.status(C, "c1").state, ResourceState::Nacked);
    s.send(response(C, "4", "c-4", vec![cluster("c1", "c1-eds")]))
        .await;
    expect(&mut s, C).await;
    let st = env.status(C, "c1");
    assert_eq!(st.state, ResourceState::Acked);
    assert!(st.error.is_none());
}

// === A.3 existence and deletion ===

#[tokio::test(start_paused = true)]
async fn a3_1_does_not_exist_timer_runs_only_on_a_connected_stream() {
    let env = start();
    env.server().set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    sleep(Duration::from_secs(60)).await;
    assert_eq!(
        env.status(L, "svc:80").state,
        ResourceState::Requested,
        "no timer during backoff"
    );
    env.server().set_mode(Mode::Accept);
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    let t0 = Instant::now();
    sleep(Duration::from_secs(14)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Requested);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::DoesNotExist);
    assert!(t0.elapsed() >= Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn a3_2_timer_cancelled_on_arrival_and_fires_does_not_exist() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    sleep(Duration::from_secs(5)).await;
    s.send(response(L, "1", "n1", vec![listener("a:80", "ra")]))
        .await;
    expect(&mut s, L).await;
    sleep(Duration::from_secs(11)).await;
    assert_eq!(env.status(L, "a:80").state, ResourceState::Acked);
    let b = env.status(L, "b:81");
    assert_eq!(b.state, ResourceState::DoesNotExist);
    assert!(b.error.unwrap().contains("does not exist"));
    assert!(env.store.snapshot().listener("b:81").is_none());
}

#[tokio::test(start_paused = true)]
async fn a3_3_after_reconnect_timers_restart_only_for_uncached_resources() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![listener("a:80", "ra")]))
        .await;
    expect(&mut s, L).await;
    sleep(Duration::from_secs(10)).await;
    // The stream breaks before b's timer fires; the timer stops.
    s.close();
    let mut s2 = env.server().sotw_stream().await;
    expect(&mut s2, L).await;
    // Re-started on the new stream: not fired 10 s later (it would have
    // been 20 s after the first request).
    sleep(Duration::from_secs(10)).await;
    assert_eq!(env.status(L, "b:81").state, ResourceState::Requested);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(env.status(L, "b:81").state, ResourceState::DoesNotExist);
    assert_eq!(
        env.status(L, "a:80").state,
        ResourceState::Acked,
        "cached: no timer"
    );
}

#[tokio::test(start_paused = true)]
async fn a3_4_sotw_deletion_only_for_lds_and_cds() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.fail_on_data_errors = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    // RDS and EDS: absence means nothing.
    s.send(response(R, "2", "r-2", vec![])).await;
    expect(&mut s, R).await;
    s.send(response(E, "2", "e-2", vec![])).await;
    expect(&mut s, E).await;
    assert_eq!(env.status(R, "rt").state, ResourceState::Acked);
    assert_eq!(env.status(E, "c1-eds").state, ResourceState::Acked);
    // CDS: an empty response deletes the cluster (dropped with
    // fail_on_data_errors): its calls fail, the listener stays.
    s.send(response(C, "2", "c-2", vec![])).await;
    expect(&mut s, C).await;
    assert!(
        expect(&mut s, E).await.resource_names.is_empty(),
        "its EDS is no longer needed"
    );
    assert_eq!(env.status(C, "c1").state, ResourceState::DoesNotExist);
    assert!(!env.status(C, "c1").cached);
    assert!(
        env.store
            .snapshot()
            .endpoints("c1")
            .unwrap()
            .endpoints()
            .is_empty()
    );
    // LDS: omission deletes the listener.
    s.send(response(L, "2", "l-2", vec![])).await;
    expect(&mut s, L).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::DoesNotExist);
    assert!(env.store.snapshot().listener("svc:80").is_none());
}

#[tokio::test(start_paused = true)]
async fn a3_5_never_seen_resource_missing_from_lds_is_not_deleted() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![listener("a:80", "ra")]))
        .await;
    expect(&mut s, L).await;
    assert_eq!(env.status(L, "b:81").state, ResourceState::Requested);
}

#[tokio::test(start_paused = true)]
async fn a3_6_deletion_is_reported_once() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.fail_on_data_errors = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(L, "2", "l-2", vec![])).await;
    expect(&mut s, L).await;
    // Dropped (fail_on_data_errors): its dependencies are unsubscribed.
    for t in [R, C, E] {
        assert!(expect(&mut s, t).await.resource_names.is_empty());
    }
    let first = env.status(L, "svc:80");
    let v = env.store.version();
    advance(Duration::from_secs(1)).await;
    s.send(response(L, "3", "l-3", vec![])).await;
    expect(&mut s, L).await;
    let again = env.status(L, "svc:80");
    assert_eq!(again.error_at, first.error_at, "not reported again");
    assert_eq!(env.store.version(), v);
    // A watcher registered after the deletion sees it at once.
    let _w2 = env.client.watch_listener("svc:80");
    assert_eq!(env.status(L, "svc:80").state, ResourceState::DoesNotExist);
}

#[tokio::test(start_paused = true)]
async fn a3_7_ignore_resource_deletion_keeps_the_resource() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.ignore_resource_deletion = true;
        c.servers[0].features.fail_on_data_errors = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(L, "2", "l-2", vec![])).await;
    expect(&mut s, L).await;
    let st = env.status(L, "svc:80");
    assert_eq!(st.state, ResourceState::Acked);
    assert!(st.cached);
    assert!(env.store.snapshot().listener("svc:80").is_some());
}

#[tokio::test(start_paused = true)]
async fn a3_10_a88_defaults_keep_cached_values_fail_on_data_errors_drops_them() {
    // Default: a NACK and a deletion keep the cached value.
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(L, "2", "l-2", vec![])).await;
    expect(&mut s, L).await;
    let st = env.status(L, "svc:80");
    assert_eq!(st.state, ResourceState::DoesNotExist);
    assert!(st.cached, "kept by default");
    assert!(env.store.snapshot().listener("svc:80").is_some());

    // fail_on_data_errors: a NACK drops the cached value.
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.fail_on_data_errors = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(
        L,
        "2",
        "l-2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, L).await;
    assert!(!env.status(L, "svc:80").cached);
    assert!(env.store.snapshot().listener("svc:80").is_none());
}

#[tokio::test(start_paused = true)]
async fn a3_11_resource_timer_is_transient_error_waits_30s_and_reports_timeout() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.resource_timer_is_transient_error = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    sleep(Duration::from_secs(20)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Requested);
    sleep(Duration::from_secs(11)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Timeout);
}

// === A.4 stream lifecycle ===

#[tokio::test(start_paused = true)]
async fn a4_1_close_after_a_response_is_not_an_error() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    let v = env.store.version();
    s.close();
    let mut s2 = env.server().sotw_stream().await;
    expect(&mut s2, L).await;
    assert_eq!(env.client.metrics().server_failure, 0);
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Acked);
    assert_eq!(env.store.version(), v);
}

#[tokio::test(start_paused = true)]
async fn a4_2_close_before_any_response_backs_off_exponentially_and_resets_after_a_response() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.backoff.jitter = 0.0;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut opened = Vec::new();
    for _ in 0..4 {
        let mut s = env.server().sotw_stream().await;
        opened.push(Instant::now());
        expect(&mut s, L).await;
        s.fail(tonic::Status::unavailable("scripted")).await;
    }
    let gaps: Vec<u64> = opened
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    // 1 s, 1.6 s, 2.56 s (gRPC's backoff without jitter).
    assert_eq!(gaps, [1000, 1600, 2560]);
    // A response resets the backoff: the next failure waits 1 s again.
    let mut s = env.server().sotw_stream().await;
    assert_eq!(env.client.metrics().server_failure, 4);
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.close();
    let mut s = env.server().sotw_stream().await;
    let t = Instant::now();
    expect(&mut s, L).await;
    s.fail(tonic::Status::unavailable("scripted")).await;
    let _s = env.server().sotw_stream().await;
    assert_eq!(t.elapsed().as_millis(), 1000);
}

#[tokio::test(start_paused = true)]
async fn a4_4_a_server_that_resets_after_every_response_is_not_hammered() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut opened = Vec::new();
    for i in 0..4 {
        let mut s = env.server().sotw_stream().await;
        opened.push(Instant::now());
        expect(&mut s, L).await;
        s.send(response(
            L,
            &i.to_string(),
            "n",
            vec![listener("svc:80", "rt")],
        ))
        .await;
        while s.recv().await.response_nonce != "n" {}
        s.close();
    }
    for w in opened.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_secs(1),
            "at least 1 s between streams"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a4_5_everything_is_resubscribed_on_reconnect() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "4").await;
    s.fail(tonic::Status::unavailable("bye")).await;
    let mut s2 = env.server().sotw_stream().await;
    let want = [(L, "svc:80"), (R, "rt"), (C, "c1"), (E, "c1-eds")];
    for (t, n) in want {
        let r = expect(&mut s2, t).await;
        assert_eq!(names(&r), [n]);
        assert_eq!(r.version_info, "4");
        assert_eq!(r.response_nonce, "");
    }
}

#[tokio::test(start_paused = true)]
async fn a4_6_subscriptions_before_a_stream_exists_are_queued() {
    let env = start();
    env.server().set_mode(Mode::Refuse);
    let _a = env.client.watch_listener("a:80");
    sleep(Duration::from_millis(500)).await;
    let _b = env.client.watch_listener("b:81");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(env.status(L, "b:81").state, ResourceState::Requested);
    env.server().set_mode(Mode::Accept);
    let mut s = env.server().sotw_stream().await;
    let r = expect(&mut s, L).await;
    assert_eq!(names(&r), ["a:80", "b:81"]);
}

#[tokio::test(start_paused = true)]
async fn a4_9_more_than_64_clusters_do_not_deadlock() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    let n = 100;
    let cs: Vec<String> = (0..n).map(|i| format!("c{i:03}")).collect();
    let refs: Vec<&str> = cs.iter().map(String::as_str).collect();
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.send(response(R, "1", "r1", vec![route("rt", &refs)]))
        .await;
    expect(&mut s, R).await;
    let cds = expect(&mut s, C).await;
    assert_eq!(cds.resource_names.len(), n);
    s.send(response(
        C,
        "1",
        "c1",
        cs.iter().map(|c| cluster(c, c)).collect(),
    ))
    .await;
    expect(&mut s, C).await;
    let eds = expect(&mut s, E).await;
    assert_eq!(eds.resource_names.len(), n);
    s.send(response(
        E,
        "1",
        "e1",
        cs.iter()
            .enumerate()
            .map(|(i, c)| endpoints(c, &[&format!("10.0.{}.{}:80", i / 200, i % 200 + 1)]))
            .collect(),
    ))
    .await;
    let ack = expect(&mut s, E).await;
    assert!(ack.error_detail.is_none());
    let snap = env.store.snapshot();
    assert_eq!(snap.clusters().count(), n);
    assert_eq!(
        snap.endpoint_sets()
            .filter(|e| e.endpoints().len() == 1)
            .count(),
        n
    );
    // Interest churn meanwhile does not block either.
    let watches: Vec<_> = (0..200)
        .map(|i| env.client.watch_listener(&format!("x{i}:1")))
        .collect();
    drop(watches);
    let _ = s.try_recv(Duration::from_secs(1)).await;
    assert!(env.client.status().len() >= 4 * n / 2);
}

#[tokio::test(start_paused = true)]
async fn a4_10_connect_timeout_fires_on_a_blackholed_server() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.connect_timeout = Duration::from_secs(10);
    });
    env.server().set_mode(Mode::Blackhole);
    let _w = env.client.watch_listener("svc:80");
    sleep(Duration::from_secs(9)).await;
    assert_eq!(env.client.metrics().server_failure, 0);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(env.client.metrics().server_failure, 1);
    // It keeps trying, and succeeds once the server answers.
    env.server().set_mode(Mode::Accept);
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    assert!(env.server().connects() >= 2);
}

// === A.5 cache ===

#[tokio::test(start_paused = true)]
async fn a5_1_second_watch_is_served_from_cache() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    let _w2 = env.client.watch_listener("svc:80");
    s.expect_silence(Duration::from_secs(5)).await;
    assert!(env.store.snapshot().listener("svc:80").is_some());
}

#[tokio::test(start_paused = true)]
async fn a5_2_control_plane_loss_never_clears_the_cache() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    let v = env.store.version();
    env.server().set_mode(Mode::Refuse);
    s.fail(tonic::Status::unavailable("gone")).await;
    sleep(Duration::from_secs(3600)).await;
    assert!(env.client.metrics().server_failure > 5);
    assert_eq!(env.store.version(), v);
    let snap = env.store.snapshot();
    assert_eq!(snap.endpoints("c1").unwrap().endpoints().len(), 1);
    assert_eq!(env.status(E, "c1-eds").state, ResourceState::Acked);
}

// === A.7 delta ===

#[tokio::test(start_paused = true)]
async fn a7_2_no_legacy_wildcard_and_empty_list_only_after_names() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    // No request with an empty list for a type never subscribed (it
    // would mean wildcard); the first LDS request names the listeners.
    let r = expect(&mut s, L).await;
    assert_eq!(names(&r), ["a:80", "b:81"]);
    s.send(response(
        L,
        "1",
        "n1",
        vec![listener_inline("a:80", "c1"), listener("b:81", "rb")],
    ))
    .await;
    expect(&mut s, L).await;
    assert_eq!(names(&expect(&mut s, R).await), ["rb"]);
    assert_eq!(names(&expect(&mut s, C).await), ["c1"]);
    drop(b);
    assert_eq!(names(&expect(&mut s, L).await), ["a:80"]);
    // After names were sent, an empty list unsubscribes every name of
    // that type.
    let r = expect(&mut s, R).await;
    assert!(r.resource_names.is_empty());
    s.expect_silence(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a7_5_delta_ack_nack_pair_by_nonce_and_subscriptions_omit_it() {
    let env = start_with(1, Protocol::Delta, |_| {});
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().delta_stream().await;
    let first = s.recv().await;
    assert_eq!(first.type_url, L.as_str());
    assert_eq!(first.resource_names_subscribe, ["svc:80"]);
    assert_eq!(first.node.as_ref().unwrap().id, "node-1");
    assert_eq!(first.response_nonce, "");
    s.send(delta_response(
        L,
        "d1",
        vec![("svc:80", "v1", listener("svc:80", "rt"))],
        &[],
    ))
    .await;
    let ack = s.recv().await;
    assert_eq!(
        (ack.type_url.as_str(), ack.response_nonce.as_str()),
        (L.as_str(), "d1")
    );
    assert!(ack.error_detail.is_none());
    let sub = s.recv().await;
    assert_eq!(sub.type_url, R.as_str());
    assert_eq!(sub.resource_names_subscribe, ["rt"]);
    assert_eq!(
        sub.response_nonce, "",
        "a spontaneous subscription has no nonce"
    );
    s.send(delta_response(
        L,
        "d2",
        vec![("svc:80", "v2", invalid_listener("svc:80", "rt"))],
        &[],
    ))
    .await;
    let nack = s.recv().await;
    assert_eq!(nack.response_nonce, "d2");
    assert!(nack.error_detail.is_some());
    let st = env.status(L, "svc:80");
    assert_eq!(
        (st.state, st.version.as_deref()),
        (ResourceState::Nacked, Some("v1"))
    );
    // removed_resources: reported as does-not-exist (value kept, A88).
    s.send(delta_response(L, "d3", vec![], &["svc:80"])).await;
    let ack = s.recv().await;
    assert_eq!(ack.response_nonce, "d3");
    assert_eq!(env.status(L, "svc:80").state, ResourceState::DoesNotExist);
}

#[tokio::test(start_paused = true)]
async fn a7_6_delta_reconnect_resends_names_with_initial_resource_versions() {
    let env = start_with(1, Protocol::Delta, |_| {});
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().delta_stream().await;
    let first = s.recv().await;
    assert_eq!(first.resource_names_subscribe, ["a:80", "b:81"]);
    assert!(first.initial_resource_versions.is_empty());
    s.send(delta_response(
        L,
        "d1",
        vec![("a:80", "va", listener("a:80", "ra"))],
        &[],
    ))
    .await;
    s.recv().await; // ACK
    s.recv().await; // RDS subscribe
    s.close();
    let mut s2 = env.server().delta_stream().await;
    let again = s2.recv().await;
    assert_eq!(again.type_url, L.as_str());
    assert_eq!(again.resource_names_subscribe, ["a:80", "b:81"]);
    assert_eq!(again.initial_resource_versions.len(), 1);
    assert_eq!(again.initial_resource_versions["a:80"], "va");
    let rds = s2.recv().await;
    assert_eq!(rds.resource_names_subscribe, ["ra"]);
    // Unsubscription is explicit.
    drop(_b);
    let unsub = s2.recv().await;
    assert_eq!(unsub.resource_names_unsubscribe, ["b:81"]);
    assert!(unsub.resource_names_subscribe.is_empty());
}

// === A.8 cascade ===

#[tokio::test(start_paused = true)]
async fn a8_1_only_complete_configs_are_published() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    assert!(
        env.store.snapshot().listener("svc:80").is_none(),
        "no route table yet"
    );
    s.send(response(R, "1", "r1", vec![route("rt", &["c1"])]))
        .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    assert!(
        env.store.snapshot().listener("svc:80").is_none(),
        "no cluster yet"
    );
    s.send(response(C, "1", "c1", vec![cluster("c1", "e1")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    assert!(
        env.store.snapshot().cluster("c1").is_none(),
        "no endpoints yet"
    );
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("e1", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    assert!(snap.listener("svc:80").is_some());
    assert!(snap.route_table("rt").is_some());
    assert_eq!(snap.endpoints("c1").unwrap().endpoints().len(), 1);

    // Make-before-break: a new route to a cluster not received yet keeps
    // the previous complete config until the cluster and its EDS arrive.
    s.send(response(R, "2", "r2", vec![route("rt", &["c2"])]))
        .await;
    expect(&mut s, R).await;
    let cds = expect(&mut s, C).await;
    assert_eq!(names(&cds), ["c2"], "c1 unsubscribed, c2 subscribed");
    assert!(
        expect(&mut s, E).await.resource_names.is_empty(),
        "e1 unsubscribed"
    );
    let snap = env.store.snapshot();
    assert!(snap.cluster("c1").is_some(), "still the previous version");
    assert!(snap.cluster("c2").is_none());
    s.send(response(C, "2", "c2", vec![cluster("c2", "e2")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    assert!(
        env.store.snapshot().cluster("c2").is_none(),
        "EDS of c2 still awaited"
    );
    s.send(response(
        E,
        "2",
        "e2",
        vec![endpoints("e2", &["10.0.0.2:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    assert!(snap.cluster("c2").is_some());
    assert!(snap.cluster("c1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a8_1_missing_eds_publishes_empty_endpoints_after_the_timer() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "l1",
        vec![listener_inline("svc:80", "c1")],
    ))
    .await;
    expect(&mut s, L).await;
    let cds = expect(&mut s, C).await;
    assert_eq!(names(&cds), ["c1"], "inline routes: no RDS");
    s.send(response(C, "1", "c1", vec![cluster("c1", "e1")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    sleep(Duration::from_secs(16)).await;
    let snap = env.store.snapshot();
    assert!(snap.listener("svc:80").is_some());
    assert!(snap.endpoints("c1").unwrap().endpoints().is_empty());
    let st = env.store.source_status(&"xds".into()).unwrap();
    assert!(
        st.warnings.iter().any(|w| w.contains("\"e1\"")),
        "{:?}",
        st.warnings
    );
}

#[tokio::test(start_paused = true)]
async fn a8_5_cluster_watches_are_reference_counted_by_route_use() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "l1",
        vec![listener("a:80", "ra"), listener("b:81", "rb")],
    ))
    .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.send(response(
        R,
        "1",
        "r1",
        vec![route("ra", &["shared", "only-a"]), route("rb", &["shared"])],
    ))
    .await;
    expect(&mut s, R).await;
    let cds = expect(&mut s, C).await;
    assert_eq!(names(&cds), ["only-a", "shared"]);
    // ra stops using only-a: unsubscribed; shared is still used by rb.
    s.send(response(R, "2", "r2", vec![route("ra", &["shared"])]))
        .await;
    expect(&mut s, R).await;
    let cds = expect(&mut s, C).await;
    assert_eq!(names(&cds), ["shared"]);
    assert!(!env.has_status(C, "only-a"), "dropped from the cache");
    // Dropping listener a keeps shared (b still routes to it).
    drop(_a);
    let lds = expect(&mut s, L).await;
    assert_eq!(names(&lds), ["b:81"]);
    let rds = expect(&mut s, R).await;
    assert_eq!(names(&rds), ["rb"]);
    s.expect_silence(Duration::from_secs(1)).await;
}

// === task lifetime, channel, status ===

#[tokio::test(start_paused = true)]
async fn a4_9_the_task_ends_with_the_last_handle_and_on_shutdown() {
    // The last handle (here a watch outliving the client) stops the task:
    // the stream closes.
    let env = start();
    let w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    drop(env.client);
    s.expect_silence(Duration::from_secs(1)).await;
    drop(w);
    assert!(s.try_recv(Duration::from_secs(5)).await.is_none());
    // shutdown() stops it although other handles live.
    let env = start();
    let other = env.client.clone();
    let _w = other.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    env.client.shutdown().await;
    assert!(s.try_recv(Duration::from_secs(5)).await.is_none());
    assert_eq!(other.node().id, "node-1");
}

#[tokio::test]
async fn channel_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("XDS");
    let server = ScriptedAds::start();
    server.serve_unix(&path);
    let mut config = xds_script::config(1, Protocol::StateOfTheWorld);
    config.servers[0].uri = format!("unix://{}", path.display());
    let client = XdsClient::start(config, ConfigStore::new());
    let _w = client.watch_listener("svc:80");
    let mut s = server.sotw_stream().await;
    let r = expect(&mut s, L).await;
    assert_eq!(names(&r), ["svc:80"]);
    assert_eq!(r.node.unwrap().id, "node-1");
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    assert_eq!(expect(&mut s, L).await.version_info, "1");
    client.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a3_13_status_and_metrics_agree_with_what_was_applied() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(C, "2", "c-2", vec![invalid_cluster("c1")]))
        .await;
    expect(&mut s, C).await;
    let m = env.client.metrics();
    assert!(m.connected);
    assert_eq!(
        (m.valid(L), m.valid(R), m.valid(C), m.valid(E)),
        (1, 1, 1, 1)
    );
    assert_eq!(m.invalid(C), 1);
    assert!(m.resources.contains(&(C, ResourceState::Nacked, 1)));
    assert!(m.resources.contains(&(L, ResourceState::Acked, 1)));
    let st = env.status(C, "c1");
    assert_eq!(st.version.as_deref(), Some("1"));
    assert!(st.last_updated.is_some());
    assert!(st.error.as_deref().unwrap().contains("choice_count"));
    // Raw values for config dumps.
    let raw = env.client.raw_resources();
    let (_, _, any) = raw
        .iter()
        .find(|(t, n, _)| *t == E && n == "c1-eds")
        .unwrap();
    assert_eq!(any.as_ref().unwrap().type_url, E.as_str());
    // Status serializes as JSON with the state names CSDS uses.
    let json = serde_json::to_string(&st).unwrap();
    assert!(json.contains("\"NACKED\""), "{json}");
}

#[tokio::test(start_paused = true)]
async fn server_listener_watch_uses_the_template() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.server_listener_resource_name_template = Some("xds.istio.io/grpc/lds/inbound/%s".into());
    });
    let _w = env
        .client
        .watch_server_listener("10.1.2.3:8080".parse().unwrap());
    let _w6 = env
        .client
        .watch_server_listener("[::1]:9090".parse().unwrap());
    let mut s = env.server().sotw_stream().await;
    let r = expect(&mut s, L).await;
    assert_eq!(
        names(&r),
        [
            "xds.istio.io/grpc/lds/inbound/10.1.2.3:8080",
            "xds.istio.io/grpc/lds/inbound/[::1]:9090"
        ]
    );
}

// === A.6 fallback ===

#[tokio::test(start_paused = true)]
async fn a6_1_fallback_on_connectivity_failure_with_uncached_resources() {
    let env = start_with(2, Protocol::StateOfTheWorld, |_| {});
    env.servers[0].set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.servers[1].sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    assert!(env.store.snapshot().listener("svc:80").is_some());
    assert_eq!(env.client.metrics().server, 1);
}

#[tokio::test(start_paused = true)]
async fn a6_2_no_fallback_when_everything_is_cached() {
    let env = start_with(2, Protocol::StateOfTheWorld, |_| {});
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.servers[0].sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    env.servers[0].set_mode(Mode::Refuse);
    s.fail(tonic::Status::unavailable("down")).await;
    sleep(Duration::from_secs(60)).await;
    assert_eq!(env.servers[1].connects(), 0, "never contacted");
    assert!(env.store.snapshot().listener("svc:80").is_some());
}

#[tokio::test(start_paused = true)]
async fn a6_3_primary_is_retried_and_wins_back_when_it_answers() {
    let env = start_with(2, Protocol::StateOfTheWorld, |_| {});
    env.servers[0].set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    let mut fb = env.servers[1].sotw_stream().await;
    expect(&mut fb, L).await;
    serve_cascade(&mut fb, "svc:80", "rt", "c1", "f1").await;
    let before = env.servers[0].connects();
    sleep(Duration::from_secs(5)).await;
    assert!(
        env.servers[0].connects() > before,
        "the primary is still tried"
    );
    env.servers[0].set_mode(Mode::Accept);
    let mut p = env.servers[0].sotw_stream().await;
    let first = expect(&mut p, L).await;
    assert_eq!(first.version_info, "", "versions are per server");
    assert_eq!(first.node.unwrap().id, "node-1");
    for t in [R, C, E] {
        assert_eq!(expect(&mut p, t).await.version_info, "");
    }
    // Until the primary answers, the fallback stream stays.
    p.send(response(L, "p1", "pl1", vec![listener("svc:80", "rt")]))
        .await;
    let ack = expect(&mut p, L).await;
    assert_eq!(ack.response_nonce, "pl1");
    // The fallback stream is closed.
    assert!(fb.try_recv(Duration::from_secs(5)).await.is_none());
    assert_eq!(env.client.metrics().server, 0);
}

#[tokio::test(start_paused = true)]
async fn a6_4_errors_surface_only_after_every_server_failed() {
    let env = start_with(2, Protocol::StateOfTheWorld, |_| {});
    env.servers[0].set_mode(Mode::Refuse);
    env.servers[1].set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    sleep(Duration::from_millis(1)).await;
    // Both servers were tried before the first backoff.
    assert_eq!(env.servers[0].connects(), 1);
    assert_eq!(env.servers[1].connects(), 1);
    assert_eq!(env.client.metrics().server_failure, 2);
    assert!(!env.client.metrics().connected);
}

#[tokio::test(start_paused = true)]
async fn a6_5_primary_dies_mid_update_and_the_fallback_completes_it() {
    let env = start_with(2, Protocol::StateOfTheWorld, |_| {});
    let _w = env.client.watch_listener("svc:80");
    let mut p = env.servers[0].sotw_stream().await;
    expect(&mut p, L).await;
    serve_cascade(&mut p, "svc:80", "rt", "c1", "1").await;
    // The new route points at a cluster not fetched yet; the primary dies.
    p.send(response(R, "2", "r-2", vec![route("rt", &["c2"])]))
        .await;
    expect(&mut p, R).await;
    assert_eq!(names(&expect(&mut p, C).await), ["c2"]);
    env.servers[0].set_mode(Mode::Refuse);
    p.fail(tonic::Status::unavailable("primary down")).await;
    // c2 is not cached: the client falls back and the update completes.
    let mut f = env.servers[1].sotw_stream().await;
    let mut opening = Vec::new();
    for t in [L, R, C] {
        opening.push(expect(&mut f, t).await);
    }
    let cds = opening.iter().find(|r| r.type_url == C.as_str()).unwrap();
    assert_eq!(names(cds), ["c2"]);
    assert!(
        env.store.snapshot().cluster("c1").is_some(),
        "the old config meanwhile"
    );
    f.send(response(C, "f1", "fc1", vec![cluster("c2", "e2")]))
        .await;
    expect(&mut f, C).await;
    assert_eq!(names(&expect(&mut f, E).await), ["e2"]);
    f.send(response(
        E,
        "f1",
        "fe1",
        vec![endpoints("e2", &["10.0.0.9:80"])],
    ))
    .await;
    expect(&mut f, E).await;
    let snap = env.store.snapshot();
    assert_eq!(snap.endpoints("c2").unwrap().endpoints().len(), 1);
    assert!(snap.cluster("c1").is_none());
}

/// gRFC A42: the consistent-hash key of a ring-hash cluster is the one its
/// routes set; the subscriber moves it onto the published cluster.
#[tokio::test(start_paused = true)]
async fn a42_route_hash_policy_keys_the_ring_hash_cluster() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.send(response(
        R,
        "1",
        "r1",
        vec![route_hashed("rt", "c1", "x-user")],
    ))
    .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(C, "1", "c1", vec![ring_hash_cluster("c1", "e1")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e1",
        vec![endpoints("e1", &["10.0.0.1:80", "10.0.0.2:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    let cluster = snap.cluster("c1").expect("published");
    match &cluster.lb_policy {
        LbPolicy::RingHash { key, .. } => assert_eq!(
            *key,
            HashKey::Header(http::HeaderName::from_static("x-user")),
            "the route's key, not the CDS placeholder"
        ),
        other => panic!("expected RING_HASH, got {other:?}"),
    }
}

// === rules without a test of their own until now ===

/// Serves `lis` → RDS `rt` → `clusters` up to the CDS request, which it
/// returns (names sorted).
async fn serve_to_cds(s: &mut SotwStream, lis: &str, rt: &str, clusters: &[&str]) -> Vec<String> {
    s.send(response(L, "1", "l-1", vec![listener(lis, rt)]))
        .await;
    expect(s, L).await;
    assert_eq!(names(&expect(s, R).await), [rt]);
    s.send(response(R, "1", "r-1", vec![route(rt, clusters)]))
        .await;
    expect(s, R).await;
    expect(s, C).await.resource_names
}

/// The forwarding action of route `i` of the first virtual host of `t`.
fn forward(t: &mesh_core::model::RouteTable, i: usize) -> &mesh_core::model::ForwardAction {
    let vh = t.virtual_hosts().first().expect("a virtual host");
    match &vh.routes[i].action {
        mesh_core::model::RouteAction::Forward(f) => f.as_ref(),
        other => panic!("route {i} does not forward: {other:?}"),
    }
}

/// A2.1 (gRFC A27, A46): a field the client does not apply is ignored and
/// recorded per resource (status `ignored_fields`, store warnings); an
/// unsupported value of a supported field rejects that resource only. The
/// per-field cases are unit tests in `mesh-xds/src/translate/cds_tests.rs`
/// (`a2_1_fields_without_model_support_are_recorded_as_ignored`,
/// `a2_9_an_unsupported_lb_policy_is_nacked`) and `route_tests.rs`.
#[tokio::test(start_paused = true)]
async fn a2_1_unknown_fields_are_ignored_and_recorded_unsupported_values_reject() {
    use mesh_xds::pb::envoy::config::cluster::v3 as cds;
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    assert_eq!(
        serve_to_cds(&mut s, "svc:80", "rt", &["odd", "plain"]).await,
        ["odd", "plain"]
    );
    let mut plain = xds_script::cluster_proto("plain", "plain-eds", None);
    plain.health_checks = vec![Default::default()];
    plain.lb_subset_config = Some(Default::default());
    let mut odd = xds_script::cluster_proto("odd", "odd-eds", None);
    odd.lb_policy = cds::cluster::LbPolicy::ClusterProvided as i32;
    s.send(response(
        C,
        "1",
        "c-1",
        vec![xds_script::any(C, &plain), xds_script::any(C, &odd)],
    ))
    .await;
    let nack = expect(&mut s, C).await;
    let detail = nack.error_detail.expect("NACK").message;
    assert_eq!(
        detail,
        "odd: lb_policy: CLUSTER_PROVIDED is not supported (gRFC A27)"
    );
    let st = env.status(C, "plain");
    assert_eq!(
        st.state,
        ResourceState::Acked,
        "ignored fields do not reject"
    );
    assert_eq!(st.ignored_fields, ["health_checks", "lb_subset_config"]);
    assert_eq!(env.status(C, "odd").state, ResourceState::Nacked);
    assert_eq!(names(&expect(&mut s, E).await), ["plain-eds"]);
    s.send(response(
        E,
        "1",
        "e-1",
        vec![endpoints("plain-eds", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    let warnings = env.store.source_status(&"xds".into()).unwrap().warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"plain\"") && w.contains("health_checks")),
        "{warnings:?}"
    );
    assert_eq!(
        env.store
            .snapshot()
            .endpoints("plain")
            .unwrap()
            .endpoints()
            .len(),
        1
    );
}

/// A2.7: a security field that cannot be honoured NACKs the resource
/// (fail closed), the others still apply. Every field of the rule has a
/// unit test in `cds_tests.rs` (`a2_7_verify_certificate_spki_is_nacked`,
/// `…_hash_…`, `…_crl_…`, `…_custom_validator_config_…`,
/// `…_require_signed_certificate_timestamp_…`,
/// `a2_7_transport_socket_matches_are_nacked`,
/// `a2_7_an_unknown_certificate_provider_instance_is_nacked`).
#[tokio::test(start_paused = true)]
async fn a2_7_security_fields_that_cannot_be_honoured_are_nacked() {
    use mesh_xds::pb::envoy::config::cluster::v3 as cds;
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_to_cds(&mut s, "svc:80", "rt", &["good", "tsm"]).await;
    let mut tsm = xds_script::cluster_proto("tsm", "tsm-eds", None);
    tsm.transport_socket_matches = vec![cds::cluster::TransportSocketMatch {
        name: "tlsMode-istio".into(),
        ..Default::default()
    }];
    s.send(response(
        C,
        "1",
        "c-1",
        vec![cluster("good", "good-eds"), xds_script::any(C, &tsm)],
    ))
    .await;
    let nack = expect(&mut s, C).await;
    assert_eq!(
        nack.error_detail.unwrap().message,
        "tsm: transport_socket_matches: per-endpoint transport sockets cannot be honoured (rules A2.7)"
    );
    let st = env.status(C, "tsm");
    assert_eq!((st.state, st.cached), (ResourceState::Nacked, false));
    assert_eq!(env.status(C, "good").state, ResourceState::Acked);
    assert_eq!(names(&expect(&mut s, E).await), ["good-eds"]);
    s.send(response(
        E,
        "1",
        "e-1",
        vec![endpoints("good-eds", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    // The rejected cluster carries no traffic; the good one does.
    let snap = env.store.snapshot();
    assert!(snap.endpoints("tsm").unwrap().endpoints().is_empty());
    assert_eq!(snap.endpoints("good").unwrap().endpoints().len(), 1);
}

/// A2.8: an invalid ClusterLoadAssignment (here an explicit zero endpoint
/// weight) is NACKed with its field path; the other assignments of the
/// response apply. Each EDS rule has a unit test in `cds_tests.rs`
/// (`a2_8_an_explicitly_zero_endpoint_weight_is_nacked`,
/// `a2_8_endpoint_weights_above_u32_max_are_nacked`,
/// `a2_8_a_duplicate_endpoint_address_is_nacked`,
/// `a2_8_a_locality_without_id_is_nacked`,
/// `a2_8_locality_weights_above_u32_max_are_nacked`,
/// `a2_8_a_duplicate_locality_in_one_priority_is_nacked`,
/// `a2_8_non_contiguous_priorities_are_nacked`).
#[tokio::test(start_paused = true)]
async fn a2_8_invalid_endpoints_are_nacked_with_the_field_path() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_to_cds(&mut s, "svc:80", "rt", &["c1", "c2"]).await;
    s.send(response(
        C,
        "1",
        "c-1",
        vec![cluster("c1", "e1"), cluster("c2", "e2")],
    ))
    .await;
    expect(&mut s, C).await;
    assert_eq!(names(&expect(&mut s, E).await), ["e1", "e2"]);
    s.send(response(
        E,
        "1",
        "e-1",
        vec![
            xds_script::invalid_endpoints("e1", "10.0.0.1:80"),
            endpoints("e2", &["10.0.0.2:80"]),
        ],
    ))
    .await;
    let nack = expect(&mut s, E).await;
    assert_eq!(nack.version_info, "");
    assert_eq!(
        nack.error_detail.unwrap().message,
        "e1: endpoints[0].lb_endpoints[0].load_balancing_weight: 0: an explicit endpoint weight must be at least 1 (rules A2.8)"
    );
    assert_eq!(env.status(E, "e1").state, ResourceState::Nacked);
    assert_eq!(env.status(E, "e2").state, ResourceState::Acked);
    let snap = env.store.snapshot();
    assert_eq!(snap.endpoints("c2").unwrap().endpoints().len(), 1);
    assert!(snap.endpoints("c1").unwrap().endpoints().is_empty());
}

/// A2.9: CDS validation (unsupported ring-hash function, least-request
/// `choice_count` below 2) rejects those clusters with field paths in one
/// NACK; the valid cluster applies. Per rule: `cds_tests.rs`
/// `a2_9_an_unsupported_lb_policy_is_nacked`,
/// `a2_9_a_ring_hash_function_other_than_xx_hash_is_nacked`,
/// `a2_9_least_request_choice_count_below_2_is_nacked`,
/// `a2_9_an_eds_config_source_other_than_ads_or_self_is_nacked`,
/// `a2_9_an_aggregate_cluster_with_empty_clusters_is_nacked`,
/// `a2_9_logical_dns_without_exactly_one_endpoint_is_nacked`,
/// `a2_9_outlier_detection_percentages_above_100_are_nacked`,
/// `a2_9_outlier_detection_negative_durations_are_nacked`.
#[tokio::test(start_paused = true)]
async fn a2_9_invalid_clusters_are_nacked_with_the_field_path() {
    use mesh_xds::pb::envoy::config::cluster::v3 as cds;
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_to_cds(&mut s, "svc:80", "rt", &["lr", "ok", "rh"]).await;
    let mut rh = xds_script::cluster_proto("rh", "rh", None);
    rh.lb_policy = cds::cluster::LbPolicy::RingHash as i32;
    rh.lb_config = Some(cds::cluster::LbConfig::RingHashLbConfig(
        cds::cluster::RingHashLbConfig {
            hash_function: cds::cluster::ring_hash_lb_config::HashFunction::MurmurHash2 as i32,
            ..Default::default()
        },
    ));
    s.send(response(
        C,
        "1",
        "c-1",
        vec![
            invalid_cluster("lr"),
            cluster("ok", "ok"),
            xds_script::any(C, &rh),
        ],
    ))
    .await;
    let detail = expect(&mut s, C).await.error_detail.unwrap().message;
    assert_eq!(
        detail,
        "lr: lb_config.least_request_lb_config.choice_count: 1 is below 2 (gRFC A48); \
         rh: lb_config.ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported: only XX_HASH (gRFC A42)"
    );
    assert_eq!(env.status(C, "ok").state, ResourceState::Acked);
    assert_eq!(names(&expect(&mut s, E).await), ["ok"]);
}

/// A2.10: RDS and LDS rules. A route configuration whose weighted
/// clusters sum to 0 and a listener with an empty `http_filters` list are
/// NACKed with their field paths; the other listener and route apply.
/// Per rule: `route_tests.rs` (`nack_weighted_clusters_summing_to_zero`,
/// `nack_invalid_regex`, `nack_unknown_per_route_filter_config_unless_optional`),
/// `listener_tests.rs` (`nack_empty_http_filters`,
/// `nack_last_filter_not_terminal`, `nack_duplicate_filter_names`,
/// `nack_unknown_filter_type_unless_optional`) and `rbac_tests.rs`.
#[tokio::test(start_paused = true)]
async fn a2_10_invalid_routes_and_listeners_are_nacked_with_the_field_path() {
    use mesh_xds::pb::envoy::config::route::v3 as rds;
    use mesh_xds::pb::google::protobuf::UInt32Value;
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let _c = env.client.watch_listener("c:82");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "l-1",
        vec![
            listener("a:80", "ra"),
            listener("b:81", "rb"),
            invalid_listener("c:82", "rc"),
        ],
    ))
    .await;
    let nack = expect(&mut s, L).await;
    let detail = nack.error_detail.unwrap().message;
    assert!(
        detail.starts_with("c:82: ") && detail.contains("http_filters"),
        "{detail}"
    );
    assert_eq!(names(&expect(&mut s, R).await), ["ra", "rb"]);
    let mut ra = xds_script::route_proto("ra", &["x"]);
    if let Some(rds::route::Action::Route(a)) = &mut ra.virtual_hosts[0].routes[0].action {
        let w = |name: &str| rds::weighted_cluster::ClusterWeight {
            name: name.into(),
            weight: Some(UInt32Value { value: 0 }),
            ..Default::default()
        };
        a.cluster_specifier = Some(rds::route_action::ClusterSpecifier::WeightedClusters(
            rds::WeightedCluster {
                clusters: vec![w("x"), w("y")],
                ..Default::default()
            },
        ));
    }
    s.send(response(
        R,
        "1",
        "r-1",
        vec![xds_script::any(R, &ra), route("rb", &["cb"])],
    ))
    .await;
    let nack = expect(&mut s, R).await;
    assert_eq!(
        nack.error_detail.unwrap().message,
        "ra: virtual_hosts[0].routes[0].route.weighted_clusters: weights sum to 0"
    );
    assert_eq!(
        names(&expect(&mut s, C).await),
        ["cb"],
        "only rb's clusters"
    );
    s.send(response(C, "1", "c-1", vec![cluster("cb", "cb")]))
        .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e-1",
        vec![endpoints("cb", &["10.0.0.2:81"])],
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    assert!(snap.listener("b:81").is_some());
    assert!(snap.listener("a:80").is_none(), "its route was rejected");
    assert!(snap.listener("c:82").is_none());
    assert_eq!(env.status(R, "ra").state, ResourceState::Nacked);
}

/// A2.11 (gRFC A44): `num_retries` 10 becomes 4 retries (5 attempts),
/// backoff below 1 ms is 1 ms (max 10× base), default backoff 25 ms /
/// 250 ms, and a policy none of whose conditions converts is no policy
/// (the condition recorded as ignored). Unit test:
/// `route_tests.rs` `retry_policy_follows_grfc_a44`.
#[tokio::test(start_paused = true)]
async fn a2_11_retry_policy_follows_grfc_a44_end_to_end() {
    use mesh_xds::pb::envoy::config::route::v3 as rds;
    use mesh_xds::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "l-1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    let mut rt = xds_script::route_proto("rt", &["c1", "c2", "c3"]);
    let policies = [
        rds::RetryPolicy {
            retry_on: "unavailable,cancelled".into(),
            num_retries: Some(UInt32Value { value: 10 }),
            retry_back_off: Some(rds::retry_policy::RetryBackOff {
                base_interval: Some(PbDuration {
                    seconds: 0,
                    nanos: 500_000,
                }),
                max_interval: None,
            }),
            ..Default::default()
        },
        rds::RetryPolicy {
            retry_on: "envoy-ratelimited".into(),
            ..Default::default()
        },
        rds::RetryPolicy {
            retry_on: "deadline-exceeded".into(),
            ..Default::default()
        },
    ];
    for (route, p) in rt.virtual_hosts[0].routes.iter_mut().zip(policies) {
        if let Some(rds::route::Action::Route(a)) = &mut route.action {
            a.retry_policy = Some(p);
        }
    }
    s.send(response(R, "1", "r-1", vec![xds_script::any(R, &rt)]))
        .await;
    assert!(expect(&mut s, R).await.error_detail.is_none());
    expect(&mut s, C).await;
    s.send(response(
        C,
        "1",
        "c-1",
        ["c1", "c2", "c3"].map(|c| cluster(c, c)).to_vec(),
    ))
    .await;
    expect(&mut s, C).await;
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e-1",
        ["c1", "c2", "c3"]
            .map(|c| endpoints(c, &["10.0.0.1:80"]))
            .to_vec(),
    ))
    .await;
    expect(&mut s, E).await;
    let snap = env.store.snapshot();
    let table = snap.route_table("rt").expect("published");
    let p0 = forward(table, 0).retry.as_ref().expect("a retry policy");
    assert_eq!(p0.num_retries, 4, "max attempts capped at 5");
    assert_eq!(
        (p0.backoff.base, p0.backoff.max),
        (Duration::from_millis(1), Duration::from_millis(10))
    );
    assert!(forward(table, 1).retry.is_none(), "nothing converts");
    let p2 = forward(table, 2).retry.as_ref().expect("a retry policy");
    assert_eq!(p2.num_retries, 1);
    assert_eq!(
        (p2.backoff.base, p2.backoff.max),
        (Duration::from_millis(25), Duration::from_millis(250))
    );
    assert!(
        env.status(R, "rt")
            .ignored_fields
            .iter()
            .any(|f| f.contains("retry_on") && f.contains("envoy-ratelimited")),
        "{:?}",
        env.status(R, "rt").ignored_fields
    );
}

/// A3.8 (gRFC A88): a stream that fails before any response is a
/// transient error, a NACK or a deletion a data error. With
/// `fail_on_data_errors` only data errors drop cached values.
#[tokio::test(start_paused = true)]
async fn a3_8_transient_errors_keep_values_data_errors_drop_them() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.fail_on_data_errors = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.close();
    // Transient: the next stream fails before any response, the next
    // connection is refused.
    let mut s2 = env.server().sotw_stream().await;
    expect(&mut s2, L).await;
    env.server().set_mode(Mode::Refuse);
    s2.fail(tonic::Status::unavailable("transient")).await;
    sleep(Duration::from_secs(10)).await;
    assert!(env.client.metrics().server_failure >= 2);
    for (t, n) in [(L, "svc:80"), (R, "rt"), (C, "c1"), (E, "c1-eds")] {
        let st = env.status(t, n);
        assert_eq!((st.state, st.cached), (ResourceState::Acked, true), "{n}");
    }
    assert!(env.store.snapshot().listener("svc:80").is_some());
    // Data errors: a NACK of the cluster and the deletion of the listener.
    env.server().set_mode(Mode::Accept);
    let mut s3 = env.server().sotw_stream().await;
    for t in [L, R, C, E] {
        expect(&mut s3, t).await;
    }
    s3.send(response(C, "2", "c-2", vec![invalid_cluster("c1")]))
        .await;
    expect(&mut s3, C).await;
    let st = env.status(C, "c1");
    assert_eq!((st.state, st.cached), (ResourceState::Nacked, false));
    assert!(
        expect(&mut s3, E).await.resource_names.is_empty(),
        "its EDS is no longer needed"
    );
    s3.send(response(L, "2", "l-2", vec![])).await;
    expect(&mut s3, L).await;
    let st = env.status(L, "svc:80");
    assert_eq!((st.state, st.cached), (ResourceState::DoesNotExist, false));
    assert!(env.store.snapshot().listener("svc:80").is_none());
}

/// A3.9 (gRFC A88): an ambient error (a NACK with a cached value, by
/// default) keeps the old value in use and records the error; the next
/// valid update replaces the value and clears the error. A resource error
/// (`fail_on_data_errors`) stops the use of the old value.
#[tokio::test(start_paused = true)]
async fn a3_9_ambient_errors_keep_the_value_resource_errors_drop_it() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(
        L,
        "2",
        "l-2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, L).await;
    let st = env.status(L, "svc:80");
    assert_eq!((st.state, st.cached), (ResourceState::Nacked, true));
    assert!(st.error.is_some());
    // The next valid update (a new route name) is used and clears it.
    s.send(response(L, "3", "l-3", vec![listener("svc:80", "rt2")]))
        .await;
    expect(&mut s, L).await;
    assert_eq!(names(&expect(&mut s, R).await), ["rt2"]);
    let st = env.status(L, "svc:80");
    assert_eq!((st.state, st.error), (ResourceState::Acked, None));
    assert_eq!(st.version.as_deref(), Some("3"));

    // Resource errors: the value is dropped at once.
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.fail_on_data_errors = true;
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(
        L,
        "2",
        "l-2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, L).await;
    assert!(!env.status(L, "svc:80").cached);
    assert!(env.store.snapshot().listener("svc:80").is_none());
    for t in [R, C, E] {
        assert!(expect(&mut s, t).await.resource_names.is_empty());
    }
    s.send(response(L, "3", "l-3", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Acked);
    assert_eq!(names(&expect(&mut s, R).await), ["rt"]);
}

/// A3.12 (gRFC A88): a watcher added after an ambient error gets the cached
/// resource, then the error. Watchers here read the store (the cached value
/// is already published, so a new watch is served from it without a
/// request) and the status (which carries the ambient error) — the value
/// is there before the error can be read.
#[tokio::test(start_paused = true)]
async fn a3_12_a_new_watcher_after_an_ambient_error_gets_the_value_and_the_error() {
    let env = start();
    let w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "1").await;
    s.send(response(
        L,
        "2",
        "l-2",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, L).await;
    let w2 = env.client.watch_listener("svc:80");
    drop(w);
    s.expect_silence(Duration::from_secs(5)).await;
    assert!(env.store.snapshot().listener("svc:80").is_some());
    let st = env.status(L, "svc:80");
    assert_eq!((st.state, st.cached), (ResourceState::Nacked, true));
    assert_eq!(st.version.as_deref(), Some("1"));
    assert!(st.error.unwrap().contains("http_filters"));
    assert_eq!(w2.name(), "svc:80");
}

/// A3.14 (gRFC A54, A88): calls that fail because of xDS state fail
/// UNAVAILABLE / 503 with the resource, its state and the node in the
/// message — never NOT_FOUND or INVALID_ARGUMENT.
#[tokio::test(start_paused = true)]
async fn a3_14_xds_errors_reach_calls_as_unavailable_naming_resource_and_node() {
    use tower::ServiceExt;
    let env = start();
    let mesh = mesh_tower::Mesh::builder(env.store.clone())
        .with_xds(env.client.clone())
        .build();
    let svc = mesh.client_for("xds:///svc:80").unwrap();
    let call = |c: mesh_tower::MeshClient| async move {
        let req = http::Request::get("/hello")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        c.oneshot(req).await.unwrap_err()
    };
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    // A route to a cluster the client rejects (no value cached).
    serve_to_cds(&mut s, "svc:80", "rt", &["bad"]).await;
    s.send(response(C, "1", "c-1", vec![invalid_cluster("bad")]))
        .await;
    expect(&mut s, C).await;
    let e = call(svc.clone()).await;
    assert!(e.is_xds_unavailable(), "{e}");
    assert_eq!(e.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
    let msg = e.to_string();
    assert!(
        msg.contains("\"bad\"") && msg.contains("NACKED") && msg.contains("node \"node-1\""),
        "{msg}"
    );
    // A listener that does not exist: UNAVAILABLE too, not NOT_FOUND.
    let other = mesh.client_for("xds:///gone:80").unwrap();
    sleep(Duration::from_secs(16)).await;
    let e = call(other).await;
    assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
    assert!(e.to_string().contains("DOES_NOT_EXIST"), "{e}");
}

/// A4.3: the reconnection backoff is gRPC's (grpc-go
/// `backoff.DefaultConfig`: 1 s, ×1.6, ±20 % jitter, at most 120 s), not
/// Envoy's 500 ms – 30 s; the delays grow until the cap and stay there.
#[tokio::test(start_paused = true)]
async fn a4_3_backoff_is_grpcs_1s_x1_6_jitter_0_2_capped_at_120s() {
    let d = mesh_xds::config::BackoffConfig::default();
    assert_eq!(
        (d.base, d.multiplier, d.jitter, d.max),
        (Duration::from_secs(1), 1.6, 0.2, Duration::from_secs(120))
    );
    let expected = |i: i32| (1000.0 * 1.6f64.powi(i)).min(120_000.0);
    // Without jitter: exactly the schedule.
    let env = start_with(1, Protocol::StateOfTheWorld, |c| c.backoff.jitter = 0.0);
    env.server().set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    sleep(Duration::from_secs(800)).await;
    let times = env.server().connect_times();
    assert!(times.len() >= 14, "{} attempts", times.len());
    for (i, w) in times.windows(2).enumerate() {
        let gap = (w[1] - w[0]).as_secs_f64() * 1000.0;
        assert!(
            (gap - expected(i as i32)).abs() < 2.0,
            "gap {i}: {gap} ms, expected {} ms",
            expected(i as i32)
        );
    }
    // With the default jitter: within ±20 % of the schedule.
    let env = start();
    env.server().set_mode(Mode::Refuse);
    let _w = env.client.watch_listener("svc:80");
    sleep(Duration::from_secs(800)).await;
    let times = env.server().connect_times();
    assert!(times.len() >= 10);
    for (i, w) in times.windows(2).enumerate() {
        let gap = (w[1] - w[0]).as_secs_f64() * 1000.0;
        let e = expected(i as i32);
        assert!(
            gap >= e * 0.8 - 2.0 && gap <= e * 1.2 + 2.0,
            "gap {i}: {gap} ms, expected {e} ms ± 20 %"
        );
    }
}

/// A4.7 (gRFC A57): a server that accepts the stream but never answers
/// cannot be told apart from one whose resources do not exist in SotW: the
/// per-resource timers conclude DOES_NOT_EXIST while the stream stays up
/// (no reconnect, no server failure).
#[tokio::test(start_paused = true)]
async fn a4_7_a_silent_server_is_detected_only_by_the_resource_timers() {
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.expect_silence(Duration::from_secs(14)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::Requested);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(env.status(L, "svc:80").state, ResourceState::DoesNotExist);
    let m = env.client.metrics();
    assert!(m.connected);
    assert_eq!(m.server_failure, 0);
    assert_eq!(env.server().connects(), 1, "the stream stays");
    assert!(
        env.server()
            .try_sotw_stream(Duration::from_secs(60))
            .await
            .is_none()
    );
}

/// A4.8: one ADS stream per process, deliberately: every handle of the
/// client (clones, client and server listener watches) shares one
/// connection and one stream.
#[tokio::test(start_paused = true)]
async fn a4_8_one_stream_per_process_shared_by_every_handle() {
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.server_listener_resource_name_template = Some("inbound/%s".into());
    });
    let other = env.client.clone();
    let _a = env.client.watch_listener("a:80");
    let _b = other.watch_listener("b:81");
    let _srv = other.watch_server_listener("10.0.0.1:8080".parse().unwrap());
    let mut s = env.server().sotw_stream().await;
    let mut listeners = names(&expect(&mut s, L).await)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    while listeners.len() < 3 {
        let more = expect(&mut s, L).await;
        listeners = more.resource_names.clone();
    }
    assert_eq!(listeners, ["a:80", "b:81", "inbound/10.0.0.1:8080"]);
    let _c = other.watch_listener("c:82");
    assert_eq!(names(&expect(&mut s, L).await).len(), 4);
    assert_eq!(env.server().connects(), 1);
    assert!(
        env.server()
            .try_sotw_stream(Duration::from_secs(30))
            .await
            .is_none()
    );
}

/// The next reload outcome of a file watch.
async fn next_reload(
    events: &mut tokio::sync::watch::Receiver<mesh_core::file::ReloadEvent>,
) -> mesh_core::file::ReloadEvent {
    tokio::time::timeout(Duration::from_secs(20), events.changed())
        .await
        .expect("a reload within 20 s")
        .unwrap();
    events.borrow_and_update().clone()
}

/// A5.4 (xds_protocol.rst "Filesystem subscriptions"): the file source has
/// no ACK/NACK; an invalid edit is rejected and the last valid config stays
/// in use; an atomic rename and a Kubernetes-style `..data` symlink swap
/// are both picked up. (Real files and notify: real time, short debounce.
/// The under-load variant is `hot_reload.rs`
/// `rewriting_the_file_20_times_under_load_fails_no_request`.)
#[tokio::test]
async fn a5_4_file_source_keeps_the_last_valid_config_and_follows_renames_and_symlinks() {
    use mesh_core::file::FileSource;
    let yaml = |w1: u32, w2: u32| {
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
    };
    // The weight of subset v1 in the published route table.
    let v1_weight = |store: &ConfigStore| -> u32 {
        let snap = store.snapshot();
        let t = snap.route_tables().next().expect("a route table");
        let vh = t.virtual_hosts().first().unwrap();
        match &vh.routes[0].action {
            mesh_core::model::RouteAction::Forward(f) => f
                .clusters
                .targets()
                .iter()
                .find(|t| t.cluster.as_str().contains("|v1|"))
                .map(|t| t.weight)
                .unwrap(),
            other => panic!("{other:?}"),
        }
    };
    // Kubernetes' ConfigMap layout: mesh.yaml -> ..data/mesh.yaml,
    // ..data -> ..2026_v1.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let swap_data = |version: &str, text: &str| {
        let d = root.join(version);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("mesh.yaml"), text).unwrap();
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    swap_data("..2026_v1", &yaml(90, 10));
    std::os::unix::fs::symlink("..data/mesh.yaml", root.join("mesh.yaml")).unwrap();
    let store = ConfigStore::new();
    let watcher = FileSource::new(root.join("mesh.yaml"))
        .with_debounce(Duration::from_millis(20))
        .watch(store.clone())
        .unwrap();
    let mut events = watcher.subscribe();
    assert_eq!(v1_weight(&store), 90);
    let good = store.version();

    // An invalid edit (weights summing to 60) through a symlink swap:
    // rejected, the last valid config stays.
    events.borrow_and_update();
    swap_data("..2026_v2", &yaml(50, 10));
    let e = next_reload(&mut events).await;
    let err = e.result.expect_err("rejected");
    assert!(err.contains("weight"), "{err}");
    assert_eq!(store.version(), good, "the last valid config stays");
    assert_eq!(v1_weight(&store), 90);

    // A valid edit through a symlink swap.
    swap_data("..2026_v3", &yaml(20, 80));
    let e = next_reload(&mut events).await;
    assert_eq!(e.result, Ok(store.version()));
    assert_eq!(v1_weight(&store), 20);

    // An atomic rename of a new file over the config path.
    let tmp = root.join("mesh.yaml.tmp");
    std::fs::write(&tmp, yaml(70, 30)).unwrap();
    std::fs::rename(&tmp, root.join("mesh.yaml")).unwrap();
    let e = next_reload(&mut events).await;
    assert_eq!(e.result, Ok(store.version()));
    assert_eq!(v1_weight(&store), 70);
}

/// A7.1: a SotW RDS/EDS response is per resource (a route configuration it
/// leaves out is unchanged), while a delta response carries only changes: a
/// listener it does not mention is neither deleted nor changed.
#[tokio::test(start_paused = true)]
async fn a7_1_per_resource_responses_and_delta_changes_delete_nothing_else() {
    // SotW RDS: only ra updated; rb stays as it was.
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "l-1",
        vec![listener("a:80", "ra"), listener("b:81", "rb")],
    ))
    .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    s.send(response(
        R,
        "1",
        "r-1",
        vec![route("ra", &["c"]), route("rb", &["c"])],
    ))
    .await;
    expect(&mut s, R).await;
    expect(&mut s, C).await;
    s.send(response(R, "2", "r-2", vec![route("ra", &["c", "d"])]))
        .await;
    expect(&mut s, R).await;
    let rb = env.status(R, "rb");
    assert_eq!(
        (rb.state, rb.version.as_deref()),
        (ResourceState::Acked, Some("1"))
    );
    assert_eq!(env.status(R, "ra").version.as_deref(), Some("2"));

    // Delta LDS: an update of a:80 alone leaves b:81 alone.
    let env = start_with(1, Protocol::Delta, |_| {});
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().delta_stream().await;
    s.recv().await;
    s.send(delta_response(
        L,
        "d1",
        vec![
            ("a:80", "a1", listener("a:80", "ra")),
            ("b:81", "b1", listener("b:81", "rb")),
        ],
        &[],
    ))
    .await;
    assert_eq!(s.recv().await.response_nonce, "d1");
    s.send(delta_response(
        L,
        "d2",
        vec![("a:80", "a2", listener("a:80", "ra2"))],
        &[],
    ))
    .await;
    loop {
        let r = s.recv().await;
        if r.response_nonce == "d2" {
            assert!(r.error_detail.is_none());
            break;
        }
    }
    let b = env.status(L, "b:81");
    assert_eq!(
        (b.state, b.version.as_deref()),
        (ResourceState::Acked, Some("b1"))
    );
    assert_eq!(env.status(L, "a:80").version.as_deref(), Some("a2"));
}

/// A7.3: the client never subscribes by wildcard, so it never relies on the
/// legacy empty-list rule either: every request of every type, SotW and
/// delta, names its resources explicitly, none is `"*"`, and an empty
/// SotW list is only ever an unsubscription after names were sent.
#[tokio::test(start_paused = true)]
async fn a7_3_no_wildcard_every_request_names_its_resources() {
    let env = start();
    let w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    let first = expect(&mut s, L).await;
    let mut seen: Vec<DiscoveryRequest> = vec![first];
    s.send(response(L, "1", "l-1", vec![listener("svc:80", "rt")]))
        .await;
    seen.push(expect(&mut s, L).await);
    seen.push(expect(&mut s, R).await);
    s.send(response(R, "1", "r-1", vec![route("rt", &["c1"])]))
        .await;
    seen.push(expect(&mut s, R).await);
    seen.push(expect(&mut s, C).await);
    s.send(response(C, "1", "c-1", vec![cluster("c1", "e1")]))
        .await;
    seen.push(expect(&mut s, C).await);
    seen.push(expect(&mut s, E).await);
    s.close();
    let mut s2 = env.server().sotw_stream().await;
    for t in [L, R, C, E] {
        seen.push(expect(&mut s2, t).await);
    }
    drop(w);
    while let Some(r) = s2.try_recv(Duration::from_secs(2)).await {
        seen.push(r);
    }
    let mut named = std::collections::BTreeSet::new();
    for r in &seen {
        assert!(
            !r.resource_names.iter().any(|n| n == "*"),
            "wildcard in {r:?}"
        );
        if r.resource_names.is_empty() {
            assert!(named.contains(&r.type_url), "legacy wildcard: {r:?}");
        } else {
            named.insert(r.type_url.clone());
        }
    }
    assert_eq!(named.len(), 4);

    let env = start_with(1, Protocol::Delta, |_| {});
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().delta_stream().await;
    let first = s.recv().await;
    assert_eq!(first.resource_names_subscribe, ["svc:80"]);
    s.send(delta_response(
        L,
        "d1",
        vec![("svc:80", "1", listener("svc:80", "rt"))],
        &[],
    ))
    .await;
    s.recv().await;
    let rds = s.recv().await;
    assert_eq!(rds.resource_names_subscribe, ["rt"]);
    for r in [&first, &rds] {
        assert!(!r.resource_names_subscribe.iter().any(|n| n == "*"));
    }
}

/// A7.4: a SotW unsubscription resends the full remaining set of names
/// (not a difference); delta sends `resource_names_unsubscribe` with only
/// the dropped name.
#[tokio::test(start_paused = true)]
async fn a7_4_unsubscribe_resends_the_remaining_set_or_sends_a_delta_unsubscribe() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let b = env.client.watch_listener("b:81");
    let _c = env.client.watch_listener("c:82");
    let mut s = env.server().sotw_stream().await;
    assert_eq!(names(&expect(&mut s, L).await), ["a:80", "b:81", "c:82"]);
    drop(b);
    assert_eq!(names(&expect(&mut s, L).await), ["a:80", "c:82"]);

    let env = start_with(1, Protocol::Delta, |_| {});
    let _a = env.client.watch_listener("a:80");
    let b = env.client.watch_listener("b:81");
    let _c = env.client.watch_listener("c:82");
    let mut s = env.server().delta_stream().await;
    assert_eq!(
        s.recv().await.resource_names_subscribe,
        ["a:80", "b:81", "c:82"]
    );
    drop(b);
    let unsub = s.recv().await;
    assert_eq!(unsub.resource_names_unsubscribe, ["b:81"]);
    assert!(unsub.resource_names_subscribe.is_empty());
}

/// A7.7: delta reports a missing resource through `removed_resources`
/// (DOES_NOT_EXIST at once, no timer needed), and the client still runs
/// the does-not-exist timer for a resource the server never mentions.
#[tokio::test(start_paused = true)]
async fn a7_7_delta_removed_resources_and_the_timer_still_runs() {
    let env = start_with(1, Protocol::Delta, |_| {});
    let _a = env.client.watch_listener("a:80");
    let _b = env.client.watch_listener("b:81");
    let mut s = env.server().delta_stream().await;
    s.recv().await;
    s.send(delta_response(L, "d1", vec![], &["b:81"])).await;
    assert_eq!(s.recv().await.response_nonce, "d1");
    let b = env.status(L, "b:81");
    assert_eq!(b.state, ResourceState::DoesNotExist);
    assert!(b.error.unwrap().contains("removed_resources"));
    assert_eq!(env.status(L, "a:80").state, ResourceState::Requested);
    sleep(Duration::from_secs(16)).await;
    assert_eq!(env.status(L, "a:80").state, ResourceState::DoesNotExist);
}

/// A7.8: a SotW subscription change carries the nonce of the latest
/// response of its type (never an older one), so a server that has moved
/// to a newer version does not ignore it as stale.
#[tokio::test(start_paused = true)]
async fn a7_8_subscription_changes_carry_the_latest_nonce() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![listener("a:80", "ra")]))
        .await;
    assert_eq!(expect(&mut s, L).await.response_nonce, "n1");
    expect(&mut s, R).await;
    s.send(response(L, "2", "n2", vec![listener("a:80", "ra")]))
        .await;
    assert_eq!(expect(&mut s, L).await.response_nonce, "n2");
    let _b = env.client.watch_listener("b:81");
    let change = expect(&mut s, L).await;
    assert_eq!(names(&change), ["a:80", "b:81"]);
    assert_eq!(
        (change.response_nonce.as_str(), change.version_info.as_str()),
        ("n2", "2")
    );
    // The server answers the change with a newer version: ACKed.
    s.send(response(
        L,
        "3",
        "n3",
        vec![listener("a:80", "ra"), listener("b:81", "ra")],
    ))
    .await;
    let ack = expect(&mut s, L).await;
    assert_eq!(
        (ack.response_nonce.as_str(), ack.version_info.as_str()),
        ("n3", "3")
    );
    assert_eq!(env.status(L, "b:81").state, ResourceState::Acked);
}

// === behaviour added for A1.12, A1.14, A5.3, A5.5 ===

/// A1.12 (grpc-go `TestADS_ACK_NACK_ResourceIsNotRequestedAnymore`): when
/// nothing is watched any more the stream (and its channel) is closed and
/// nothing is cached; no stream opens while nothing is watched, and a later
/// watch opens a new one with empty versions.
#[tokio::test(start_paused = true)]
async fn a1_12_the_stream_closes_when_nothing_is_watched_and_reopens_with_empty_versions() {
    let env = start();
    let w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    serve_cascade(&mut s, "svc:80", "rt", "c1", "7").await;
    drop(w);
    s.expect_closed(Duration::from_secs(5)).await;
    assert!(!env.client.metrics().connected);
    assert!(env.client.status().is_empty(), "nothing cached");
    assert!(env.store.snapshot().listener("svc:80").is_none());
    assert!(
        env.server()
            .try_sotw_stream(Duration::from_secs(60))
            .await
            .is_none(),
        "no stream while nothing is watched"
    );
    assert_eq!(env.server().connects(), 1);
    let _w = env.client.watch_listener("svc:80");
    let mut s2 = env.server().sotw_stream().await;
    let first = expect(&mut s2, L).await;
    assert_eq!(names(&first), ["svc:80"]);
    assert_eq!(first.version_info, "", "a new stream with an empty version");
    assert_eq!(first.response_nonce, "");
    assert_eq!(first.node.unwrap().id, "node-1");
    assert_eq!(env.server().connects(), 2, "a new channel");

    // A client that watches nothing never connects.
    let idle = start();
    sleep(Duration::from_secs(60)).await;
    assert_eq!(idle.server().connects(), 0);
}

/// A1.14 (Envoy `rate_limit_settings`, `GrpcMuxImplTest.TooManyRequests…`):
/// requests to the server are bounded by a token bucket, on by default
/// (100 tokens, 100 per second; Envoy's are 100 and 10). Requests that find
/// it empty wait and collapse to one per type (the latest ACK); after a
/// stream reset, what waited is dropped and the new stream opens with one
/// fresh request per type.
#[tokio::test(start_paused = true)]
async fn a1_14_request_rate_is_bounded_and_waiting_requests_collapse() {
    use mesh_xds::config::RateLimitSettings;
    let d = RateLimitSettings::default();
    assert_eq!((d.max_tokens, d.fill_rate), (100, 100.0));
    let e = RateLimitSettings::envoy();
    assert_eq!((e.max_tokens, e.fill_rate), (100, 10.0));
    assert_eq!(
        xds_script::config(1, Protocol::StateOfTheWorld).request_rate_limit,
        Some(d),
        "on by default"
    );
    let env = start_with(1, Protocol::StateOfTheWorld, |c| {
        c.request_rate_limit = Some(RateLimitSettings {
            max_tokens: 3,
            fill_rate: 1.0,
        });
    });
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    let t0 = Instant::now();
    for i in 1..=5 {
        s.send(response(
            L,
            &i.to_string(),
            &format!("n{i}"),
            vec![listener("svc:80", "rt")],
        ))
        .await;
    }
    assert_eq!(expect(&mut s, L).await.response_nonce, "n1");
    assert_eq!(names(&expect(&mut s, R).await), ["rt"]);
    // Out of tokens: the ACKs of n2..n5 wait and go as one, the latest.
    let next = expect(&mut s, L).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        (next.response_nonce.as_str(), next.version_info.as_str()),
        ("n5", "5")
    );
    s.expect_silence(Duration::from_secs(5)).await;

    // The bucket is full again (3): three ACKs go, two wait; the stream
    // resets before a token returns.
    for i in 6..=10 {
        s.send(response(
            L,
            &i.to_string(),
            &format!("n{i}"),
            vec![listener("svc:80", "rt")],
        ))
        .await;
    }
    s.close();
    let mut old = Vec::new();
    while let Some(r) = s.try_recv(Duration::from_secs(5)).await {
        old.push(r.response_nonce);
    }
    assert!(
        old.iter().all(|n| ["n6", "n7", "n8"].contains(&n.as_str())),
        "the ACKs that had tokens, never the waiting one: {old:?}"
    );
    let mut s2 = env.server().sotw_stream().await;
    let mut fresh = Vec::new();
    while let Some(r) = s2.try_recv(Duration::from_secs(5)).await {
        fresh.push((r.type_url, r.response_nonce, r.version_info));
    }
    assert_eq!(
        fresh,
        [
            (L.as_str().to_owned(), String::new(), "10".to_owned()),
            (R.as_str().to_owned(), String::new(), String::new()),
        ],
        "one fresh request per type, no stale ACK"
    );
}

/// A5.3 (xds_protocol.rst "TTL", Envoy `GrpcMuxImplTest.ResourceTTL`): a
/// resource wrapped in `Resource` with a `ttl` expires unless refreshed; a
/// heartbeat (a `Resource` without a body, same version) refreshes the TTL
/// without being an update. Expiry removes the value as Envoy does (A5.2:
/// "unless a TTL is set"): status DOES_NOT_EXIST naming the TTL, the
/// cluster's calls fail. The TTL runs while the control plane is away.
#[tokio::test(start_paused = true)]
async fn a5_3_resource_ttl_expires_unless_a_heartbeat_refreshes_it() {
    use xds_script::wrapped;
    let ttl = Some(Duration::from_secs(30));
    let env = start();
    let _w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(
        L,
        "1",
        "l-1",
        vec![listener_inline("svc:80", "c1")],
    ))
    .await;
    expect(&mut s, L).await;
    expect(&mut s, C).await;
    s.send(response(
        C,
        "1",
        "c-1",
        vec![wrapped("c1", Some(cluster("c1", "e1")), ttl)],
    ))
    .await;
    assert!(expect(&mut s, C).await.error_detail.is_none());
    expect(&mut s, E).await;
    s.send(response(
        E,
        "1",
        "e-1",
        vec![endpoints("e1", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, E).await;
    assert_eq!(
        env.store
            .snapshot()
            .endpoints("c1")
            .unwrap()
            .endpoints()
            .len(),
        1
    );
    let published = env.store.version();
    let updated = env.status(C, "c1").last_updated;

    // A heartbeat at 20 s: ACKed, not an update, the TTL restarts.
    sleep(Duration::from_secs(20)).await;
    s.send(response(C, "1", "c-2", vec![wrapped("c1", None, ttl)]))
        .await;
    let ack = expect(&mut s, C).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("1", "c-2")
    );
    assert!(ack.error_detail.is_none());
    assert_eq!(env.store.version(), published, "no republish");
    let st = env.status(C, "c1");
    assert_eq!((st.state, st.last_updated), (ResourceState::Acked, updated));
    sleep(Duration::from_secs(25)).await;
    assert_eq!(env.status(C, "c1").state, ResourceState::Acked, "refreshed");

    // The control plane goes away: 30 s after the heartbeat it expires.
    env.server().set_mode(Mode::Refuse);
    s.fail(tonic::Status::unavailable("gone")).await;
    sleep(Duration::from_secs(4)).await;
    assert_eq!(env.status(C, "c1").state, ResourceState::Acked);
    sleep(Duration::from_secs(2)).await;
    let st = env.status(C, "c1");
    assert_eq!((st.state, st.cached), (ResourceState::DoesNotExist, false));
    assert!(st.error.as_deref().unwrap().contains("TTL"), "{st:?}");
    let snap = env.store.snapshot();
    assert!(snap.endpoints("c1").unwrap().endpoints().is_empty());
    assert!(
        snap.listener("svc:80").is_some(),
        "only the cluster expired"
    );
}

/// A5.3 over delta: a `Resource` with a `ttl`, heartbeats of the cached
/// version refresh it, a heartbeat of another version is NACKed, and
/// without a refresh it expires on a live stream too.
#[tokio::test(start_paused = true)]
async fn a5_3_delta_ttl_heartbeats_and_expiry() {
    use mesh_xds::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use xds_script::ttl_resource;
    let ttl = Some(Duration::from_secs(10));
    let env = start_with(1, Protocol::Delta, |_| {});
    let _w = env.client.watch_listener("a:80");
    let mut s = env.server().delta_stream().await;
    s.recv().await;
    let delta = |nonce: &str, r| DeltaDiscoveryResponse {
        resources: vec![r],
        type_url: L.as_str().into(),
        nonce: nonce.into(),
        ..Default::default()
    };
    s.send(delta(
        "d1",
        ttl_resource("a:80", "v1", Some(listener("a:80", "ra")), ttl),
    ))
    .await;
    assert!(s.recv().await.error_detail.is_none());
    s.recv().await; // RDS subscription
    let updated = env.status(L, "a:80").last_updated;
    sleep(Duration::from_secs(8)).await;
    s.send(delta("d2", ttl_resource("a:80", "v1", None, ttl)))
        .await;
    let ack = s.recv().await;
    assert_eq!(ack.response_nonce, "d2");
    assert!(ack.error_detail.is_none());
    assert_eq!(env.status(L, "a:80").last_updated, updated);
    s.send(delta("d3", ttl_resource("a:80", "v9", None, ttl)))
        .await;
    let nack = s.recv().await;
    assert_eq!(nack.response_nonce, "d3");
    assert!(
        nack.error_detail.unwrap().message.contains("heartbeat"),
        "a heartbeat of a version not held"
    );
    sleep(Duration::from_secs(9)).await;
    assert!(env.status(L, "a:80").cached, "refreshed at 8 s");
    sleep(Duration::from_secs(2)).await;
    let st = env.status(L, "a:80");
    assert_eq!((st.state, st.cached), (ResourceState::DoesNotExist, false));
    assert!(st.error.unwrap().contains("TTL"));
}

/// A5.5 (junction-client e329bf4): when the last watch of a resource goes,
/// its cache entry (and those only it needed) is dropped, and dropping it
/// subscribes nothing: no request names it again, and the server sending
/// it anyway is ignored.
#[tokio::test(start_paused = true)]
async fn a5_5_the_last_watch_gone_drops_the_entry_without_resubscribing() {
    let env = start();
    let _a = env.client.watch_listener("a:80");
    let b = env.client.watch_listener("b:81");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    let both = || vec![listener_inline("a:80", "ca"), listener_inline("b:81", "cb")];
    s.send(response(L, "1", "l-1", both())).await;
    expect(&mut s, L).await;
    assert_eq!(names(&expect(&mut s, C).await), ["ca", "cb"]);
    s.send(response(
        C,
        "1",
        "c-1",
        vec![cluster("ca", "ca"), cluster("cb", "cb")],
    ))
    .await;
    expect(&mut s, C).await;
    assert_eq!(names(&expect(&mut s, E).await), ["ca", "cb"]);
    s.send(response(
        E,
        "1",
        "e-1",
        vec![
            endpoints("ca", &["10.0.0.1:80"]),
            endpoints("cb", &["10.0.0.2:80"]),
        ],
    ))
    .await;
    expect(&mut s, E).await;
    assert!(env.store.snapshot().listener("b:81").is_some());
    drop(b);
    assert_eq!(names(&expect(&mut s, L).await), ["a:80"]);
    assert_eq!(names(&expect(&mut s, C).await), ["ca"]);
    assert_eq!(names(&expect(&mut s, E).await), ["ca"]);
    s.expect_silence(Duration::from_secs(30)).await;
    for (t, n) in [(L, "b:81"), (C, "cb"), (E, "cb")] {
        assert!(!env.has_status(t, n), "{n} evicted");
    }
    let snap = env.store.snapshot();
    assert!(snap.listener("b:81").is_none());
    assert!(snap.cluster("cb").is_none());
    assert!(snap.listener("a:80").is_some());
    s.send(response(L, "2", "l-2", both())).await;
    assert!(expect(&mut s, L).await.error_detail.is_none());
    assert!(!env.has_status(L, "b:81"), "not requested: ignored");
    s.expect_silence(Duration::from_secs(5)).await;
}
