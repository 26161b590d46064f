//! Fault tolerance across the whole client stack (issue 3): three backends
//! under a steady 500 requests/s, one of them killed mid-run. With the
//! seeds' retry policy (attempts 3, retryOn 5xx,reset,connect-failure) and
//! outlier detection, at least 99.9% of the requests succeed and the killed
//! backend is ejected.
//!
//! Runs on real time: the load is real (loopback sockets, real
//! connections refused and reset), and the test asserts counts, never
//! durations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_examples::scripted::Scripted;
use mesh_tests::{Outcome, get, init_tracing, mesh_from_yaml};

const RATE: u64 = 500;
const RUN: Duration = Duration::from_secs(6);
const KILL_AT: Duration = Duration::from_secs(2);

fn config(backends: &[&Scripted]) -> String {
    let endpoints: Vec<_> = backends.iter().map(|b| (b.addr(), "v1")).collect();
    let mut yaml = mesh_examples::yaml::service_entry("orders", 8080, "HTTP2", &endpoints);
    yaml.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: orders
spec:
  host: orders
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: orders
spec:
  hosts: [orders]
  http:
  - route:
    - destination: { host: orders }
    retries:
      attempts: 3
      perTryTimeout: 1s
      retryOn: 5xx,reset,connect-failure
"#,
    );
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_backends_loses_almost_nothing() {
    init_tracing();
    let b1 = Scripted::start("b1").await.unwrap();
    let b2 = Scripted::start("b2").await.unwrap();
    let b3 = Scripted::start("b3").await.unwrap();
    let killed_addr = b2.addr();
    let mesh = mesh_from_yaml(&config(&[&b1, &b2, &b3]));
    let client = mesh.client();

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut requests = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let start = tokio::time::Instant::now();
    let mut b2 = Some(b2);
    let total = RATE * RUN.as_secs();
    for _ in 0..total {
        tick.tick().await;
        if b2.is_some() && start.elapsed() >= KILL_AT {
            drop(b2.take());
        }
        let (client, ok, failed) = (client.clone(), Arc::clone(&ok), Arc::clone(&failed));
        requests.spawn(async move {
            match get(&client, "http://orders:8080/", &[]).await {
                Outcome::Version(_, 200) => ok.fetch_add(1, Ordering::Relaxed),
                other => {
                    println!("failed: {other:?}");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "ok {ok}, failed {failed}, b1 {} b3 {}",
        b1.hits(),
        b3.hits()
    );
    assert_eq!(ok + failed, total);
    // At least 99.9% succeed.
    assert!(
        failed * 1000 <= total,
        "{failed} of {total} requests failed (more than 0.1%)"
    );
    // The survivors served everything after the kill.
    assert!(b1.hits() > 0 && b3.hits() > 0);

    let killed = mesh
        .cluster_endpoints("outbound|8080||orders.default.svc.cluster.local")
        .expect("cluster exists")
        .into_iter()
        .find(|e| e.address == killed_addr.to_string())
        .expect("killed endpoint still in config");
    assert!(killed.ejected, "the killed backend is ejected: {killed:?}");
}
