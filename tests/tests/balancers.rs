//! Load balancers over real loopback backends: consistent hashing (ring
//! and Maglev, header and cookie keys), peak EWMA, slow start, and
//! endpoints that cannot connect.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_core::model::LbPolicy;
use mesh_examples::scripted::{Action, SERVED_BY, Scripted};
use mesh_examples::yaml::service_entry;
use mesh_tower::{Mesh, MeshClient};
use tower::ServiceExt;

const CLUSTER: &str = "outbound|8080||backend.default.svc.cluster.local";

fn yaml(addrs: &[SocketAddr], lb: &str) -> String {
    let eps: Vec<(SocketAddr, &str)> = addrs.iter().map(|a| (*a, "v1")).collect();
    format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: backend }}\nspec:\n  host: backend\n  trafficPolicy:\n    loadBalancer:\n{lb}",
        service_entry("backend", 8080, "HTTP", &eps)
    )
}

async fn start(n: usize) -> Vec<Scripted> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Scripted::start(&format!("b{i}")).await.unwrap());
    }
    v
}

/// Sends GET with `headers`; returns the backend that answered and the
/// response headers.
async fn send(client: &MeshClient, headers: &[(&str, &str)]) -> (String, http::HeaderMap) {
    let mut req = http::Request::get("http://backend:8080/");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = client
        .clone()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let by = res.headers()[SERVED_BY].to_str().unwrap().to_owned();
    let headers = res.headers().clone();
    res.into_body().collect().await.unwrap();
    (by, headers)
}

/// Maps 300 user ids to backends, checking each user twice.
async fn placement(client: &MeshClient) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for user in 0..300u32 {
        let id = format!("user-{user}");
        let (a, _) = send(client, &[("x-user", &id)]).await;
        let (b, _) = send(client, &[("x-user", &id)]).await;
        assert_eq!(a, b, "the same key reaches the same endpoint");
        out.insert(user, a);
    }
    out
}

async fn same_key_same_endpoint_and_removal_remaps_a_tenth(lb: &str) {
    let backends = start(10).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(Scripted::addr).collect();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&addrs, lb));
    let client = mesh.client();
    let before = placement(&client).await;
    let used: std::collections::HashSet<_> = before.values().collect();
    assert!(used.len() >= 9, "keys spread over the endpoints: {used:?}");

    // Remove b3.
    let nine: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, a)| *a)
        .collect();
    mesh_tests::republish(&mesh, &yaml(&nine, lb)).await;
    let after = placement(&client).await;
    let moved = before.iter().filter(|(u, b)| after[u] != **b).count();
    let on_b3 = before.values().filter(|b| *b == "b3").count();
    assert!(
        (10..=50).contains(&moved),
        "about a tenth of 300 keys move: {moved}"
    );
    let moved_elsewhere = before
        .iter()
        .filter(|(u, b)| *b != "b3" && after[u] != **b)
        .count();
    assert!(
        moved_elsewhere * 20 <= 300,
        "keys of kept endpoints mostly stay: {moved_elsewhere} moved, {on_b3} were on b3"
    );
}

