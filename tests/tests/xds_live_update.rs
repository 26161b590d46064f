//! Live xDS updates end to end under load (issue 5, "Live update end to
//! end"): clients send continuously through the mesh while the control
//! plane pushes, over a real ADS stream (SotW, then delta), a sequence of
//! weight changes, an endpoint addition, an endpoint removal, a cluster
//! swap and a route that names a cluster not sent yet (gRFC A74).
//!
//! For every step the test asserts, from what each request recorded (the
//! mesh's applied store version when it started and the backend that
//! answered):
//! - no request failed, over the whole run;
//! - causality: every request started once the mesh routed by the client
//!   store version holding a step's config went by that config or a later
//!   one (by the steps applied between its start and its end), never by an
//!   older one;
//! - splits converge to their weights (six standard deviations, so it
//!   cannot flake).
//!
//! Push-to-observed times are measured and printed (`live-update ...`
//! lines), never asserted: wall-clock limits flake on a loaded machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use mesh_core::Snapshot;
use mesh_core::Version;
use mesh_core::model::{EndpointAddress, RouteAction};
use mesh_examples::backends::Reviews;
use mesh_examples::yaml::{Split, destination_rule, service_entry, virtual_service};
use mesh_tests::within_sigmas;
use mesh_tests::xds_harness::{
    ControlPlane, Load, LoadReport, NODE_ID, Sample, XdsMesh, client_config, start_backends,
};
use mesh_xds::config::Protocol;
use mesh_xds::{ResourceState, TypeUrl};
use tokio::time::Instant;

/// The API listener the file source's `reviews` service gets over xDS.
const LISTENER: &str = "reviews:9080";
/// The route table it names (RDS).
const ROUTE_TABLE: &str = "9080";
/// Concurrent clients.
const CLIENTS: usize = 8;

/// The whole control-plane config: `reviews` with `endpoints` (backend,
/// subset label), a subset per label in `subsets`, and the split.
fn config(endpoints: &[(&Reviews, &str)], subsets: &[&str], split: &[(&str, u32)]) -> String {
    let eps: Vec<(SocketAddr, &str)> = endpoints.iter().map(|(r, v)| (r.addr(), *v)).collect();
    [
        service_entry("reviews", 9080, "HTTP", &eps),
        destination_rule("reviews", "ROUND_ROBIN", subsets),
        virtual_service("reviews", &Split::Weights(split), None),
    ]
    .join("---\n")
}

/// Where a snapshot sends `reviews` traffic: per cluster with a positive
/// weight, its share in per mille and its endpoint addresses.
type View = BTreeMap<String, (u32, BTreeSet<SocketAddr>)>;

fn view(snapshot: &Snapshot) -> Option<View> {
    let table = snapshot.route_table(ROUTE_TABLE)?;
    let route = table.virtual_hosts().first()?.routes.first()?;
    let RouteAction::Forward(f) = &route.action else {
        return None;
    };
    let targets = f.clusters.targets();
    let total: u32 = targets.iter().map(|t| t.weight).sum();
    let mut out = View::new();
    for t in targets.iter().filter(|t| t.weight > 0) {
        let endpoints = snapshot
            .endpoints(t.cluster.as_str())?
            .endpoints()
            .iter()
            .filter_map(|e| match e.address {
                EndpointAddress::Socket(a) => Some(a),
                EndpointAddress::Dns { .. } => None,
            })
            .collect();
        out.insert(
            t.cluster.as_str().to_owned(),
            (t.weight * 1000 / total, endpoints),
        );
    }
    Some(out)
}

/// One step of the sequence, once the client applied it.
struct Step {
    name: &'static str,
    /// The first client store version known to hold the step's config.
    version: Version,
    /// The backends the step routes to.
    allowed: BTreeSet<String>,
    /// When the control plane pushed it (for the printed latency).
    pushed: Instant,
}

/// The backends (by name) a view routes to.
fn allowed(view: &View, backends: &[Reviews]) -> BTreeSet<String> {
    let addrs: BTreeSet<SocketAddr> = view.values().flat_map(|(_, e)| e.iter().copied()).collect();
    backends
        .iter()
        .filter(|b| addrs.contains(&b.addr()))
        .map(|b| b.version().to_owned())
        .collect()
}

/// Everything one run needs.
struct Run {
    protocol: &'static str,
    cp: ControlPlane,
    client: XdsMesh,
    backends: Vec<Reviews>,
    steps: Vec<Step>,
}

impl Run {
    fn backend(&self, name: &str) -> &Reviews {
        self.backends
            .iter()
            .find(|b| b.version() == name)
            .expect("a backend of that name")
    }

    /// Pushes `yaml` and waits until the mesh routes by it; records the
    /// step.
    async fn push(&mut self, name: &'static str, yaml: &str) -> Version {
        let pushed = Instant::now();
        self.cp.publish_yaml(yaml);
        self.applied(name, pushed).await
    }

