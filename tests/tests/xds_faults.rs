//! Control-plane faults with real traffic (issue 5, "Control-plane
//! faults"): the end-to-end counterparts, on real sockets, of the
//! paused-time protocol tests `a4_2`, `a4_4`, `a4_10` and `a5_2` of
//! `xds_conformance.rs`.
//!
//! A [`FaultProxy`] sits between the process's [`XdsClient`] and a real
//! [`AdsServer`] (the harness's [`ControlPlane`]). While clients send
//! continuously through the mesh, the proxy kills the server (also in the
//! middle of a multi-resource update), blackholes it, answers garbage, or
//! resets the stream after every response. For every fault:
//!
//! - no request fails and every request goes by the last good config
//!   (A5.2: losing the control plane never clears the cache);
//! - the client's status keeps every resource ACKED and its metrics count
//!   the failures (`server_failure`), or do not when the stream ended after
//!   a response, which is not an error (A4.1);
//! - reconnects are bounded: the attempts the proxy saw during the fault
//!   are at most what the backoff (A4.2) or the minimum stream interval
//!   (A4.4) allows in the time the fault lasted. The test asserts counts
//!   against that bound, never a duration: a slow machine only makes the
//!   window longer and the bound looser;
//! - once the fault heals, a new push is applied and traffic follows it.
//!
//! The numbers (attempts, window, bound) are printed on `xds-fault` lines.
//!
//! [`XdsClient`]: mesh_xds::XdsClient
//! [`AdsServer`]: mesh_xds::server::AdsServer

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::model::RouteAction;
use mesh_core::{ConfigStore, Snapshot, Version};
use mesh_examples::backends::Reviews;
use mesh_examples::yaml::{Split, reviews};
use mesh_tests::fault_proxy::{Counters, Fault, FaultProxy};
use mesh_tests::xds_harness::{
    ControlPlane, Load, LoadReport, XdsMesh, client_config, eventually, start_backends,
};
use mesh_xds::client::MIN_STREAM_INTERVAL;
use mesh_xds::config::{BackoffConfig, ClientConfig, Protocol};
use mesh_xds::{ResourceState, TypeUrl, XdsClient};
use tokio::time::Instant;

/// The API listener of `reviews` over xDS, and its route table.
const LISTENER: &str = "reviews:9080";
const ROUTE_TABLE: &str = "9080";
const PATH: &str = "/reviews/1";
/// Concurrent clients.
const CLIENTS: usize = 4;
/// Requests that must complete in each phase (before, during, after).
const PER_PHASE: u64 = 100;

/// The control-plane config: both backends, all traffic to `to`.
fn all_to(backends: &[Reviews], to: &str) -> String {
    let instances: Vec<(&Reviews, &str)> = backends.iter().map(|b| (b, b.version())).collect();
    reviews(&instances, &Split::Weights(&[(to, 100)]))
}

/// The clusters the route table of `reviews` sends traffic to, if the
/// snapshot has it.
fn targets(snapshot: &Snapshot) -> Option<Vec<String>> {
    let table = snapshot.route_table(ROUTE_TABLE)?;
    let route = table.virtual_hosts().first()?.routes.first()?;
    let RouteAction::Forward(f) = &route.action else {
        return None;
    };
    Some(
        f.clusters
            .targets()
            .iter()
            .filter(|t| t.weight > 0)
            .map(|t| t.cluster.as_str().to_owned())
            .collect(),
    )
}

/// Whether the client's snapshot routes `reviews` only to `cluster`, and
/// has that cluster with endpoints.
fn routes_to(snapshot: &Snapshot, cluster: &str) -> bool {
    targets(snapshot).is_some_and(|t| t == [cluster])
        && snapshot.cluster(cluster).is_some()
        && snapshot
            .endpoints(cluster)
            .is_some_and(|e| !e.endpoints().is_empty())
}

