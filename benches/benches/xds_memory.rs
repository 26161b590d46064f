//! Memory for 1 000 clusters × 100 endpoints (EDS), our subscriber and
//! store beside Envoy, both fed by the same ADS server.
//!
//! This process runs an [`AdsServer`] over a `ConfigStore` holding one
//! outbound listener on a free port, its route table (one virtual host per
//! service, each routing to its own cluster), 1 000 EDS clusters and
//! 100 endpoints for each (100 000 in all, unreachable `10.x.y.z`
//! addresses: nothing connects to them). Then:
//!
//! - **Envoy** (`ENVOY_BIN`, else `envoy` on `PATH`; skipped with a notice
//!   when absent): started with a bootstrap whose LDS and CDS come from the
//!   ADS server (`--concurrency 1`) while the store is still empty; its
//!   idle `VmRSS` (and `server.memory_allocated`, tcmalloc's live heap) is
//!   read once it is `LIVE` on the empty config. Then the full config is
//!   published and pushed; once the admin `/stats` show 1 001 active
//!   clusters (the 1 000 plus the static ADS cluster), none warming, the
//!   listener active and 100 000 `membership_total` endpoints, it is read
//!   again. Envoy is stopped before the next step.
//! - **Our subscriber** (a child process: this binary again, the
//!   `MESH_XDS_MEMORY_CHILD` variable set): a current-thread runtime and an
//!   empty `ConfigStore`, measured; then an `XdsClient` watching one API
//!   listener (`svc0.bench:<port>`). The listener's route table names all
//!   1 000 clusters, so the LDS → RDS → CDS → EDS cascade subscribes to
//!   every cluster and its endpoints: the client has no wildcard CDS, and
//!   this is how a proxyless client gets a whole mesh (Istio sends every
//!   service's virtual host in the port's route table). Once the store
//!   holds the 1 000 clusters and 100 000 endpoints, plus half a second for
//!   the ACKs, `VmRSS` and the live heap (a counting global allocator:
//!   bytes allocated minus bytes freed) are read again.
//!
//! Both deltas include what the subscription costs beyond the config
//! itself: the gRPC channel, the decoded resources kept for status and
//! config dumps, and (RSS) the code pages first touched.
//!
//! `nice cargo bench -p mesh-benches --bench xds_memory`
//! (`MESH_XDS_CLUSTERS` / `MESH_XDS_ENDPOINTS` change the size.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::model::{
    Cluster, Endpoint, EndpointSet, ForwardAction, Labels, LbPolicy, Listener, Route, RouteAction,
    RouteTable, VirtualHost,
};
use mesh_core::{ConfigStore, Resources, Snapshot, SourceId};
use mesh_xds::XdsClient;
use mesh_xds::config::ClientConfig;
use mesh_xds::server::AdsServer;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Set in the child: the ADS server's address and the listener to watch.
const CHILD_ENV: &str = "MESH_XDS_MEMORY_CHILD";

