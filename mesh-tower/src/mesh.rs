//! The process-wide mesh handle.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::{ConfigStore, Version};
use mesh_identity::CredentialStore;
use tokio::sync::watch;

use crate::access_log::AccessLogConfig;
use crate::client::{InvalidTarget, MeshClient};
use crate::metrics::IstioMetrics;
use crate::ratelimit::{ServerRateLimitLayer, Workload};
use crate::runtime::Runtime;
use crate::server::{MeshServerLayer, ServerStats};
use crate::shaping::{MirrorStats, Mirrors};

/// The mesh of one process: its config store and the runtime state every
/// client and server shares.
///
/// Create one per process, from the process's [`ConfigStore`], and make
/// every client and server from it: clients of the same cluster then share
/// connection pools, load gauges and (in later layers) breakers and retry
/// budgets, as a sidecar shares them across the application's calls.
/// Cloning is cheap and gives another handle to the same mesh.
///
/// The mesh follows the store: a task owned by the mesh rebuilds the
/// runtime for each new snapshot (keeping per-endpoint state, see the
/// `runtime` module docs) and swaps it in atomically. The task ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    store: ConfigStore,
    credentials: Option<Arc<CredentialStore>>,
    runtime: Arc<ArcSwap<Runtime>>,
    applied: watch::Receiver<Version>,
    server_stats: Arc<ServerStats>,
    metrics: Arc<IstioMetrics>,
    access_log: AccessLogConfig,
    task: tokio::task::JoinHandle<()>,
    mirrors: Mirrors,
    mirror_task: tokio::task::JoinHandle<()>,
    #[cfg(feature = "xds")]
    xds: Option<mesh_xds::XdsClient>,
    span_exporter: Option<crate::trace::OtlpExporter>,
    telemetry: Arc<crate::trace::telemetry::TelemetryState>,
}

/// A handle that does not keep the mesh alive (for callbacks the mesh's
/// own state may outlive, such as OpenTelemetry's).
#[derive(Clone)]
pub(crate) struct WeakMesh(std::sync::Weak<Inner>);

impl WeakMesh {
    /// The mesh, if a handle to it still exists.
    pub(crate) fn upgrade(&self) -> Option<Mesh> {
        Some(Mesh {
            inner: self.0.upgrade()?,
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
        self.mirror_task.abort();
    }
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("applied_version", &self.applied_version())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// A mesh following `store`.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn new(store: ConfigStore) -> Self {
        Self::with_node(store, Node::default())
    }

    /// A mesh following `store` for a process running at `node` (its
    /// locality and labels), which locality-aware balancing
    /// (`localityLbSetting`, Istio's default failover) prefers endpoints
    /// near to. [`Mesh::new`] knows no locality: every endpoint is as near.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn with_node(store: ConfigStore, node: Node) -> Self {
        Self::builder(store).with_node(node).build()
    }

    /// A builder for a mesh following `store`, to set where the process
    /// runs ([`MeshBuilder::with_node`]) and its workload identity
    /// ([`MeshBuilder::with_credentials`]).
    pub fn builder(store: ConfigStore) -> MeshBuilder {
        MeshBuilder {
            store,
            node: Node::default(),
            credentials: None,
            access_log: AccessLogConfig::new(),
            #[cfg(feature = "xds")]
            xds: None,
            span_exporter: None,
            workload: None,
        }
    }

