//! A live xDS setup on real loopback sockets, for tests that change the
//! control plane while clients send: the xDS counterpart of the file
//! reloads in `tests/hot_reload.rs`.
//!
//! - Backends: [`start_backends`] starts loopback HTTP servers that answer
//!   every request with their name (the `x-version` header and the body,
//!   `mesh_examples::backends::Reviews`).
//! - [`ControlPlane`]: a control-plane [`ConfigStore`] the test edits
//!   (Istio YAML through the file source, or model values), served by an
//!   [`AdsServer`] on `127.0.0.1:<port>`. It can withhold clusters (their
//!   CDS and EDS) from what it serves, to push a route before the cluster
//!   it names ([`ControlPlane::withhold`]). Every value served has a new
//!   version, which is the SotW `version_info` and what
//!   [`ControlPlane::wait_acked`] compares the clients' ACKs with.
//! - [`XdsMesh`]: the process under test: an [`XdsClient`] (SotW or delta,
//!   [`client_config`]) publishing into its own store, a [`Mesh`] over it
//!   `with_xds`, and a client of `xds:///<listener>`.
//! - [`Load`]: `K` tasks sending continuously through a mesh client,
//!   recording per request its start, the mesh's applied version at the
//!   start, and the backend that answered or the error, in a bounded
//!   buffer; failures are counted even when the buffer is full.
//!
//! Waits are on events (store changes, completions) or on polled
//! conditions, always under an overall timeout ([`LIMIT`]); nothing sleeps
//! to synchronise.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::file::FileSource;
use mesh_core::{ConfigStore, Resources, Snapshot, Version};
use mesh_examples::backends::Reviews;
use mesh_tower::{Mesh, MeshClient};
use mesh_xds::config::{ClientConfig, Protocol};
use mesh_xds::encode::EncodedSnapshot;
use mesh_xds::server::AdsServer;
use mesh_xds::{TypeUrl, XdsClient};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::{Outcome, get};

/// The node ID of the clients [`client_config`] makes.
pub const NODE_ID: &str = "xds-harness-client";

/// The overall limit of every wait in the harness: generous, since a
/// loaded 2-core CI machine can be slow; a test that needs it has failed.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The store source the control plane publishes under.
const CONTROL_PLANE_SOURCE: &str = "control-plane";

/// Starts one loopback HTTP backend per name; each answers with its name.
pub async fn start_backends(names: &[&str]) -> Vec<Reviews> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(Reviews::start(name).await.expect("a loopback backend"));
    }
    out
}

/// Waits until `cond` holds, checking every millisecond; panics naming
/// `what` after [`LIMIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// === ControlPlane ===

/// What the control plane serves: a version per value, and the clusters
/// held back.
#[derive(Debug, Default)]
struct Served {
    version: u64,
    withheld: BTreeSet<String>,
}