    /// Waits until the client holds what the control plane serves now
    /// and the mesh routes by it; records the step.
    async fn applied(&mut self, name: &'static str, pushed: Instant) -> Version {
        let want = view(&self.cp.store().snapshot()).expect("the control plane routes reviews");
        let version = self
            .client
            .wait_config(name, |s| view(s).as_ref() == Some(&want))
            .await;
        self.steps.push(Step {
            name,
            version,
            allowed: allowed(&want, &self.backends),
            pushed,
        });
        version
    }
}

/// The step of a client store version: the last one applied at or
/// before it (`None`: before the first step).
fn step_of(steps: &[Step], version: Version) -> Option<usize> {
    steps.iter().rposition(|st| version >= st.version)
}

/// Checks the report against the steps, prints the latencies, and
/// returns per step the requests that started at its version, by backend.
fn check(run: &Run, report: &LoadReport) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    assert_eq!(
        report.failures,
        0,
        "{}: failed requests, first: {:?}",
        run.protocol,
        report
            .samples
            .iter()
            .filter(|s| s.result.is_err())
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(report.dropped, 0, "the buffer holds every sample");
    let steps = &run.steps;
    let mut per_step: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); steps.len()];
    for s in &report.samples {
        let backend = s.result.as_ref().expect("no failure");
        let (Some(i), Some(j)) = (
            step_of(steps, s.version),
            step_of(steps, s.finished_version),
        ) else {
            panic!("{}: a request before the first config: {s:?}", run.protocol)
        };
        // Routed by a version between the one at its start and the one
        // at its end: by one of those steps, never by an older one.
        let ok = steps[i..=j].iter().any(|st| st.allowed.contains(backend));
        assert!(
            ok,
            "{}: a request started at version {} (step {}, routes to {:?}) was answered by {backend}: {s:?}",
            run.protocol, s.version, steps[i].name, steps[i].allowed
        );
        if i == j {
            *per_step[i].entry(backend.clone()).or_default() += 1;
        }
    }
    for (i, st) in steps.iter().enumerate() {
        let counts = &per_step[i];
        if i == 0 {
            continue;
        }
        let first = report
            .samples
            .iter()
            .filter(|s| s.version >= st.version)
            .map(|s| s.finished)
            .min()
            .expect("requests after every step");
        println!(
            "live-update {} step {}: observed after {:.1} ms (first response by the new config; {} requests by it)",
            run.protocol,
            st.name,
            first.duration_since(st.pushed).as_secs_f64() * 1000.0,
            counts.values().sum::<u64>(),
        );
    }
    steps.iter().map(|s| s.name).zip(per_step).collect()
}

/// Whether `counts` of `x` and `y` split evenly within six standard
/// deviations (binomial; a false failure has odds of about 1 in 10^9).
fn even(counts: &BTreeMap<String, u64>, x: &str, y: &str) -> bool {
    let (nx, ny) = (
        counts.get(x).copied().unwrap_or(0),
        counts.get(y).copied().unwrap_or(0),
    );
    nx + ny >= PER_STEP / 2 && within_sigmas(nx, nx + ny, 0.5, 6.0)
}

/// Samples per step for the split checks.
const PER_STEP: u64 = 400;

