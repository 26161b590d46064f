//! Request latency while xDS updates arrive every 100 ms (issue 5 target:
//! p99 within 10% of the run without updates), through a mesh client
//! configured by xDS from a real `AdsServer` on loopback.
//!
//! Three threads, one runtime each: four loopback HTTP/2 backends (plain
//! hyper, answering `ok`, all on one runtime); the control plane (a `ConfigStore` with a
//! `ServiceEntry` `bench:8080` over the four backends labelled `v1`/`v2`,
//! a `DestinationRule` with those subsets and a `VirtualService` splitting
//! between them, served by an `AdsServer`); and the clients (a plain
//! hyper-util HTTP/2 client taking the backends in turn, and a `Mesh` whose only config
//! source is an `XdsClient` on the same runtime, used through
//! `xds:///bench:8080`).
//!
//! Each round runs, closed loop at 64 concurrent requests for
//! `MESH_BENCH_SECS` (default 5) each: the plain client; the mesh client
//! with no updates (A); the mesh client while the control plane publishes
//! a new config every 100 ms (B). Every update changes all four endpoint
//! weights (EDS, both subsets' clusters and the service's) and the v1/v2
//! split (RDS, from 20/80 to 80/20), so each one reaches the client as an
//! EDS and an RDS response that it decodes, publishes and the mesh applies.
//! No update removes an endpoint: every request must succeed (a non-200
//! answer or an error counts as failed). Three rounds; the table shows
//! each run and the per-column median, and the ratio of the medians
//! p99(B) / p99(A).
//!
//! `nice cargo bench -p mesh-benches --bench xds_updates`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_benches::{Report, closed_loop};
use mesh_core::ConfigStore;
use mesh_xds::config::ClientConfig;
use mesh_xds::server::AdsServer;
use mesh_xds::{TypeUrl, XdsClient};
use tower::ServiceExt;

const CONCURRENCY: usize = 64;
const ROUNDS: usize = 3;
const UPDATE_EVERY: Duration = Duration::from_millis(100);
const BACKENDS: usize = 4;

/// `n` HTTP/2 (prior knowledge) servers answering `ok`, all on one thread.
fn spawn_backends(n: usize) -> Vec<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut addrs = Vec::new();
            for _ in 0..n {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addrs.push(listener.local_addr().expect("addr"));
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(async move {
                            let svc = service_fn(|_req| async {
                                Ok::<_, Infallible>(http::Response::new(Full::new(
                                    Bytes::from_static(b"ok"),
                                )))
                            });
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .max_concurrent_streams(1024)
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                });
            }
            tx.send(addrs).expect("send addrs");
            std::future::pending::<()>().await;
        });
    });
    rx.recv().expect("backend addresses")
}

/// The control plane's config at update `k`: endpoint weights rotate
/// through 1..=4 and the v1/v2 split moves between 20/80 and 80/20.
fn config(backends: &[SocketAddr], k: u64) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: bench }\n\
         spec:\n  hosts: [bench]\n  ports: [{ number: 8080, name: http, protocol: HTTP2 }]\n  \
         resolution: STATIC\n  endpoints:\n",
    );
    for (i, a) in backends.iter().enumerate() {
        let version = if i < backends.len() / 2 { "v1" } else { "v2" };
        let weight = 1 + (i as u64 + k) % 4;
        let _ = writeln!(
            s,
            "  - {{ address: {}, ports: {{ http: {} }}, weight: {weight}, labels: {{ version: {version} }} }}",
            a.ip(),
            a.port()
        );
    }
    let v1 = 20 + 10 * (k % 7);
    let _ = write!(
        s,
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: bench }}\n\
         spec:\n  host: bench\n  trafficPolicy: {{ loadBalancer: {{ simple: ROUND_ROBIN }} }}\n  \
         subsets:\n  - {{ name: v1, labels: {{ version: v1 }} }}\n  - {{ name: v2, labels: {{ version: v2 }} }}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: bench }}\n\
         spec:\n  hosts: [bench]\n  http:\n  - route:\n    \
         - {{ destination: {{ host: bench, subset: v1 }}, weight: {v1} }}\n    \
         - {{ destination: {{ host: bench, subset: v2 }}, weight: {} }}\n",
        100 - v1
    );
    s
}

/// The control plane on its own thread: its ADS address, the switch that
/// turns the 100 ms updates on, and the number of updates published.
struct ControlPlane {
    ads: SocketAddr,
    updating: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
}