    fn build(builder: MeshBuilder) -> Self {
        let MeshBuilder {
            store,
            node,
            credentials,
            access_log,
            #[cfg(feature = "xds")]
            xds,
            span_exporter,
            workload,
        } = builder;
        let metrics = Arc::new(IstioMetrics::new(&node.workload));
        if let Some(c) = &credentials {
            metrics.set_identity(Arc::clone(c));
        }
        let mut changes = store.subscribe();
        let first_snapshot = changes.borrow_and_update().clone();
        let telemetry = Arc::new(crate::trace::telemetry::TelemetryState::new(
            workload,
            &first_snapshot,
        ));
        let first = Runtime::build(first_snapshot, &Runtime::empty(node, credentials.clone()));
        let (applied_tx, applied) = watch::channel(first.version());
        let runtime = Arc::new(ArcSwap::from_pointee(first));
        let task = tokio::spawn({
            let runtime = Arc::clone(&runtime);
            let telemetry = Arc::clone(&telemetry);
            async move {
                // Ends when the store is gone or the mesh aborts the task.
                while changes.changed().await.is_ok() {
                    let snapshot = changes.borrow_and_update().clone();
                    telemetry.update(&snapshot);
                    let next = Runtime::build(snapshot, &runtime.load());
                    let version = next.version();
                    runtime.store(Arc::new(next));
                    tracing::debug!(%version, "mesh runtime updated");
                    applied_tx.send_replace(version);
                }
            }
        });
        let (mirrors, mirror_task) = Mirrors::spawn();
        Self {
            inner: Arc::new(Inner {
                store,
                credentials,
                runtime,
                applied,
                server_stats: Arc::default(),
                metrics,
                access_log,
                task,
                mirrors,
                mirror_task,
                #[cfg(feature = "xds")]
                xds,
                span_exporter,
                telemetry,
            }),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakMesh {
        WeakMesh(Arc::downgrade(&self.inner))
    }

    #[cfg(feature = "xds")]
    pub(crate) fn xds_client(&self) -> Option<&mesh_xds::XdsClient> {
        self.inner.xds.as_ref()
    }

    /// The store the mesh follows.
    pub fn store(&self) -> &ConfigStore {
        &self.inner.store
    }

    /// The workload's credentials, when the mesh was built with them.
    pub fn credentials(&self) -> Option<&Arc<CredentialStore>> {
        self.inner.credentials.as_ref()
    }

    /// The store version the mesh's clients currently route by.
    pub fn applied_version(&self) -> Version {
        *self.inner.applied.borrow()
    }

    /// Waits until the clients route by `version` or a later one.
    pub async fn applied(&self, version: Version) {
        let mut rx = self.inner.applied.clone();
        // The sender lives in the mesh's task, which lives as long as `self`.
        let _ = rx.wait_for(|v| *v >= version).await;
    }

    /// A client that routes each request by its own authority (`Host` or
    /// the URI's), like an application behind a sidecar.
    pub fn client(&self) -> MeshClient {
        MeshClient::new(self.clone(), None)
    }

    /// A client for one target: `http://reviews:9080` (routed as if every
    /// request were addressed there) or `xds:///<listener>` (routed through
    /// the named listener, as gRPC's xDS resolver does). Use it as the
    /// transport of a tonic client, whose requests carry no authority.
    pub fn client_for(&self, target: &str) -> Result<MeshClient, InvalidTarget> {
        Ok(MeshClient::new(self.clone(), Some(target.parse()?)))
    }

    /// The server-side layer, for `axum::Router::layer` and
    /// `tonic::transport::Server::builder().layer(..)`.
    pub fn server_layer(&self) -> MeshServerLayer {
        let layer = MeshServerLayer::with_stats(Arc::clone(&self.inner.server_stats))
            .with_metrics(Arc::clone(&self.inner.metrics))
            .with_access_log(self.inner.access_log)
            .with_telemetry(Arc::clone(&self.inner.telemetry));
        match &self.inner.span_exporter {
            Some(e) => layer.with_span_exporter(e.clone()),
            None => layer,
        }
    }

    pub(crate) fn telemetry(&self) -> &Arc<crate::trace::telemetry::TelemetryState> {
        &self.inner.telemetry
    }

    /// Where the spans of sampled requests go
    /// ([`MeshBuilder::with_span_exporter`]).
    pub fn span_exporter(&self) -> Option<&crate::trace::OtlpExporter> {
        self.inner.span_exporter.as_ref()
    }

    /// Request counts of every server layer made by [`server_layer`](Self::server_layer).
    pub fn server_stats(&self) -> &ServerStats {
        &self.inner.server_stats
    }

    /// The mesh's mirror worker: where every client's mirrored copies go
    /// (bounded, owned by the mesh; see [`shaping`](crate::shaping)).
    pub fn mirrors(&self) -> &Mirrors {
        &self.inner.mirrors
    }

    /// The server-side rate limit layer for `workload`: each inbound
    /// request takes a token from the bucket of the first server listener
    /// (by name) whose port is the workload's (or 0) and whose workload
    /// selector its labels satisfy, read live from the config (Istio
    /// `EnvoyFilter` `SIDECAR_INBOUND` local rate limits). Put it inside
    /// [`server_layer`](Self::server_layer) so that limited requests are
    /// counted and get a request id:
    /// `router.layer(mesh.server_rate_limit(w)).layer(mesh.server_layer())`.
    pub fn server_rate_limit(&self, workload: Workload) -> ServerRateLimitLayer {
        ServerRateLimitLayer::for_workload(self.clone(), workload)
    }

    /// Which requests and fields the access log events of this mesh's
    /// clients and server layers carry ([`MeshBuilder::with_access_log`]).
    pub fn access_log(&self) -> &AccessLogConfig {
        &self.inner.access_log
    }

    /// Istio's standard metrics, recorded by every client and server
    /// layer of this mesh ([`metrics`](crate::metrics)).
    pub fn metrics(&self) -> &Arc<IstioMetrics> {
        &self.inner.metrics
    }

    /// Every metric of this mesh in the Prometheus text format: Istio's
    /// standard metrics, then the mesh's internal counters per cluster
    /// (retries, retry budget refusals, circuit breaker overflows,
    /// ejections), mirroring and per-route server counts. Rate-limited
    /// requests and injected faults are the `RL` and `FI`
    /// `response_flags` of `istio_requests_total`, as in Istio.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        let rt = self.inner.runtime.load();
        let mut clusters: Vec<_> = rt.clusters.values().collect();
        clusters.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        self.inner
            .metrics
            .render(clusters.iter().map(|c| &**c.istio()), &mut out);
        crate::metrics::render_mesh(self, &mut out);
        out
    }

    pub(crate) fn cluster_names(&self) -> Vec<mesh_core::ClusterName> {
        let mut names: Vec<_> = self.inner.runtime.load().clusters.keys().cloned().collect();
        names.sort();
        names
    }

    pub(crate) fn retry_counts(&self, cluster: &str) -> Option<(u64, u64)> {
        let rt = self.inner.runtime.load();
        let s = rt.clusters.get(cluster)?.retry_state();
        Some((s.retries(), s.refused()))
    }

    /// Counters of mirrored requests.
    pub fn mirror_stats(&self) -> &MirrorStats {
        self.inner.mirrors.stats()
    }

    pub(crate) fn runtime(&self) -> &ArcSwap<Runtime> {
        &self.inner.runtime
    }

    /// Endpoint addresses and in-flight counts of a cluster, as the runtime
    /// holds them now.
    pub fn cluster_endpoints(&self, cluster: &str) -> Option<Vec<EndpointStatus>> {
        let rt = self.inner.runtime.load();
        let c = rt.clusters.get(cluster)?;
        Some(
            c.endpoints()
                .iter()
                .map(|e| EndpointStatus {
                    address: e.address().to_string(),
                    weight: e.config().weight,
                    health: e.config().health,
                    in_flight: e.in_flight(),
                    ejected: e.outlier().is_ejected(),
                    ready: e.is_ready(),
                    connect_failures: e.connect_failures(),
                    http2_connections: e.connections(),
                    load_score: c.load_score(e),
                })
                .collect(),
        )
    }
}

impl Mesh {
    /// The counters of a cluster: requests in flight and waiting under its
    /// circuit breaker, and the requests its limits failed fast.
    pub fn cluster_stats(&self, cluster: &str) -> Option<ClusterStats> {
        let rt = self.inner.runtime.load();
        let c = rt.clusters.get(cluster)?;
        let b = c.breaker();
        let (detector, outliers) = c.outlier();
        Some(ClusterStats {
            requests_in_flight: b.requests(),
            requests_pending: b.pending(),
            overflow_requests: b.stats().overflow_requests(),
            overflow_pending: b.stats().overflow_pending(),
            ejected: detector.map_or(0, |d| d.ejected()),
            ejections_total: outliers.ejections_total(),
            ejections_overflow: outliers.overflow(),
        })
    }
}

/// A cluster's counters, as [`Mesh::cluster_stats`] reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Requests admitted by the circuit breaker whose responses have not
    /// finished.
    pub requests_in_flight: u64,
    /// Requests waiting for an HTTP/1.1 connection.
    pub requests_pending: u64,
    /// Requests failed fast at `http2MaxRequests` (Envoy
    /// `upstream_rq_pending_overflow`).
    pub overflow_requests: u64,
    /// Requests failed fast at `http1MaxPendingRequests`.
    pub overflow_pending: u64,
    /// Endpoints ejected by outlier detection now.
    pub ejected: u32,
    /// Ejections so far (Envoy `ejections_enforced_total`).
    pub ejections_total: u64,
    /// Ejections skipped at `maxEjectionPercent` (Envoy
    /// `ejections_overflow`).
    pub ejections_overflow: u64,
}

