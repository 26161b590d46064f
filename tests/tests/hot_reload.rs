//! Live config changes under load: a real file, edited while clients send.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_examples::backends::Reviews;
use mesh_examples::yaml::{self, Split};
use mesh_tests::{Outcome, get, init_tracing, mesh_from_yaml, republish};
use mesh_tower::Mesh;

const URL: &str = "http://reviews:9080/reviews/1";

/// Whether the store's config sends all `reviews` traffic to `subset`.
fn routes_to(store: &ConfigStore, subset: &str) -> bool {
    let req = mesh_core::CheckRequest::get(URL).expect("valid");
    mesh_core::check_route(&store.snapshot(), &req).is_ok_and(|c| {
        c.destinations
            .iter()
            .all(|d| d.subset.as_deref() == Some(subset) || d.weight == 0)
    })
}

/// The phase the coordinator is in: 0 while a change is being applied,
/// otherwise a phase number whose low bit says which version must answer.
struct Phase(AtomicU64);

impl Phase {
    fn expected(p: u64) -> Option<&'static str> {
        match p {
            0 => None,
            p if p % 2 == 1 => Some("v1"),
            _ => Some("v2"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_the_file_20_times_under_load_fails_no_request() {
    init_tracing();
    let v1 = Reviews::start("v1").await.unwrap();
    let v2 = Reviews::start("v2").await.unwrap();
    let only = |version: &'static str| {
        yaml::reviews(
            &[(&v1, "v1"), (&v2, "v2")],
            &Split::Weights(&[(version, 100)]),
        )
    };

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, only("v1")).unwrap();
    let store = ConfigStore::new();
    let watcher = FileSource::new(&path)
        .with_debounce(Duration::from_millis(20))
        .watch(store.clone())
        .unwrap();
    let mut reloads = watcher.subscribe();
    let mesh = Mesh::new(store.clone());

    // Phase 1: v1 answers.
    let phase = Arc::new(Phase(AtomicU64::new(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, phase, stop, sent, checked) = (
            mesh.client(),
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&checked),
        );
        clients.spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = phase.0.load(Ordering::SeqCst);
                let outcome = get(&client, URL, &[]).await;
                let after = phase.0.load(Ordering::SeqCst);
                sent.fetch_add(1, Ordering::Relaxed);
                match (&outcome, Phase::expected(before)) {
                    (Outcome::Version(v, 200), Some(want)) if before == after => {
                        checked.fetch_add(1, Ordering::Relaxed);
                        if v != want {
                            failures.push(format!("phase {before}: expected {want}, got {v}"));
                        }
                    }
                    (Outcome::Version(_, 200), _) => {}
                    (other, _) => failures.push(format!("phase {before}: {other:?}")),
                }
            }
            failures
        });
    }

    let mut expected_version = store.version();
    for i in 0..20u64 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (version_name, write_in_place) = if i % 2 == 0 {
            ("v2", true)
        } else {
            ("v1", false)
        };
        phase.0.store(0, Ordering::SeqCst);
        reloads.borrow_and_update();
        let text = only(version_name);
        if write_in_place {
            std::fs::write(&path, &text).unwrap();
        } else {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        // An in-place write can be read half-done (truncated, then
        // written); wait for the reload that holds the whole edit.
        let version = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                reloads.changed().await.expect("watcher alive");
                let event = reloads.borrow_and_update().clone();
                if let Ok(v) = event.result
                    && routes_to(&store, version_name)
                {
                    break v;
                }
            }
        })
        .await
        .expect("the watcher applies the edit within 30s");
        assert!(version > expected_version);
        expected_version = version;
        mesh.applied(version).await;
        phase.0.store(i + 2, Ordering::SeqCst); // odd: v1, even: v2

        if i == 9 {
            // An invalid edit in the middle: rejected, reported, and the
            // traffic keeps following the last good config.
            let before = reloads.borrow_and_update().attempt;
            let broken = only("v9");
            std::fs::write(&path, &broken).unwrap();
            let event = tokio::time::timeout(
                Duration::from_secs(30),
                reloads.wait_for(|e| e.attempt > before),
            )
            .await
            .expect("the watcher reloads within 30s")
            .unwrap()
            .clone();
            let reason = event.result.expect_err("the edit is invalid");
            assert!(
                reason.contains("http[0].route[0].destination.subset: unknown subset \"v9\""),
                "{reason}"
            );
            assert_eq!(
                store.version(),
                expected_version,
                "the last good config stays"
            );
            let status = store
                .source_status(&FileSource::new(&path).source_id())
                .unwrap();
            assert_eq!(status.last_rejection.unwrap().reason, reason);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    while let Some(r) = clients.join_next().await {
        failures.extend(r.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let (sent, checked) = (
        sent.load(Ordering::Relaxed),
        checked.load(Ordering::Relaxed),
    );
    assert!(
        checked > 400,
        "{checked} of {sent} requests fell inside a phase"
    );
    assert_eq!(
        v1.hits() + v2.hits(),
        sent,
        "every request reached a backend"
    );
    drop(watcher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_an_endpoint_keeps_its_connection_and_load() {
    let v1 = Reviews::start("v1").await.unwrap();
    let v2 = Reviews::start("v2").await.unwrap();
    // HTTP/2: one multiplexed connection per endpoint, so the connection
    // count says exactly whether the pool was kept.
    let split = |w1, w2| {
        [
            yaml::service_entry(
                "reviews",
                9080,
                "HTTP2",
                &[(v1.addr(), "v1"), (v2.addr(), "v2")],
            ),
            yaml::destination_rule("reviews", "LEAST_REQUEST", &["v1", "v2"]),
            yaml::virtual_service("reviews", &Split::Weights(&[("v1", w1), ("v2", w2)]), None),
        ]
        .join("---\n")
    };
    let mesh = mesh_from_yaml(&split(100, 0));
    let client = mesh.client();
    for _ in 0..10 {
        assert_eq!(
            get(&client, URL, &[]).await,
            Outcome::Version("v1".into(), 200)
        );
    }
    assert_eq!(v1.connections(), 1);

    // A request held at the endpoint shows in its load gauge.
    v1.set_delay(Duration::from_millis(500));
    let held = tokio::spawn({
        let client = client.clone();
        async move { get(&client, URL, &[]).await }
    });
    while v1.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cluster = "outbound|9080|v1|reviews.default.svc.cluster.local";
    let gauge = |mesh: &Mesh| mesh.cluster_endpoints(cluster).unwrap()[0].in_flight;
    assert_eq!(gauge(&mesh), 1);

    // New splits, new route tables: the v1 endpoint is unchanged, so its
    // state (connection, in-flight gauge) is the same object.
    republish(&mesh, &split(50, 50)).await;
    republish(&mesh, &split(100, 0)).await;
    assert_eq!(gauge(&mesh), 1, "the reload kept the endpoint's load gauge");
    v1.set_delay(Duration::ZERO);
    assert_eq!(held.await.unwrap(), Outcome::Version("v1".into(), 200));
    assert_eq!(gauge(&mesh), 0);
    for _ in 0..10 {
        assert_eq!(
            get(&client, URL, &[]).await,
            Outcome::Version("v1".into(), 200)
        );
    }
    assert_eq!(
        v1.connections(),
        1,
        "the reload kept the endpoint's connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_drains_its_requests_in_flight() {
    let old = Reviews::start("v1").await.unwrap();
    let new = Reviews::start("v2").await.unwrap();
    old.set_delay(Duration::from_millis(300));
    let only = |r: &Reviews, v| {
        format!(
            "{}---\n{}",
            yaml::service_entry("reviews", 9080, "HTTP", &[(r.addr(), v)]),
            yaml::destination_rule("reviews", "ROUND_ROBIN", &[v])
        )
    };
    let mesh = mesh_from_yaml(&only(&old, "v1"));
    let client = mesh.client();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { get(&client, URL, &[]).await }
    });
    // Wait until the request is at the old endpoint, then remove it.
    while old.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    republish(&mesh, &only(&new, "v2")).await;
    assert_eq!(
        get(&client, URL, &[]).await,
        Outcome::Version("v2".into(), 200),
        "new requests go to the new endpoint"
    );
    assert_eq!(
        slow.await.unwrap(),
        Outcome::Version("v1".into(), 200),
        "the request in flight completes"
    );
    assert_eq!(old.hits(), 1);
}
