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

#[tokio::test(start_paused = true)]
async fn a1_11_resubscribe_after_unsubscribe_all_has_no_stale_nonce() {
    let env = start();
    let w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    expect(&mut s, L).await;
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    drop(w);
    let unsub = expect(&mut s, L).await;
    assert!(unsub.resource_names.is_empty());
    assert!(expect(&mut s, R).await.resource_names.is_empty());
    // The server answers the unsubscription.
    s.send(response(L, "2", "n2", vec![])).await;
    let ack = expect(&mut s, L).await;
    assert_eq!(ack.response_nonce, "n2");
    let _w = env.client.watch_listener("svc:80");
    let resub = expect(&mut s, L).await;
    assert_eq!(names(&resub), ["svc:80"]);
    assert_eq!(
        resub.response_nonce, "n2",
        "the latest nonce, not a stale one"
    );
    s.send(response(L, "3", "n3", vec![listener("svc:80", "rt")]))
        .await;
    let ack = expect(&mut s, L).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("3", "n3")
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
    let w = env.client.watch_listener("svc:80");
    let mut s = env.server().sotw_stream().await;
    // No request with an empty list for a type never subscribed (it
    // would mean wildcard); the first LDS request names the listener.
    let r = expect(&mut s, L).await;
    assert_eq!(names(&r), ["svc:80"]);
    s.send(response(L, "1", "n1", vec![listener("svc:80", "rt")]))
        .await;
    expect(&mut s, L).await;
    expect(&mut s, R).await;
    drop(w);
    // After names were sent, an empty list unsubscribes everything.
    let l = expect(&mut s, L).await;
    assert!(l.resource_names.is_empty());
    let r = expect(&mut s, R).await;
    assert!(r.resource_names.is_empty());
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