fn spawn_control_plane(backends: Vec<SocketAddr>) -> ControlPlane {
    let updating = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let (on, count) = (Arc::clone(&updating), Arc::clone(&published));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let store = ConfigStore::new();
            mesh_examples::publish_yaml(&store, &config(&backends, 0));
            let server = AdsServer::new(&store);
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(tcp.local_addr().expect("addr")).expect("send addr");
            tokio::spawn(server.serve(tcp, std::future::pending()));
            let mut tick = tokio::time::interval(UPDATE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut k = 0;
            loop {
                tick.tick().await;
                if on.load(Ordering::Relaxed) {
                    k += 1;
                    mesh_examples::publish_yaml(&store, &config(&backends, k));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    });
    ControlPlane {
        ads: rx.recv().expect("ads address"),
        updating,
        published,
    }
}

fn row(name: &str, r: &Report) {
    println!(
        "{name:<30} {:>10.0} {:>8} {:>8} {:>8} {:>8}",
        r.throughput, r.latency_us[0], r.latency_us[2], r.latency_us[3], r.errors
    );
}

/// The per-column median of `runs`; errors are summed.
fn median(runs: &[Report]) -> Report {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut latency_us = [0; 4];
    for (i, l) in latency_us.iter_mut().enumerate() {
        *l = mid(runs.iter().map(|r| r.latency_us[i] as f64).collect()) as u64;
    }
    Report {
        throughput: mid(runs.iter().map(|r| r.throughput).collect()),
        latency_us,
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

fn main() {
    let secs: u64 = std::env::var("MESH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let d = Duration::from_secs(secs);
    let backends = spawn_backends(BACKENDS);
    let cp = spawn_control_plane(backends.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let plain: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        // Round robin over the four backends, as the mesh spreads its
        // requests (one HTTP/2 connection to each).
        let plain_urls: Arc<[http::Uri]> = backends
            .iter()
            .map(|b| format!("http://{b}/").parse().expect("uri"))
            .collect();
        let next = Arc::new(AtomicUsize::new(0));
        let send_plain = move || {
            let i = next.fetch_add(1, Ordering::Relaxed) % plain_urls.len();
            let (plain, url) = (plain.clone(), plain_urls[i].clone());
            async move {
                let req = http::Request::get(url)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                match plain.request(req).await {
                    Ok(res) => res.status() == 200 && res.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        };

        let store = ConfigStore::new();
        let xds = XdsClient::start(
            ClientConfig::new(format!("http://{}", cp.ads), "bench-updates"),
            store.clone(),
        );
        let mesh = mesh_tower::Mesh::builder(store)
            .with_xds(xds.clone())
            .build();
        let client = mesh.client_for("xds:///bench:8080").expect("xds target");
        let send_mesh = move || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                match client.oneshot(req).await {
                    Ok(res) => res.status() == 200 && res.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        };
        // The first config arrives over ADS.
        let mut ready = false;
        for _ in 0..500 {
            if send_mesh().await {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ready, "the mesh client got no working config over xDS in 10 s");

        // Warm up connections and allocator caches, updates included.
        closed_loop(16, Duration::from_millis(500), send_plain.clone()).await;
        closed_loop(16, Duration::from_millis(500), send_mesh.clone()).await;
        cp.updating.store(true, Ordering::Relaxed);
        closed_loop(16, Duration::from_millis(500), send_mesh.clone()).await;
        cp.updating.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;

        println!(
            "loopback HTTP/2, {CONCURRENCY} concurrent, {secs}s per run; xDS updates (EDS weights + \
             RDS split) every {} ms in run B",
            UPDATE_EVERY.as_millis()
        );
        println!(
            "{:<30} {:>10} {:>8} {:>8} {:>8} {:>8}",
            "run", "req/s", "p50 us", "p99 us", "p99.9", "failed"
        );
        let (mut plain_runs, mut a_runs, mut b_runs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut published, mut received) = (0, 0);
        for round in 1..=ROUNDS {
            let p = closed_loop(CONCURRENCY, d, send_plain.clone()).await;
            row(&format!("plain hyper-util (round {round})"), &p);
            plain_runs.push(p);
            let a = closed_loop(CONCURRENCY, d, send_mesh.clone()).await;
            row(&format!("A: mesh, no updates ({round})"), &a);
            a_runs.push(a);

            let (p0, r0) = (
                cp.published.load(Ordering::Relaxed),
                xds.metrics().valid(TypeUrl::RouteConfiguration),
            );
            cp.updating.store(true, Ordering::Relaxed);
            let b = closed_loop(CONCURRENCY, d, send_mesh.clone()).await;
            cp.updating.store(false, Ordering::Relaxed);
            // Let the last update land before the next quiet run.
            tokio::time::sleep(Duration::from_millis(200)).await;
            published += cp.published.load(Ordering::Relaxed) - p0;
            received += xds.metrics().valid(TypeUrl::RouteConfiguration) - r0;
            row(&format!("B: mesh, updates ({round})"), &b);
            b_runs.push(b);
        }
        let (p, a, b) = (median(&plain_runs), median(&a_runs), median(&b_runs));
        println!("{}", "-".repeat(78));
        row("plain hyper-util (median)", &p);
        row("A: mesh, no updates (median)", &a);
        row("B: mesh, updates (median)", &b);
        println!(
            "\nupdates published in B runs: {published}; RDS updates the client accepted: {received}"
        );
        println!(
            "p99(B) / p99(A) = {:.3} (target <= 1.10); p99.9(B) / p99.9(A) = {:.3}",
            b.latency_us[2] as f64 / a.latency_us[2].max(1) as f64,
            b.latency_us[3] as f64 / a.latency_us[3].max(1) as f64
        );
        println!(
            "throughput B / A = {:.1}%; A / plain = {:.1}%; failed requests: {}",
            b.throughput / a.throughput * 100.0,
            a.throughput / p.throughput * 100.0,
            p.errors + a.errors + b.errors
        );
    });
}