/// Builds a [`Mesh`] with options: `Mesh::builder(store)`.
///
/// ```no_run
/// # async fn f(store: mesh_core::ConfigStore, creds: std::sync::Arc<mesh_identity::CredentialStore>) {
/// let mesh = mesh_tower::Mesh::builder(store)
///     .with_credentials(creds)
///     .build();
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct MeshBuilder {
    store: ConfigStore,
    node: Node,
    credentials: Option<Arc<CredentialStore>>,
    access_log: AccessLogConfig,
    #[cfg(feature = "xds")]
    xds: Option<mesh_xds::XdsClient>,
    span_exporter: Option<crate::trace::OtlpExporter>,
    workload: Option<mesh_core::model::Workload>,
}

impl MeshBuilder {
    /// The namespace and labels of the workload this process runs, which
    /// the selectors of `Telemetry` resources match (namespace- and
    /// workload-level policies). Without it only mesh-wide `Telemetry`
    /// (root namespace, no selector) applies.
    pub fn with_workload_scope(mut self, workload: mesh_core::model::Workload) -> Self {
        self.workload = Some(workload);
        self
    }

    /// Records the spans of sampled requests (server, logical call, each
    /// attempt) and exports them through `exporter`; see
    /// [`trace`](crate::trace). Without it no span is recorded (trace
    /// context is still propagated).
    pub fn with_span_exporter(mut self, exporter: crate::trace::OtlpExporter) -> Self {
        self.span_exporter = Some(exporter);
        self
    }

