//! Traffic shaping from VirtualService `rewrite`, `headers`, `mirror`,
//! `redirect` and `directResponse`, over real loopback sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_examples::backends::Server;
use mesh_examples::scripted::{Action, Scripted};
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml};
use tower::ServiceExt;

type Hosts = Arc<std::sync::Mutex<Vec<String>>>;

/// A backend that answers with what it received: the path and query as
/// `x-seen-path`, the host as `x-seen-host`, and each request header
/// `x-<name>` as `echo-x-<name>` (every value, in order). It also records
/// the hosts it saw.
async fn echo() -> (Server, Arc<AtomicU64>) {
    let (server, hits, _) = echo_with_hosts().await;
    (server, hits)
}

async fn echo_with_hosts() -> (Server, Arc<AtomicU64>, Hosts) {
    let hits = Arc::new(AtomicU64::new(0));
    let hosts: Hosts = Arc::default();
    let counter = Arc::clone(&hits);
    let seen = Arc::clone(&hosts);
    let router = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let counter = Arc::clone(&counter);
        let seen = Arc::clone(&seen);
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut res = http::Response::builder().status(200);
            let host = req
                .headers()
                .get("host")
                .cloned()
                .or_else(|| req.uri().authority().and_then(|a| a.as_str().parse().ok()));
            if let Some(h) = host {
                seen.lock()
                    .unwrap()
                    .push(h.to_str().unwrap_or("?").to_owned());
                res = res.header("x-seen-host", h);
            }
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            res = res.header("x-seen-path", pq);
            for (k, v) in req.headers() {
                if k.as_str().starts_with("x-") {
                    res = res.header(format!("echo-{k}"), v);
                }
            }
            res.body(axum::body::Body::from("echo")).unwrap()
        }
    });
    (Server::start(router).await.unwrap(), hits, hosts)
}

fn services(main: SocketAddr, mirror: Option<SocketAddr>) -> String {
    let mut s = yaml::service_entry("svc", 8080, "HTTP", &[(main, "v1")]);
    if let Some(m) = mirror {
        s.push_str("---\n");
        s.push_str(&yaml::service_entry("shadow", 8080, "HTTP", &[(m, "v1")]));
    }
    s
}

fn with_vs(services: &str, http: &str) -> String {
    format!(
        "{services}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: svc }}\nspec:\n  hosts: [svc]\n  http:\n{http}"
    )
}

async fn send(
    mesh: &mesh_tower::Mesh,
    url: &str,
    headers: &[(&str, &str)],
) -> http::Response<Bytes> {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = mesh
        .client()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn rewrites_and_header_edits_reach_the_backend() {
    init_tracing();
    let (backend, _) = echo().await;
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), None),
        r#"  - match: [{ uri: { prefix: /old } }]
    route: [{ destination: { host: svc } }]
    rewrite: { uri: /new, authority: rewritten.example }
    headers:
      request: { set: { x-set: s }, add: { x-added: a }, remove: [x-drop] }
      response: { set: { x-resp: r }, remove: [x-seen-host] }
  - route: [{ destination: { host: svc } }]
"#,
    ));
    let res = send(
        &mesh,
        "http://svc:8080/old/item?id=7",
        &[("x-drop", "1"), ("x-set", "caller"), ("x-added", "caller")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-seen-path"], "/new/item?id=7");
    assert_eq!(res.headers()["echo-x-set"], "s");
    let added: Vec<_> = res.headers().get_all("echo-x-added").iter().collect();
    assert_eq!(added, ["caller", "a"]);
    assert!(!res.headers().contains_key("echo-x-drop"));
    assert_eq!(res.headers()["x-resp"], "r");
    assert!(
        !res.headers().contains_key("x-seen-host"),
        "response edits apply too"
    );

    // The authority rewrite, seen by the backend (the route above removes
    // the header on the way back, so ask the second route's way).
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), None),
        "  - route: [{ destination: { host: svc } }]\n    rewrite: { authority: rewritten.example }\n",
    ));
    let res = send(&mesh, "http://svc:8080/x", &[]).await;
    assert_eq!(res.headers()["x-seen-host"], "rewritten.example");
    assert_eq!(res.headers()["x-seen-path"], "/x");
}

#[tokio::test]
async fn destination_header_edits_apply_before_the_routes() {
    let (backend, _) = echo().await;
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), None),
        r#"  - route:
    - destination: { host: svc }
      headers:
        request: { set: { x-dest: d, x-both: dest } }
        response: { set: { x-resp-dest: "1" } }
    headers:
      request: { set: { x-both: route } }