const MIB: f64 = 1024.0 * 1024.0;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Bytes currently allocated on the heap through the global allocator.
fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    // stats_alloc counts a realloc's growth or shrinkage in these two too.
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// `VmRSS` of `pid` (`self` for this process), in bytes.
fn vm_rss(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

fn cluster_name(i: usize) -> String {
    format!("outbound|8080||svc{i}.bench")
}

/// One outbound listener on `port`, its route table with a virtual host
/// per service, `clusters` round-robin clusters and `per` endpoints each.
fn resources(port: u16, clusters: usize, per: usize) -> Resources {
    let rt = port.to_string();
    let vhosts = (0..clusters)
        .map(|i| VirtualHost {
            name: format!("svc{i}.bench:{port}").into(),
            domains: Arc::from([
                Arc::from(format!("svc{i}.bench")),
                Arc::from(format!("svc{i}.bench:{port}")),
            ]),
            routes: Arc::from([Route {
                name: Some("default".into()),
                matches: Arc::from([]),
                action: RouteAction::Forward(Box::new(ForwardAction::to(cluster_name(i)))),
            }]),
        })
        .collect();
    Resources {
        listeners: vec![Listener::client(port, rt.as_str())],
        route_tables: vec![RouteTable::try_new(rt.as_str(), vhosts).expect("route table")],
        clusters: (0..clusters)
            .map(|i| Cluster::new(cluster_name(i)).with_lb_policy(LbPolicy::RoundRobin))
            .collect(),
        endpoints: (0..clusters)
            .map(|i| {
                let eps = (0..per)
                    .map(|j| {
                        Endpoint::socket(SocketAddr::from((
                            [10, (i >> 8) as u8, i as u8, j as u8],
                            8080,
                        )))
                        // One map per endpoint, as decoding EDS makes them.
                        .with_labels(Labels::new([("app", "svc"), ("version", "v1")]))
                    })
                    .collect();
                EndpointSet::try_new(cluster_name(i), eps).expect("endpoints")
            })
            .collect(),
        ..Resources::default()
    }
}

/// Whether `s` holds the whole config.
fn complete(s: &Snapshot, clusters: usize, per: usize) -> bool {
    s.clusters().count() == clusters
        && s.endpoint_sets()
            .map(|e| e.endpoints().len())
            .sum::<usize>()
            == clusters * per
}

/// The child: the subscriber and its store alone in a process.
fn child(spec: &str) {
    let (ads, listener) = spec.split_once(' ').expect("'<ads> <listener>'");
    let (clusters, per) = (
        env_or("MESH_XDS_CLUSTERS", 1000),
        env_or("MESH_XDS_ENDPOINTS", 100),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let store = ConfigStore::new();
        let mut updates = store.subscribe();
        let mut config = ClientConfig::new(format!("http://{ads}"), "bench-memory");
        config.listeners = vec![listener.to_owned()];
        let (rss0, heap0) = (vm_rss("self"), live_heap());
        let start = Instant::now();
        let client = XdsClient::start(config, store.clone());
        tokio::time::timeout(
            Duration::from_secs(120),
            updates.wait_for(|s| complete(s, clusters, per)),
        )
        .await
        .expect("the whole config within 120 s")
        .expect("store open");
        let took = start.elapsed();
        // The ACKs go out after the publish; let the stream settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss1, heap1) = (vm_rss("self"), live_heap());
        // The config alone as mesh-core data, for scale (after the
        // measurement: freed memory stays in the process).
        let model = {
            let before = live_heap();
            let r = resources(0, clusters, per);
            let bytes = live_heap() - before;
            drop(r);
            bytes
        };
        println!(
            "RESULT {rss0} {rss1} {heap0} {heap1} {} {model}",
            took.as_millis()
        );
        drop(client);
    });
}

/// A running Envoy, killed when dropped.
struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
}

/// Envoy's bootstrap: an admin listener, and LDS + CDS (so RDS and EDS
/// too) over ADS from `ads`, HTTP/2.
fn bootstrap(ads: SocketAddr) -> String {
    format!(
        r#"{{
  "node": {{ "id": "envoy-memory", "cluster": "bench" }},
  "admin": {{ "address": {{ "socket_address": {{ "address": "127.0.0.1", "port_value": 0 }} }} }},
  "dynamic_resources": {{
    "ads_config": {{
      "api_type": "GRPC",
      "transport_api_version": "V3",
      "grpc_services": [{{ "envoy_grpc": {{ "cluster_name": "xds_cluster" }} }}]
    }},
    "lds_config": {{ "ads": {{}}, "resource_api_version": "V3" }},
    "cds_config": {{ "ads": {{}}, "resource_api_version": "V3" }}
  }},
  "static_resources": {{
    "clusters": [{{
      "name": "xds_cluster",
      "type": "STATIC",
      "connect_timeout": "1s",
      "typed_extension_protocol_options": {{
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {{ "http2_protocol_options": {{}} }}
        }}
      }},
      "load_assignment": {{
        "cluster_name": "xds_cluster",
        "endpoints": [{{ "lb_endpoints": [{{ "endpoint": {{ "address": {{
          "socket_address": {{ "address": "127.0.0.1", "port_value": {port} }}
        }} }} }}] }}]
      }}
    }}]
  }}
}}"#,
        port = ads.port()
    )
}