/// A torn config (gRFC A74): a route to a cluster the snapshot lacks, or
/// one without endpoints.
fn tear(snapshot: &Snapshot) -> Option<String> {
    for table in snapshot.route_tables() {
        for vh in table.virtual_hosts() {
            for route in vh.routes.iter() {
                let RouteAction::Forward(f) = &route.action else {
                    continue;
                };
                for t in f.clusters.targets().iter().filter(|t| t.weight > 0) {
                    let c = t.cluster.as_str();
                    if snapshot.cluster(c).is_none() {
                        return Some(format!("route to missing cluster {c}"));
                    }
                    if snapshot
                        .endpoints(c)
                        .is_none_or(|e| e.endpoints().is_empty())
                    {
                        return Some(format!("route to cluster {c} without endpoints"));
                    }
                }
            }
        }
    }
    None
}

/// Checks every snapshot the client publishes for tears while it runs.
struct TearWatch {
    seen: Arc<Mutex<(u64, Vec<String>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl TearWatch {
    fn start(store: &ConfigStore) -> Self {
        let mut changes = store.subscribe();
        let seen: Arc<Mutex<(u64, Vec<String>)>> = Arc::default();
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            async move {
                loop {
                    let snapshot = Arc::clone(&changes.borrow_and_update());
                    {
                        let mut seen = seen.lock().unwrap();
                        seen.0 += 1;
                        if let Some(t) = tear(&snapshot) {
                            seen.1
                                .push(format!("version {:?}: {t}", snapshot.version()));
                        }
                    }
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
        });
        Self { seen, task }
    }

    /// Stops watching; asserts that no snapshot was torn.
    fn finish(self) -> u64 {
        self.task.abort();
        let (n, tears) = self.seen.lock().unwrap().clone();
        assert!(tears.is_empty(), "torn configs published: {tears:?}");
        n
    }
}

/// The client config: through the proxy, with a short connect timeout
/// and backoff so that each test takes seconds.
fn config(proxy: &FaultProxy, protocol: Protocol) -> ClientConfig {
    let mut c = client_config(&format!("http://{}", proxy.addr()), protocol);
    c.connect_timeout = Duration::from_millis(250);
    c.backoff = BackoffConfig {
        base: Duration::from_millis(40),
        multiplier: 1.6,
        jitter: 0.2,
        max: Duration::from_millis(400),
    };
    c
}

/// The most connection attempts a client backing off with `b` can make in
/// `window`: the first may come at once, each later one waits at least
/// the shortest jittered delay of its attempt (gRPC connection backoff,
/// A4.2/A4.3).
fn backoff_bound(b: &BackoffConfig, window: Duration) -> u64 {
    let mut attempts = 1u64;
    let mut at = 0.0;
    loop {
        let exp = b
            .multiplier
            .powi(i32::try_from(attempts - 1).unwrap_or(i32::MAX));
        let delay = (b.base.as_secs_f64() * exp).min(b.max.as_secs_f64()) * (1.0 - b.jitter);
        at += delay;
        if at > window.as_secs_f64() {
            return attempts;
        }
        attempts += 1;
    }
}

/// The most streams a client can open in `window` when every stream ends
/// after a response: one per [`MIN_STREAM_INTERVAL`] (A4.4).
fn interval_bound(window: Duration) -> u64 {
    (window.as_secs_f64() / MIN_STREAM_INTERVAL.as_secs_f64()).floor() as u64 + 1
}

/// Every resource the client holds is ACKED and cached.
fn assert_all_acked(xds: &XdsClient, during: &str) {
    let status = xds.status();
    assert!(status.len() >= 4, "{during}: {status:?}");
    for s in &status {
        assert_eq!(
            (s.state, s.cached),
            (ResourceState::Acked, true),
            "{during}: {} {}",
            s.type_url.as_str(),
            s.name
        );
    }
}

/// Asserts the traffic: no failure; every request started before `healed`
/// answered by `before`; every request started on client store version
/// `after_version` or later answered by `after`.
fn assert_traffic(
    report: &LoadReport,
    healed: Instant,
    before: &str,
    after_version: Version,
    after: &str,
) {
    assert_eq!(
        report.failures,
        0,
        "failed requests: {:?}",
        report
            .samples
            .iter()
            .filter(|s| s.result.is_err())
            .take(5)
            .collect::<Vec<_>>()
    );
    let mut during = 0;
    let mut late = 0;
    for s in &report.samples {
        let got = s.result.as_deref().unwrap();
        if s.started < healed {
            during += 1;
            assert_eq!(
                got, before,
                "a request before the push went by another config"
            );
        }
        if s.version >= after_version {
            late += 1;
            assert_eq!(
                got, after,
                "a request after the push went by the old config"
            );
        }
    }
    assert!(
        during > 0 && late > 0,
        "{during} requests before, {late} after"
    );
}

/// What the test expects of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Every attempt fails before a response: `server_failure` counts
    /// them and the backoff bounds them.
    Failures,
    /// Every stream ends after a response: not an error, bounded by the
    /// minimum stream interval.
    EndsAfterResponse,
}

/// The common scenario: traffic on `v1`, `fault` for a while, heal, push
/// all traffic to `v2`.
async fn survives(protocol: Protocol, fault: Fault, expect: Expect) {
    mesh_tests::init_tracing();
    let label = format!("{fault:?} {protocol:?}");
    let backends = start_backends(&["v1", "v2"]).await;
    let cp = ControlPlane::start().await;
    cp.publish_yaml(&all_to(&backends, "v1"));
    let proxy = FaultProxy::start(cp.addr()).await.unwrap();
    let mut cfg = config(&proxy, protocol);
    if expect == Expect::EndsAfterResponse {
        // No fault here makes a connection hang: a longer connect timeout
        // keeps a loaded machine from turning slow connects into failures.
        cfg.connect_timeout = Duration::from_secs(5);
    }
    let backoff = cfg.backoff;
    let client = XdsMesh::start(cfg, LISTENER);
    let v1_cluster = targets(&cp.store().snapshot()).unwrap().remove(0);
    client
        .wait_config("all traffic to v1", |s| routes_to(s, &v1_cluster))
        .await;
    let tears = TearWatch::start(client.store());
    let load = Load::start(client.mesh(), client.client(), PATH, CLIENTS, 100_000);
    load.wait_more(PER_PHASE).await;
    let xds = client.xds();
    assert_all_acked(xds, "before the fault");
    let published = client.store().version();

    // The fault: wait for enough attempts to see the client retry.
    let before = proxy.counters();
    let failures_before = xds.metrics().server_failure;
    let started = Instant::now();
    proxy.set(fault);
    let min_attempts = match expect {
        Expect::Failures => 4,
        Expect::EndsAfterResponse => 3,
    };
    if fault == Fault::NeverAccept {
        // The proxy cannot see these attempts: the client's own count of
        // connect timeouts is the evidence.
        eventually(&format!("{min_attempts} connect timeouts"), || {
            xds.metrics().server_failure >= failures_before + min_attempts
        })
        .await;
    } else {
        proxy
            .wait_for(&format!("{min_attempts} attempts under {label}"), |c| {
                c.accepted >= before.accepted + min_attempts
            })
            .await;
    }
    // Traffic flows meanwhile, on the last good config.
    load.wait_more(PER_PHASE).await;
    assert_all_acked(xds, &format!("during {label}"));
    assert_eq!(
        client.store().version(),
        published,
        "{label}: nothing republished"
    );
    let at_heal: Counters = proxy.counters();
    let failures = xds.metrics().server_failure - failures_before;
    let window = started.elapsed();
    let attempts = if fault == Fault::NeverAccept {
        failures
    } else {
        at_heal.accepted - before.accepted
    };
    let bound = match expect {
        Expect::Failures => backoff_bound(&backoff, window),
        Expect::EndsAfterResponse => interval_bound(window),
    } + 1;
    println!(
        "xds-fault {label}: {attempts} attempts, {failures} counted as server failures, in {:.0} ms (bound {bound}); {} responses, {} ACKs, {} connections cut, {} stream resets",
        window.as_secs_f64() * 1000.0,
        at_heal.responses - before.responses,
        at_heal.acks - before.acks,
        at_heal.cut - before.cut,
        at_heal.stream_resets - before.stream_resets,
    );
    assert!(
        attempts <= bound,
        "{label}: {attempts} attempts in {window:?}, the backoff allows {bound}"
    );
    match expect {
        Expect::Failures => {
            // Every attempt that ended failed before a response, and was
            // counted; the last one may still be pending.
            assert!(
                failures + 1 >= attempts && failures <= attempts,
                "{label}: {failures} failures for {attempts} attempts"
            );
        }
        Expect::EndsAfterResponse => {
            assert_eq!(
                failures, 0,
                "{label}: a stream that answered is not a failure (A4.1)"
            );
            // Every stream but the last got a response and ACKed it.
            assert!(
                at_heal.acks - before.acks >= attempts - 1,
                "{label}: {} ACKs for {attempts} streams",
                at_heal.acks - before.acks
            );
        }
    }

    // Heal, then push: the new config is applied and traffic follows.
    let healed = Instant::now();
    proxy.set(Fault::Pass);
    cp.publish_yaml(&all_to(&backends, "v2"));
    let v2_cluster = targets(&cp.store().snapshot()).unwrap().remove(0);
    let v2 = client
        .wait_config("all traffic to v2 after the fault", |s| {
            routes_to(s, &v2_cluster)
        })
        .await;
    load.wait_more(PER_PHASE).await;
    let report = load.stop().await;
    let snapshots = tears.finish();
    assert_traffic(&report, healed, "v1", v2, "v2");
    assert_all_acked(xds, "after the fault");
    println!(
        "xds-fault {label}: {} requests, 0 failed, {snapshots} client snapshots checked for tears",
        report.completed
    );
}

// === the server dies ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_sotw_traffic_stays_on_the_last_good_config_and_reconnects_back_off() {
    survives(Protocol::StateOfTheWorld, Fault::Kill, Expect::Failures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_delta_traffic_stays_on_the_last_good_config_and_reconnects_back_off() {
    survives(Protocol::Delta, Fault::Kill, Expect::Failures).await;
}

// === blackholed: the connect timeout fires (A4.10) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_sotw_connect_timeout_fires_and_traffic_continues() {
    survives(
        Protocol::StateOfTheWorld,
        Fault::Blackhole,
        Expect::Failures,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_delta_connect_timeout_fires_and_traffic_continues() {
    survives(Protocol::Delta, Fault::Blackhole, Expect::Failures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_that_never_accepts_connect_timeout_fires_and_traffic_continues() {
    survives(
        Protocol::StateOfTheWorld,
        Fault::NeverAccept,
        Expect::Failures,
    )
    .await;
}

// === garbage ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answering_non_http2_bytes_sotw_is_a_connection_error_and_traffic_continues() {
    survives(Protocol::StateOfTheWorld, Fault::Garbage, Expect::Failures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answering_non_http2_bytes_delta_is_a_connection_error_and_traffic_continues() {
    survives(Protocol::Delta, Fault::Garbage, Expect::Failures).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_response_that_is_not_a_discovery_response_sotw_is_a_stream_error() {
    survives(
        Protocol::StateOfTheWorld,
        Fault::GrpcGarbage,
        Expect::Failures,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_response_that_is_not_a_discovery_response_delta_is_a_stream_error() {
    survives(Protocol::Delta, Fault::GrpcGarbage, Expect::Failures).await;
}

// === reset after every response (A4.1, A4.4) ===
//
// SotW only: a reconnecting SotW client always gets a response (LDS and
// CDS are answered with the full set), while a delta server answers nothing
// to a client whose `initial_resource_versions` are current, so a delta
// stream under this fault simply stays up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_after_every_response_is_not_an_error_and_not_hammered() {
    survives(
        Protocol::StateOfTheWorld,
        Fault::ResetAfterResponse,
        Expect::EndsAfterResponse,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reset_after_every_response_is_not_an_error_and_not_hammered() {
    survives(
        Protocol::StateOfTheWorld,
        Fault::ResetStreamAfterResponse,
        Expect::EndsAfterResponse,
    )
    .await;
}

// === killed mid-update (gRFC A74) ===

/// The server dies after the client got the new route table (to `v2`) and
/// asked for the cluster it names, before that cluster's CDS response: the
/// client keeps the complete old config (no route to a cluster it lacks),
/// and completes the update once the server is back.
async fn killed_mid_update(protocol: Protocol, torn: bool) {
    mesh_tests::init_tracing();
    let label = format!("mid-update {protocol:?} torn={torn}");
    let backends = start_backends(&["v1", "v2"]).await;
    let cp = ControlPlane::start().await;
    cp.publish_yaml(&all_to(&backends, "v1"));
    let proxy = FaultProxy::start(cp.addr()).await.unwrap();
    let client = XdsMesh::start(config(&proxy, protocol), LISTENER);
    let v1_cluster = targets(&cp.store().snapshot()).unwrap().remove(0);
    client
        .wait_config("all traffic to v1", |s| routes_to(s, &v1_cluster))
        .await;
    let tears = TearWatch::start(client.store());
    let load = Load::start(client.mesh(), client.client(), PATH, CLIENTS, 100_000);
    load.wait_more(PER_PHASE).await;
    let xds = client.xds();
    let published = client.store().version();
    let rds_version = |xds: &XdsClient| {
        xds.status()
            .into_iter()
            .find(|s| s.type_url == TypeUrl::RouteConfiguration && s.name == ROUTE_TABLE)
            .and_then(|s| s.version)
    };
    let old_rds = rds_version(xds).expect("the route table is ACKED");

    // The update: route to v2. The server sends the new route table; the
    // client then asks for v2's cluster, whose response never arrives.
    proxy.set(Fault::KillBefore {
        type_url: TypeUrl::Cluster,
        torn,
    });
    let pushed = Instant::now();
    cp.publish_yaml(&all_to(&backends, "v2"));
    let v2_cluster = targets(&cp.store().snapshot()).unwrap().remove(0);
    let fired = proxy
        .wait_for("the kill mid-update", |c| c.fired == 1)
        .await;
    assert_eq!(proxy.fault(), Fault::Kill);
    // The server stays dead for a few more attempts.
    proxy
        .wait_for("2 attempts on the dead server", |c| {
            c.accepted >= fired.accepted + 2
        })
        .await;
    load.wait_more(PER_PHASE).await;
    let status = xds.status();
    let find = |t: TypeUrl, name: &str| {
        status
            .iter()
            .find(|s| s.type_url == t && s.name == name)
            .unwrap_or_else(|| panic!("{label}: no status for {name}: {status:?}"))
    };
    let rds = find(TypeUrl::RouteConfiguration, ROUTE_TABLE);
    assert_eq!(
        rds.state,
        ResourceState::Acked,
        "{label}: the new route table arrived"
    );
    assert_ne!(
        rds.version.as_ref(),
        Some(&old_rds),
        "{label}: in its new version"
    );
    assert_eq!(
        find(TypeUrl::Cluster, &v2_cluster).state,
        ResourceState::Requested,
        "{label}: the cluster it names did not"
    );
    assert_eq!(
        client.store().version(),
        published,
        "{label}: the half-received update is not published"
    );
    assert!(routes_to(&client.store().snapshot(), &v1_cluster));
    assert!(xds.metrics().server_failure >= 1);

    // The server is back: the update completes and traffic follows.
    let healed = Instant::now();
    proxy.set(Fault::Pass);
    let v2 = client
        .wait_config("the update completed after reconnecting", |s| {
            routes_to(s, &v2_cluster)
        })
        .await;
    println!(
        "xds-fault {label}: update completed {:.1} ms after the server came back ({:.1} ms after the push)",
        healed.elapsed().as_secs_f64() * 1000.0,
        pushed.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        xds.status()
            .iter()
            .find(|s| s.type_url == TypeUrl::Cluster && s.name == v2_cluster)
            .map(|s| s.state),
        Some(ResourceState::Acked)
    );
    load.wait_more(PER_PHASE).await;
    let report = load.stop().await;
    let snapshots = tears.finish();
    assert_traffic(&report, healed, "v1", v2, "v2");
    println!(
        "xds-fault {label}: {} requests, 0 failed, {snapshots} client snapshots checked for tears",
        report.completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_update_sotw_publishes_no_torn_config_and_completes_after_reconnect() {
    killed_mid_update(Protocol::StateOfTheWorld, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_update_delta_publishes_no_torn_config_and_completes_after_reconnect() {
    killed_mid_update(Protocol::Delta, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_writing_the_cds_response_sotw_publishes_no_torn_config() {
    killed_mid_update(Protocol::StateOfTheWorld, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_writing_the_cds_response_delta_publishes_no_torn_config() {
    killed_mid_update(Protocol::Delta, true).await;
}