"#,
    ));
    let res = send(&mesh, "http://svc:8080/x", &[]).await;
    assert_eq!(res.headers()["echo-x-dest"], "d");
    assert_eq!(
        res.headers()["echo-x-both"],
        "route",
        "the route's edits come after the destination's (Envoy's order)"
    );
    assert_eq!(res.headers()["x-resp-dest"], "1");
}

#[tokio::test]
async fn redirects_and_direct_responses_answer_without_a_backend() {
    let (backend, hits) = echo().await;
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), None),
        r#"  - match: [{ uri: { prefix: /moved } }]
    redirect: { uri: /here, authority: other.example, port: 8443, scheme: https }
  - match: [{ uri: { prefix: /temp } }]
    redirect: { uri: /t, redirectCode: 307 }
  - match: [{ uri: { exact: /maintenance } }]
    directResponse: { status: 503, body: { string: "down for maintenance" } }
  - route: [{ destination: { host: svc } }]
"#,
    ));
    let res = send(&mesh, "http://svc:8080/moved/x?y=1", &[]).await;
    assert_eq!(res.status(), 301, "Istio's default redirectCode");
    assert_eq!(
        res.headers()["location"],
        "https://other.example:8443/here?y=1"
    );
    let res = send(&mesh, "http://svc:8080/temp", &[]).await;
    assert_eq!(res.status(), 307);
    assert_eq!(res.headers()["location"], "http://svc:8080/t");
    let res = send(&mesh, "http://svc:8080/maintenance", &[]).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.body(), "down for maintenance");
    assert_eq!(hits.load(Ordering::Relaxed), 0, "no backend was involved");
    let res = send(&mesh, "http://svc:8080/other", &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(hits.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn mirrors_copy_requests_to_the_shadow_cluster() {
    let (backend, hits) = echo().await;
    let (shadow, shadow_hits, shadow_hosts) = echo_with_hosts().await;
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), Some(shadow.addr())),
        "  - route: [{ destination: { host: svc } }]\n    mirror: { host: shadow }\n",
    ));
    let n = 20;
    for _ in 0..n {
        assert_eq!(send(&mesh, "http://svc:8080/m", &[]).await.status(), 200);
    }
    // The copies are fire-and-forget: wait for the worker to finish them.
    let stats = mesh.mirror_stats();
    for _ in 0..200 {
        if stats.completed() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hits.load(Ordering::Relaxed), n);
    assert_eq!(shadow_hits.load(Ordering::Relaxed), n);
    assert_eq!(
        (stats.completed(), stats.dropped(), stats.failed()),
        (n, 0, 0)
    );
    // Envoy's shadow host: the suffix goes before the port.
    let hosts = shadow_hosts.lock().unwrap().clone();
    assert_eq!(hosts.len(), n as usize);
    assert!(hosts.iter().all(|h| h == "svc-shadow:8080"), "{hosts:?}");
}

#[tokio::test]
async fn mirror_percentage_selects_a_share() {
    let (backend, _) = echo().await;
    let (shadow, shadow_hits) = echo().await;
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), Some(shadow.addr())),
        "  - route: [{ destination: { host: svc } }]
    mirror: { host: shadow }
    mirrorPercentage: { value: 0 }
",
    ));
    for _ in 0..50 {
        assert_eq!(send(&mesh, "http://svc:8080/m", &[]).await.status(), 200);
    }
    assert_eq!(mesh.mirror_stats().queued(), 0, "0% mirrors nothing");
    assert_eq!(shadow_hits.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_mirror_never_slows_or_fails_the_caller() {
    let (backend, hits) = echo().await;
    let shadow = Scripted::start("shadow").await.unwrap();
    shadow.set_default(Action::Hang);
    let mesh = mesh_from_yaml(&with_vs(
        &services(backend.addr(), Some(shadow.addr())),
        "  - route: [{ destination: { host: svc } }]\n    mirror: { host: shadow }\n    mirrorPercentage: { value: 100 }\n",
    ));
    let n = 300u64;
    for _ in 0..n {
        assert_eq!(send(&mesh, "http://svc:8080/m", &[]).await.status(), 200);
    }
    assert_eq!(hits.load(Ordering::Relaxed), n);
    let stats = mesh.mirror_stats();
    let bound = (mesh_tower::shaping::QUEUE_CAPACITY + mesh_tower::shaping::MAX_IN_FLIGHT) as u64;
    assert!(
        stats.queued() <= bound,
        "at most the queue and the in-flight copies are held: {}",
        stats.queued()
    );
    assert_eq!(stats.queued() + stats.dropped(), n, "every copy is counted");
    assert!(stats.dropped() >= n - bound);
}