/// A control plane on a real port: a [`ConfigStore`] the test edits,
/// served over ADS (SotW and delta) by an [`AdsServer`]. Stops serving
/// when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    store: ConfigStore,
    server: AdsServer,
    addr: SocketAddr,
    served: Mutex<Served>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ControlPlane {
    /// Starts serving an empty config on `127.0.0.1:<free port>`.
    pub async fn start() -> Self {
        let store = ConfigStore::new();
        let server = AdsServer::from_snapshot(EncodedSnapshot::encode(&store.snapshot()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            store,
            server,
            addr,
            served: Mutex::new(Served::default()),
            shutdown: Some(shutdown),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URI, for [`client_config`].
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The control-plane store (read it; edit through
    /// [`publish`](Self::publish) so that the change is served).
    pub fn store(&self) -> &ConfigStore {
        &self.store
    }

    /// The ADS server (streams, ACKs, NACKs).
    pub fn server(&self) -> &AdsServer {
        &self.server
    }

    /// The version of what is served now.
    pub fn served_version(&self) -> u64 {
        self.lock().version
    }

    /// Replaces the config with `yaml` (Istio kinds, through the file
    /// source) and serves it; returns the served version.
    ///
    /// # Panics
    ///
    /// When the YAML is invalid or the store rejects it.
    pub fn publish_yaml(&self, yaml: &str) -> u64 {
        let translation = match FileSource::parse_str("mesh.yaml", yaml) {
            Ok(t) => t,
            Err(e) => panic!("invalid control-plane config:\n{e}"),
        };
        self.publish(translation.resources)
    }

    /// Replaces the config with `resources` and serves it; returns the
    /// served version.
    ///
    /// # Panics
    ///
    /// When the store rejects the config.
    pub fn publish(&self, resources: Resources) -> u64 {
        let mut served = self.lock();
        if let Err(e) = self.store.publish(CONTROL_PLANE_SOURCE.into(), resources) {
            panic!("control-plane config rejected: {e}");
        }
        self.serve(&mut served)
    }

    /// From now on, serves neither the CDS nor the EDS resource of
    /// `clusters` (the route tables naming them still go out); returns the
    /// served version.
    pub fn withhold(&self, clusters: &[&str]) -> u64 {
        let mut served = self.lock();
        served
            .withheld
            .extend(clusters.iter().map(|c| (*c).to_owned()));
        self.serve(&mut served)
    }

    /// Serves every withheld cluster again; returns the served version.
    pub fn release(&self) -> u64 {
        let mut served = self.lock();
        served.withheld.clear();
        self.serve(&mut served)
    }

    /// Waits until the stream of `node` has ACKed version `version` or a
    /// later one of `type_url`.
    pub async fn wait_acked(&self, node: &str, type_url: TypeUrl, version: u64) {
        eventually(
            &format!("{node} to ACK {} version {version}", type_url.as_str()),
            || self.acked(node, type_url).is_some_and(|v| v >= version),
        )
        .await;
    }

    /// The last version of `type_url` the stream of `node` ACKed.
    pub fn acked(&self, node: &str, type_url: TypeUrl) -> Option<u64> {
        self.server
            .streams()
            .iter()
            .filter(|s| s.node == node)
            .filter_map(|s| s.acked.get(type_url.as_str())?.parse().ok())
            .max()
    }

    fn serve(&self, served: &mut Served) -> u64 {
        served.version += 1;
        let mut encoded = EncodedSnapshot::encode(&self.store.snapshot());
        encoded.version = served.version;
        for c in &served.withheld {
            encoded.clusters.remove(c);
            encoded.endpoints.remove(c);
        }
        self.server.set_snapshot(encoded);
        served.version
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// === XdsMesh ===

/// A client config for the server at `uri` speaking `protocol`, as
/// [`NODE_ID`], with short connect timeout and backoff so that tests of
/// reconnection stay fast (tune the fields further as needed).
pub fn client_config(uri: &str, protocol: Protocol) -> ClientConfig {
    let mut config = ClientConfig::new(uri, NODE_ID);
    config.servers[0].protocol = protocol;
    config.connect_timeout = Duration::from_secs(2);
    config.backoff.base = Duration::from_millis(50);
    config.backoff.max = Duration::from_millis(500);
    config
}

/// The process under test: an xDS client, its store, a mesh over both,
/// and a client of one `xds:///` target.
pub struct XdsMesh {
    mesh: Mesh,
    client: MeshClient,
}

impl XdsMesh {
    /// Starts an [`XdsClient`] with `config` into a new store, a [`Mesh`]
    /// over it, and a client of `xds:///<listener>` (which watches the
    /// listener while it lives).
    pub fn start(config: ClientConfig, listener: &str) -> Self {
        let store = ConfigStore::new();
        let xds = XdsClient::start(config, store.clone());
        let mesh = Mesh::builder(store).with_xds(xds).build();
        let client = mesh
            .client_for(&format!("xds:///{listener}"))
            .expect("a valid xds target");
        Self { mesh, client }
    }

    /// The mesh.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The client of the target.
    pub fn client(&self) -> &MeshClient {
        &self.client
    }

    /// The xDS client.
    pub fn xds(&self) -> &XdsClient {
        self.mesh.xds().expect("built with_xds")
    }

    /// The store the xDS client publishes into.
    pub fn store(&self) -> &ConfigStore {
        self.mesh.store()
    }

    /// Waits until the store's snapshot satisfies `pred` and the mesh's
    /// clients route by it; returns the version that satisfied it (a
    /// version no earlier than the first one that did). Panics naming
    /// `what` after [`LIMIT`].
    pub async fn wait_config(&self, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Version {
        let mut changes = self.store().subscribe();
        let version = tokio::time::timeout(LIMIT, async {
            loop {
                let snapshot = Arc::clone(&changes.borrow_and_update());
                if pred(&snapshot) {
                    break snapshot.version();
                }
                changes.changed().await.expect("the store lives");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for the client config: {what}"));
        tokio::time::timeout(LIMIT, self.mesh.applied(version))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for the mesh to apply {what}"));
        version
    }
}

// === Load ===

/// One request of a [`Load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent.
    pub started: Instant,
    /// When its response was read (or it failed).
    pub finished: Instant,
    /// The store version the mesh routed by when it was sent; the request
    /// is routed by this version or a later one, up to
    /// [`finished_version`](Self::finished_version).
    pub version: Version,
    /// The store version the mesh routed by when the response was read.
    pub finished_version: Version,
    /// The backend that answered 200, or what went wrong.
    pub result: Result<String, String>,
}

/// What a stopped [`Load`] recorded.
#[derive(Debug)]
pub struct LoadReport {
    /// The samples kept, by start.
    pub samples: Vec<Sample>,
    /// Requests completed (kept or not).
    pub completed: u64,
    /// Requests failed (kept or not).
    pub failures: u64,
    /// Samples not kept because the buffer was full.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failures: AtomicU64,
    stop: AtomicBool,
    progress: Notify,
}

/// `K` tasks sending `GET path` continuously through one mesh client
/// until [`stop`](Self::stop).
pub struct Load {
    counters: Arc<Counters>,
    tasks: tokio::task::JoinSet<(Vec<Sample>, u64)>,
}

/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl Load {
    /// Starts `clients` tasks sending `GET path` through `client` (a
    /// client of `mesh`), keeping at most `capacity` samples in all.
    pub fn start(
        mesh: &Mesh,
        client: &MeshClient,
        path: &str,
        clients: usize,
        capacity: usize,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let per_task = capacity / clients.max(1);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (mesh, client, counters, path) = (
                mesh.clone(),
                client.clone(),
                Arc::clone(&counters),
                path.to_owned(),
            );
            tasks.spawn(async move {
                let mut samples = Vec::with_capacity(per_task);
                let mut dropped = 0;
                while !counters.stop.load(Ordering::Relaxed) {
                    let version = mesh.applied_version();
                    let started = Instant::now();
                    let outcome = tokio::time::timeout(REQUEST_TIMEOUT, get(&client, &path, &[]))
                        .await
                        .unwrap_or_else(|_| Outcome::Error("timed out".into()));
                    let result = match outcome {
                        Outcome::Version(name, 200) => Ok(name),
                        Outcome::Version(name, status) => Err(format!("{name}: status {status}")),
                        Outcome::Error(e) => Err(e),
                    };
                    let failed = result.is_err();
                    if failed {
                        counters.failures.fetch_add(1, Ordering::Relaxed);
                    }
                    if samples.len() < per_task {
                        samples.push(Sample {
                            started,
                            finished: Instant::now(),
                            version,
                            finished_version: mesh.applied_version(),
                            result,
                        });
                    } else {
                        dropped += 1;
                    }
                    counters.completed.fetch_add(1, Ordering::Relaxed);
                    counters.progress.notify_waiters();
                    if failed {
                        // A call that fails before any I/O never returns
                        // Pending: yield, or the senders starve the timers
                        // and the test body (and cannot even be aborted).
                        tokio::task::yield_now().await;
                    }
                }
                (samples, dropped)
            });
        }
        Self { counters, tasks }
    }

    /// Requests completed so far.
    pub fn completed(&self) -> u64 {
        self.counters.completed.load(Ordering::Relaxed)
    }

    /// Requests failed so far.
    pub fn failures(&self) -> u64 {
        self.counters.failures.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests completed than when called.
    pub async fn wait_more(&self, n: u64) {
        let target = self.completed() + n;
        tokio::time::timeout(LIMIT, async {
            loop {
                let progress = self.counters.progress.notified();
                if self.completed() >= target {
                    break;
                }
                progress.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {n} more requests"));
    }

    /// Stops the tasks after their current request and returns what they
    /// recorded.
    pub async fn stop(mut self) -> LoadReport {
        self.counters.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        let mut dropped = 0;
        while let Some(r) = self.tasks.join_next().await {
            let (s, d) = r.expect("a load task does not panic");
            samples.extend(s);
            dropped += d;
        }
        samples.sort_by_key(|s| s.started);
        LoadReport {
            samples,
            completed: self.completed(),
            failures: self.failures(),
            dropped,
        }
    }
}