#[tokio::test(start_paused = true)]
async fn ring_hash_keeps_keys_on_their_endpoint() {
    same_key_same_endpoint_and_removal_remaps_a_tenth(
        "      consistentHash: { httpHeaderName: x-user, ringHash: { minimumRingSize: 1024 } }\n",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn maglev_keeps_keys_on_their_endpoint() {
    same_key_same_endpoint_and_removal_remaps_a_tenth(
        "      consistentHash: { httpHeaderName: x-user, maglev: { tableSize: 65537 } }\n",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_cookie_is_set_when_absent_and_then_pins_the_endpoint() {
    let backends = start(5).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(Scripted::addr).collect();
    let mesh = mesh_tests::mesh_from_yaml(&yaml(
        &addrs,
        "      consistentHash: { httpCookie: { name: session, path: /, ttl: 3600s } }\n",
    ));
    let client = mesh.client();
    for _ in 0..10 {
        let (first, headers) = send(&client, &[]).await;
        let set = headers[http::header::SET_COOKIE].to_str().unwrap();
        let (pair, attrs) = set.split_once(';').unwrap();
        assert!(pair.starts_with("session="), "{set}");
        assert_eq!(attrs, " Path=/; Max-Age=3600; HttpOnly");
        for _ in 0..5 {
            let (by, headers) = send(&client, &[("cookie", pair)]).await;
            assert_eq!(by, first, "the cookie pins the endpoint");
            assert!(!headers.contains_key(http::header::SET_COOKIE));
        }
    }
}

/// A mesh whose cluster uses Linkerd's peak EWMA (not expressible in
/// Istio YAML; set on the translated cluster as xDS or a ServiceProfile
/// would).
fn peak_ewma_mesh(addrs: &[SocketAddr]) -> Mesh {
    let mut t = FileSource::parse_str("mesh.yaml", &yaml(addrs, "      simple: ROUND_ROBIN\n"))
        .unwrap()
        .resources;
    for c in &mut t.clusters {
        c.lb_policy = LbPolicy::linkerd_peak_ewma();
    }
    let store = ConfigStore::new();
    store.publish("test".into(), t).unwrap();
    Mesh::new(store)
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_prefers_the_fast_endpoint() {
    let backends = start(2).await;
    backends[0].set_default(Action::delayed(Duration::from_millis(50)));
    backends[1].set_default(Action::delayed(Duration::from_millis(2)));
    let addrs: Vec<SocketAddr> = backends.iter().map(Scripted::addr).collect();
    let client = peak_ewma_mesh(&addrs).client();
    for _ in 0..200 {
        send(&client, &[]).await;
    }
    let (slow, fast) = (backends[0].hits(), backends[1].hits());
    assert!(slow >= 1, "cold start: the slow endpoint was tried");
    assert!(fast > 9 * slow, "fast {fast}, slow {slow}");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_does_not_reward_an_endpoint_that_fails_fast() {
    let backends = start(2).await;
    backends[0].set_default(Action::status(503));
    backends[1].set_default(Action::delayed(Duration::from_millis(10)));
    let addrs: Vec<SocketAddr> = backends.iter().map(Scripted::addr).collect();
    let client = peak_ewma_mesh(&addrs).client();
    for _ in 0..200 {
        send(&client, &[]).await;
    }
    let (failing, healthy) = (backends[0].hits(), backends[1].hits());
    assert!(
        healthy > 4 * failing,
        "healthy {healthy}, failing {failing}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_warms_up_under_slow_start() {
    let backends = start(3).await;
    let addrs: Vec<SocketAddr> = backends.iter().map(Scripted::addr).collect();
    let lb = "      simple: ROUND_ROBIN\n      warmup: { duration: 100s, minimumPercent: 10 }\n";
    let mesh = mesh_tests::mesh_from_yaml(&yaml(&addrs[..2], lb));
    let client = mesh.client();
    mesh_tests::republish(&mesh, &yaml(&addrs, lb)).await;
    // Just added: b2 gets its 1/3 share scaled to about 10%.
    for _ in 0..600 {
        send(&client, &[]).await;
    }
    let early = backends[2].hits();
    assert!(early < 60, "b2 got {early} of 600 while warming up");
    // After the window, a full share.
    tokio::time::sleep(Duration::from_secs(100)).await;
    let before = backends[2].hits();
    for _ in 0..600 {
        send(&client, &[]).await;
    }
    let late = backends[2].hits() - before;
    assert!(
        (170..=230).contains(&late),
        "b2 got {late} of 600 after warming up"
    );
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_that_cannot_connect_is_not_ready_and_is_avoided() {
    let good = Scripted::start("good").await.unwrap();
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mesh =
        mesh_tests::mesh_from_yaml(&yaml(&[closed, good.addr()], "      simple: ROUND_ROBIN\n"));
    let client = mesh.client();
    let mut errors = 0;
    for _ in 0..20 {
        let req = http::Request::get("http://backend:8080/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        match client.clone().oneshot(req).await {
            Ok(res) => assert_eq!(res.headers()[SERVED_BY], "good"),
            Err(e) => {
                assert!(e.is_connect(), "{e}");
                errors += 1;
            }
        }
    }
    // Istio's default retry policy retries the connect failure on `good`.
    assert_eq!(errors, 0);
    let status = mesh.cluster_endpoints(CLUSTER).unwrap();
    assert_eq!(
        (status[0].ready, status[0].connect_failures),
        (false, 1),
        "after one failed connect the endpoint is avoided"
    );
    assert!(status[1].ready);
    // After the backoff it is probed again (and fails again).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(mesh.cluster_endpoints(CLUSTER).unwrap()[0].ready);
}

/// A `backend` ServiceEntry whose endpoints have localities, with a
/// DestinationRule `trafficPolicy` body.
fn locality_yaml(eps: &[(SocketAddr, &str)], traffic_policy: &str) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: backend }\nspec:\n  hosts: [backend]\n  ports:\n  - { number: 8080, name: http, protocol: HTTP }\n  resolution: STATIC\n  endpoints:\n",
    );
    for (addr, locality) in eps {
        s.push_str(&format!(
            "  - {{ address: {}, ports: {{ http: {} }}, locality: {locality} }}\n",
            addr.ip(),
            addr.port()
        ));
    }
    s.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: backend }}\nspec:\n  host: backend\n  trafficPolicy:\n{traffic_policy}"
    ));
    s
}

fn mesh_at(locality: &str, yaml: &str) -> Mesh {
    let store = ConfigStore::new();
    mesh_examples::publish_yaml(&store, yaml);
    Mesh::with_node(
        store,
        mesh_tower::Node::new(locality, mesh_core::model::Labels::default()),
    )
}

#[tokio::test(start_paused = true)]
async fn distribute_splits_traffic_over_localities_by_weight() {
    let backends = start(3).await;
    let mesh = mesh_at(
        "us-west/zone1/a",
        &locality_yaml(
            &[
                (backends[0].addr(), "us-west/zone1/a"),
                (backends[1].addr(), "us-west/zone2/a"),
                (backends[2].addr(), "us-east/zone1/a"),
            ],
            "    loadBalancer:\n      simple: ROUND_ROBIN\n      localityLbSetting:\n        distribute:\n        - from: us-west/zone1/*\n          to: { \"us-west/zone1/*\": 80, \"us-west/zone2/*\": 20 }\n",
        ),
    );
    let client = mesh.client();
    for _ in 0..1000 {
        send(&client, &[]).await;
    }
    let hits: Vec<u64> = backends.iter().map(Scripted::hits).collect();
    assert!(
        mesh_tests::within_sigmas(hits[0], 1000, 0.8, 5.0),
        "{hits:?}"
    );
    assert_eq!(hits[0] + hits[1], 1000);
    assert_eq!(hits[2], 0, "no weight for us-east");
}

#[tokio::test(start_paused = true)]
async fn failover_keeps_traffic_local_until_local_endpoints_are_ejected() {
    let backends = start(3).await;
    let mesh = mesh_at(
        "us-west/zone1/a",
        &locality_yaml(
            &[
                (backends[0].addr(), "us-west/zone1/a"),
                (backends[1].addr(), "us-east/zone1/a"),
                (backends[2].addr(), "eu-west/zone1/a"),
            ],
            "    outlierDetection: { consecutive5xxErrors: 3, maxEjectionPercent: 100 }\n    loadBalancer:\n      localityLbSetting:\n        failover:\n        - { from: us-west, to: eu-west }\n",
        ),
    );
    let client = mesh.client();
    for _ in 0..50 {
        send(&client, &[]).await;
    }
    assert_eq!(
        backends[0].hits(),
        50,
        "the local endpoint takes everything"
    );
    // The local endpoint fails and is ejected; traffic fails over to the
    // region the failover rule names, not to us-east.
    backends[0].set_default(Action::status(503));
    for _ in 0..50 {
        send(&client, &[]).await;
    }
    assert!(backends[0].hits() <= 53, "{}", backends[0].hits());
    assert!(backends[2].hits() >= 47, "{}", backends[2].hits());
    assert_eq!(backends[1].hits(), 0);
}