    /// Where the process runs (see [`Mesh::with_node`]).
    pub fn with_node(mut self, node: Node) -> Self {
        self.node = node;
        self
    }

    /// The workload's identity: the SVID `ISTIO_MUTUAL` clusters present
    /// and the trust bundle they verify servers with. The store is read
    /// per handshake, so rotating its credentials needs nothing else.
    /// Without it, requests to an `ISTIO_MUTUAL` cluster fail with 503
    /// (no workload identity), never in plaintext.
    pub fn with_credentials(mut self, credentials: Arc<CredentialStore>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Samples and selects the fields of the access log events of the
    /// mesh's clients and server layers (default: every request, every
    /// field; the events exist only when a subscriber enables
    /// [`access_log::TARGET`](crate::access_log::TARGET)).
    pub fn with_access_log(mut self, config: AccessLogConfig) -> Self {
        self.access_log = config;
        self
    }

    /// The process's one ADS subscriber (feature `xds`): it must publish
    /// into the store the mesh follows. Clients of `xds:///<listener>`
    /// targets then watch their listener on it, and errors that its state
    /// causes name the resource and the node (see [`xds`](crate::xds)).
    #[cfg(feature = "xds")]
    pub fn with_xds(mut self, client: mesh_xds::XdsClient) -> Self {
        self.xds = Some(client);
        self
    }

    /// The mesh.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, as `tokio::spawn` does.
    pub fn build(self) -> Mesh {
        Mesh::build(self)
    }
}

/// Where this process runs: the locality and labels locality-aware
/// balancing compares endpoints with (in Kubernetes, the node's
/// `topology.kubernetes.io/region` / `zone` and the pod's labels; Envoy's
/// bootstrap `node.locality`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Node {
    /// The locality.
    pub locality: mesh_core::model::Locality,
    /// The labels `failoverPriority` compares.
    pub labels: mesh_core::model::Labels,
    /// The workload name (Istio's `source_workload` of its calls and
    /// `destination_workload` of the requests it serves); empty is
    /// `unknown`.
    pub workload: String,
}

impl Node {
    /// A node at `locality` (`region/zone/subzone`) with `labels`.
    pub fn new(locality: &str, labels: mesh_core::model::Labels) -> Self {
        Self {
            locality: mesh_core::model::Locality::parse(locality),
            labels,
            workload: String::new(),
        }
    }

    /// The node, running the workload `name` (the metrics' workload label).
    pub fn with_workload(mut self, name: &str) -> Self {
        self.workload = name.to_owned();
        self
    }
}

/// An endpoint as the runtime sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStatus {
    /// The address.
    pub address: String,
    /// The load balancing weight from the config.
    pub weight: u32,
    /// The health its source reports (EDS `health_status`).
    pub health: mesh_core::model::Health,
    /// Requests whose responses have not finished.
    pub in_flight: u64,
    /// Whether outlier detection ejected it: the balancer skips it
    /// (unless the cluster is in panic).
    pub ejected: bool,
    /// Whether it can take requests: false for a while (1 s per
    /// consecutive connect failure, at most 30 s) after it failed to
    /// connect; the balancer avoids it while others are ready.
    pub ready: bool,
    /// Consecutive failed connects (reset by any response).
    pub connect_failures: u32,
    /// For an HTTP/2 endpoint, the connections open now and opened so far.
    pub http2_connections: Option<(usize, u64)>,
    /// The balancer's load score, lower preferred: the peak EWMA cost
    /// under `PEAK_EWMA`, else requests in flight per unit of weight.
    pub load_score: f64,
}