/// A plaintext HTTP/1.1 GET: status and body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    let res = sender.send_request(req).await.ok()?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

impl Envoy {
    async fn start(bin: &Path, dir: &Path, ads: SocketAddr) -> Self {
        let config = dir.join("envoy.json");
        std::fs::write(&config, bootstrap(ads)).expect("write bootstrap");
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "warn", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Self {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = envoy.child.try_wait().expect("envoy status") {
                panic!("envoy exited with {status}:\n{}", envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "envoy not LIVE in 30 s:\n{}",
                envoy.log()
            );
            if let Some(admin) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                && let Some((200, body)) = http_get(admin, "/ready").await
                && body.trim() == "LIVE"
            {
                envoy.admin = admin;
                return envoy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Every stat whose name matches the regex `filter`, summed.
    async fn stat_sum(&self, filter: &str) -> u64 {
        let (_, body) = http_get(self.admin, &format!("/stats?filter={filter}"))
            .await
            .expect("envoy admin /stats");
        body.lines()
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn version(bin: &Path) -> String {
        let out = Command::new(bin).arg("--version").output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        // "<path>  version: <sha>/1.xx.y/Clean/RELEASE/BoringSSL"
        text.split_once("version: ")
            .and_then(|(_, v)| v.split('/').nth(1))
            .unwrap_or("?")
            .to_owned()
    }
}

/// What one side measured.
struct Side {
    name: String,
    rss: (u64, u64),
    heap: (i64, i64),
    took: Duration,
    /// Ours: the heap the same config takes built directly as
    /// mesh-core data.
    model: Option<i64>,
}

impl Side {
    fn row(&self) {
        let rss_delta = self.rss.1 as f64 - self.rss.0 as f64;
        let heap_delta = self.heap.1 as f64 - self.heap.0 as f64;
        println!(
            "{:<34} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>9}",
            self.name,
            self.rss.0 as f64 / MIB,
            self.rss.1 as f64 / MIB,
            rss_delta / MIB,
            heap_delta / MIB,
            self.took.as_millis()
        );
    }

    fn rss_delta(&self) -> f64 {
        self.rss.1 as f64 - self.rss.0 as f64
    }
}

async fn measure_envoy(
    bin: &Path,
    store: &ConfigStore,
    server: &AdsServer,
    ads: SocketAddr,
    full: Resources,
    clusters: usize,
    per: usize,
) -> Side {
    let dir = std::env::temp_dir().join(format!("mesh-xds-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let envoy = Envoy::start(bin, &dir, ads).await;
    // Idle: LIVE on the empty config; let its startup settle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = (
        vm_rss(&envoy.pid()),
        envoy.stat_sum("^server.memory_allocated$").await as i64,
    );

    let start = Instant::now();
    let v = store
        .publish(SourceId::new("bench"), full)
        .expect("publish");
    server.wait_for_version(v.0).await;
    let want_endpoints = (clusters * per) as u64 + 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active = envoy.stat_sum("^cluster_manager.active_clusters$").await;
        let warming = envoy.stat_sum("^cluster_manager.warming_clusters$").await;
        let listeners = envoy
            .stat_sum("^listener_manager.total_listeners_active$")
            .await;
        if active == clusters as u64 + 1 && warming == 0 && listeners == 1 {
            let members = envoy.stat_sum("membership_total$").await;
            if members == want_endpoints {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "envoy did not load the config in 120 s: {active} active, {warming} warming, \
             {listeners} listeners; nacks {:?}\n{}",
            server.nacks(),
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    assert_eq!(server.nack_count(), 0, "envoy nacked: {:?}", server.nacks());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let loaded = (
        vm_rss(&envoy.pid()),
        envoy.stat_sum("^server.memory_allocated$").await as i64,
    );
    drop(envoy);
    let _ = std::fs::remove_dir_all(&dir);
    Side {
        name: format!("Envoy {} (--concurrency 1)", Envoy::version(bin)),
        rss: (idle.0, loaded.0),
        heap: (idle.1, loaded.1),
        took,
        model: None,
    }
}

fn measure_ours(ads: SocketAddr, listener: &str) -> Side {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_ENV, format!("{ads} {listener}"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {text}");
    let nums: Vec<i64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {text}"))
        .split_whitespace()
        .map(|n| n.parse().expect("number"))
        .collect();
    Side {
        name: "mesh XdsClient + ConfigStore".into(),
        rss: (nums[0] as u64, nums[1] as u64),
        heap: (nums[2], nums[3]),
        took: Duration::from_millis(nums[4] as u64),
        model: Some(nums[5]),
    }
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let (clusters, per) = (
        env_or("MESH_XDS_CLUSTERS", 1000),
        env_or("MESH_XDS_ENDPOINTS", 100),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let store = ConfigStore::new();
        let server = AdsServer::new(&store);
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ads = tcp.local_addr().expect("addr");
        tokio::spawn(server.clone().serve(tcp, std::future::pending()));
        let full = resources(port, clusters, per);
        let listener = format!("svc0.bench:{port}");

        println!(
            "xDS memory: {clusters} clusters x {per} endpoints (EDS), one listener and route \
             table, from one ADS server on loopback"
        );
        let envoy = match envoy_bin() {
            Some(bin) => {
                Some(measure_envoy(&bin, &store, &server, ads, full.clone(), clusters, per).await)
            }
            None => {
                println!("Envoy: not found (set ENVOY_BIN); our side only");
                store
                    .publish(SourceId::new("bench"), full.clone())
                    .expect("publish");
                None
            }
        };
        server.wait_for_version(store.version().0).await;
        let served = server.current();
        let bytes = |m: &std::collections::BTreeMap<String, mesh_xds::encode::EncodedResource>| {
            m.values().map(|r| r.any.value.len()).sum::<usize>() as f64 / MIB
        };
        println!(
            "served, protobuf-encoded: EDS {:.1} MiB, CDS {:.1} MiB, RDS {:.1} MiB",
            bytes(&served.endpoints),
            bytes(&served.clusters),
            bytes(&served.routes)
        );
        let ours = tokio::task::spawn_blocking(move || measure_ours(ads, &listener))
            .await
            .expect("child");

        println!(
            "\n{:<34} {:>9} {:>9} {:>9} {:>10} {:>9}",
            "process", "idle MiB", "full MiB", "RSS +MiB", "heap +MiB", "load ms"
        );
        ours.row();
        if let Some(e) = &envoy {
            e.row();
            println!(
                "\nEnvoy / ours, RSS added by the config: {:.1}x",
                e.rss_delta() / ours.rss_delta().max(1.0)
            );
        }
        let n = (clusters * per) as f64;
        println!(
            "ours per endpoint: {:.0} bytes of heap, {:.0} bytes of RSS; the same config built \
             directly as mesh-core data: {:.1} MiB of heap ({:.0} bytes per endpoint)",
            (ours.heap.1 - ours.heap.0) as f64 / n,
            ours.rss_delta() / n,
            ours.model.unwrap_or(0) as f64 / MIB,
            ours.model.unwrap_or(0) as f64 / n
        );
        if let Some(e) = &envoy {
            println!(
                "Envoy per endpoint: {:.0} bytes of heap (tcmalloc's server.memory_allocated), \
                 {:.0} bytes of RSS",
                (e.heap.1 - e.heap.0) as f64 / n,
                e.rss_delta() / n
            );
        }
    });
}