async fn live_update_under_load(protocol: Protocol, label: &'static str, late_cluster: bool) {
    mesh_tests::init_tracing();
    let backends = start_backends(&["a", "b", "c", "d", "e"]).await;
    let cp = ControlPlane::start().await;
    let [a, b, c, d, e] = [0, 1, 2, 3, 4].map(|i| &backends[i]);
    let v12 = ["v1", "v2"];
    let initial = config(&[(a, "v1"), (b, "v2")], &v12, &[("v1", 100), ("v2", 0)]);
    let fifty = config(&[(a, "v1"), (b, "v2")], &v12, &[("v1", 50), ("v2", 50)]);
    let all_b = config(&[(a, "v1"), (b, "v2")], &v12, &[("v1", 0), ("v2", 100)]);
    let add_c = config(
        &[(a, "v1"), (b, "v2"), (c, "v2")],
        &v12,
        &[("v1", 0), ("v2", 100)],
    );
    let drop_b = config(&[(a, "v1"), (c, "v2")], &v12, &[("v1", 0), ("v2", 100)]);
    let v123 = ["v1", "v2", "v3"];
    let swap = config(
        &[(a, "v1"), (c, "v2"), (d, "v3")],
        &v123,
        &[("v2", 0), ("v3", 100)],
    );
    let v1234 = ["v1", "v2", "v3", "v4"];
    let to_v4 = config(
        &[(a, "v1"), (c, "v2"), (d, "v3"), (e, "v4")],
        &v1234,
        &[("v3", 0), ("v4", 100)],
    );
    cp.publish_yaml(&initial);
    let client = XdsMesh::start(client_config(&cp.uri(), protocol), LISTENER);
    let mut run = Run {
        protocol: label,
        cp,
        client,
        backends,
        steps: Vec::new(),
    };
    run.applied("initial", Instant::now()).await;
    let load = Load::start(
        run.client.mesh(),
        run.client.client(),
        "/reviews/1",
        CLIENTS,
        200_000,
    );
    load.wait_more(PER_STEP).await;

    // 1. Weights: 100/0 -> 50/50 -> 0/100.
    run.push("weights-50-50", &fifty).await;
    load.wait_more(PER_STEP).await;
    run.push("weights-0-100", &all_b).await;
    load.wait_more(PER_STEP).await;

    // 2. An endpoint appears in the subset and gets its share.
    run.push("endpoint-added", &add_c).await;
    load.wait_more(PER_STEP).await;

    // 3. An endpoint is removed while requests are in flight to it.
    run.backend("b")
        .set_delay(std::time::Duration::from_millis(100));
    mesh_tests::xds_harness::eventually("a request in flight at b", || {
        run.backend("b").in_flight() > 0
    })
    .await;
    let removed_at = Instant::now();
    let removed = run.push("endpoint-removed", &drop_b).await;
    load.wait_more(PER_STEP).await;
    mesh_tests::xds_harness::eventually("b to drain", || run.backend("b").in_flight() == 0).await;
    run.backend("b").set_delay(std::time::Duration::ZERO);

    // 4. The route moves from the v2 cluster to the v3 cluster.
    run.push("cluster-swap", &swap).await;
    load.wait_more(PER_STEP).await;

    if !late_cluster {
        return finish(run, load, (removed_at, removed), false).await;
    }
    // 5. A route to a cluster the control plane has not sent yet: the
    // client keeps the last complete config until it arrives (gRFC A74).
    let v4_view = {
        let probe = mesh_core::ConfigStore::new();
        mesh_examples::publish_yaml(&probe, &to_v4);
        view(&probe.snapshot()).unwrap()
    };
    let v4_cluster = v4_view.keys().next().unwrap().clone();
    run.cp.withhold(&[&v4_cluster]);
    let served = run.cp.publish_yaml(&to_v4);
    run.cp
        .wait_acked(NODE_ID, TypeUrl::RouteConfiguration, served)
        .await;
    mesh_tests::xds_harness::eventually("the client to request the new cluster", || {
        run.client.xds().status().iter().any(|s| {
            s.type_url == TypeUrl::Cluster
                && s.name == v4_cluster
                && s.state == ResourceState::Requested
        })
    })
    .await;
    load.wait_more(PER_STEP).await;
    let still = view(&run.client.store().snapshot()).unwrap();
    assert!(
        !still.contains_key(&v4_cluster),
        "{label}: the route to the missing cluster is not published: {still:?}"
    );
    let released = Instant::now();
    run.cp.release();
    run.applied("route-to-late-cluster", released).await;
    load.wait_more(PER_STEP).await;
    finish(run, load, (removed_at, removed), true).await;
}

/// Stops the load and checks what it recorded: the steps (see [`check`]),
/// the splits, the withheld cluster (when the run had that step) and the
/// removed endpoint (`removal`: when it was pushed, and
/// the client version that applied it).
async fn finish(run: Run, load: Load, removal: (Instant, Version), late_cluster: bool) {
    let label = run.protocol;
    let report = load.stop().await;
    let per_step = check(&run, &report);
    // Splits converge to their weights (counted over the requests that
    // started at each step's version).
    assert!(
        even(&per_step["weights-50-50"], "a", "b"),
        "{label}: 50/50: {:?}",
        per_step["weights-50-50"]
    );
    assert!(
        even(&per_step["endpoint-added"], "b", "c"),
        "{label}: round robin over b and the new c: {:?}",
        per_step["endpoint-added"]
    );
    if late_cluster {
        // Until the missing cluster arrived, every request went by the
        // last complete config (the swapped-to cluster's d).
        let version = |name| run.steps.iter().find(|s| s.name == name).unwrap().version;
        let (cut, late) = (version("cluster-swap"), version("route-to-late-cluster"));
        for s in &report.samples {
            if s.version >= cut && s.finished_version < late {
                assert_eq!(s.result.as_deref(), Ok("d"), "{label}: {s:?}");
            }
        }
    }

    // The removed endpoint: requests in flight when it was removed
    // completed (no failure above, and some finished after the push); no
    // request started at the removal's version reached it; the backend
    // saw exactly the requests recorded as answered by it.
    let (removed_at, removed) = removal;
    let b_samples: Vec<&Sample> = report
        .samples
        .iter()
        .filter(|s| s.result.as_deref() == Ok("b"))
        .collect();
    assert!(
        b_samples.iter().any(|s| s.finished > removed_at),
        "{label}: a request in flight at b when it was removed completed"
    );
    assert!(b_samples.iter().all(|s| s.version < removed));
    assert_eq!(run.backend("b").hits(), b_samples.len() as u64);
    assert_eq!(run.cp.server().nack_count(), 0, "{label}: no NACK");
    println!(
        "live-update {label}: {} requests, 0 failed, {} client store versions",
        report.completed,
        run.client.store().version().0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_pushes_under_load_fail_no_request_and_apply_between_two_requests() {
    live_update_under_load(Protocol::StateOfTheWorld, "sotw", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_pushes_under_load_fail_no_request_and_apply_between_two_requests() {
    // Step 5 on delta: see docs/ARCHITECTURE.md, "xDS live updates under load".
    live_update_under_load(Protocol::Delta, "delta", false).await;
}
