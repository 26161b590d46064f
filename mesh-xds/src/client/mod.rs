//! The ADS client: one subscriber per process (State of the World or
//! delta), its cache, the LDS → RDS → CDS → EDS cascade, and the per-resource
//! status.
//!
//! # Design
//!
//! One task per client does all protocol work: it owns the stream, the
//! cache (module `state`) and the cascade (module `cascade`), and it publishes
//! complete configs to the [`ConfigStore`] under the source `xds`.
//! Handles ([`XdsClient`], [`Watch`]) talk to it through a
//! [`std::sync::Mutex`] held only for short, non-async sections (the
//! watched listener names, the status view) and a
//! [`tokio::sync::Notify`]: the task never awaits anything a handle must
//! drain and handles never wait for the task (A4.9, grpc-rust#2778), and
//! no queue grows without bound (interest is a counted set, not a queue of
//! commands). The task reads the next response only after the previous
//! one was fully applied and published (A1.13).
//!
//! The task ends when the last handle (client or watch) is dropped, or on
//! [`XdsClient::shutdown`].

mod cache;
mod cascade;
mod metrics;
mod ratelimit;
mod sds;
mod state;
mod transport;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use futures::future::BoxFuture;
use mesh_core::{ConfigStore, SourceId};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub use metrics::{CacheState, XdsClientMetrics, XdsServerMetrics, resource_type_label};
pub use sds::{REDACTED, SdsIdentityStats, SdsWatch};
pub use transport::{ConnectError, Connector};

use crate::TypeUrl;
use crate::config::{ClientConfig, Protocol, SdsIdentity};
use crate::resource::{DecodeContext, DecodeError, Decoded};
use crate::status::ResourceStatus;
use metrics::Metrics;
use ratelimit::RequestLimiter;
use state::{Request, Response, State};

/// Decodes one resource (the default is [`crate::translate::decode`]);
/// replaceable for tests of the protocol alone.
pub type Decoder =
    Arc<dyn Fn(TypeUrl, &Any, &DecodeContext) -> Result<Decoded, DecodeError> + Send + Sync>;

/// The store source the client publishes under.
pub const SOURCE: &str = "xds";

/// How many requests may wait for the transport on one stream. The task
/// sends at most one request per type per event, and the transport drains
/// the queue on its own task, so a small bound suffices.
const REQUEST_QUEUE: usize = 16;

/// A4.4: a stream that ended after a response is re-opened no sooner than
/// this long after it was opened, so a server that answers once and then
/// resets every stream is not hammered (gRFC A88 "open issues").
pub const MIN_STREAM_INTERVAL: Duration = Duration::from_secs(1);

/// Options beyond the [`ClientConfig`]: the test hooks.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// Makes the channel to a server; `None`: real connections to the
    /// configured URIs.
    pub connector: Option<Connector>,
    /// Decodes resources; `None`: [`crate::translate::decode`].
    pub decoder: Option<Decoder>,
}

/// A handle to the process's ADS client. Cloning gives another handle to
/// the same client.
#[derive(Clone)]
pub struct XdsClient {
    owner: Arc<Owner>,
}

/// A watch of one listener (client or server side). Dropping the last
/// watch of a name unsubscribes it and everything only it needed (A8.5).
pub struct Watch {
    owner: Arc<Owner>,
    name: String,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("name", &self.name).finish()
    }
}

impl Watch {
    /// The listener resource name watched.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.owner.shared.unwatch(&self.name);
    }
}

/// One resource for config dumps: type, name, value as received.
type RawEntry = (TypeUrl, String, Option<Arc<Any>>);

/// What the handles share with the task.
struct Shared {
    node: Node,
    inner: Mutex<Inner>,
    wake: Notify,
    metrics: Metrics,
}

#[derive(Default)]
struct Inner {
    /// Watched listener names with their counts.
    interest: BTreeMap<String, usize>,
    /// Bumped on every interest change.
    generation: u64,
    closed: bool,
    statuses: Arc<Vec<ResourceStatus>>,
    raw: Arc<Vec<RawEntry>>,
    /// SDS identities watched ([`XdsClient::watch_identity`]), by watch.
    identities: Vec<(u64, Arc<sds::Sink>)>,
    next_identity: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it;
        // the data (counts and a status view) stays consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch(&self, name: &str) {
        {
            let mut inner = self.lock();
            *inner.interest.entry(name.to_owned()).or_insert(0) += 1;
            inner.generation += 1;
        }
        self.wake.notify_one();
    }

    fn unwatch(&self, name: &str) {
        {
            let mut inner = self.lock();
            if let Some(n) = inner.interest.get_mut(name) {
                *n -= 1;
                if *n == 0 {
                    inner.interest.remove(name);
                }
            }
            inner.generation += 1;
        }
        self.wake.notify_one();
    }

    fn add_identity(&self, sink: Arc<sds::Sink>) -> u64 {
        let id = {
            let mut inner = self.lock();
            let id = inner.next_identity;
            inner.next_identity += 1;
            inner.identities.push((id, sink));
            inner.generation += 1;
            id
        };
        self.wake.notify_one();
        id
    }

    fn remove_identity(&self, id: u64) {
        {
            let mut inner = self.lock();
            inner.identities.retain(|(i, _)| *i != id);
            inner.generation += 1;
        }
        self.wake.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

/// Owned by every handle; the last one to go stops the task.
struct Owner {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    template: Option<String>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl std::fmt::Debug for XdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsClient")
            .field("node", &self.owner.shared.node.id)
            .finish_non_exhaustive()
    }
}

impl XdsClient {
    /// Starts the client: spawns its task on the current tokio runtime,
    /// which connects to the first server of `config` and watches
    /// `config.listeners`.
    pub fn start(config: ClientConfig, store: ConfigStore) -> XdsClient {
        Self::start_with(config, store, ClientOptions::default())
    }

    /// Like [`start`](Self::start), connecting through `connector` (the
    /// test hook for in-memory transports).
    pub fn start_with_connector(
        config: ClientConfig,
        store: ConfigStore,
        connector: Connector,
    ) -> XdsClient {
        Self::start_with(
            config,
            store,
            ClientOptions {
                connector: Some(connector),
                decoder: None,
            },
        )
    }

    /// Like [`start`](Self::start), with `options`.
    pub fn start_with(
        config: ClientConfig,
        store: ConfigStore,
        options: ClientOptions,
    ) -> XdsClient {
        let shared = Arc::new(Shared {
            node: config.node.clone(),
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            metrics: Metrics::new(&config.servers),
        });
        {
            let mut inner = shared.lock();
            for l in &config.listeners {
                // Held for the client's lifetime.
                *inner.interest.entry(l.clone()).or_insert(0) += 1;
            }
        }
        let decoder = options
            .decoder
            .unwrap_or_else(|| Arc::new(crate::translate::decode));
        let connector = options
            .connector
            .unwrap_or_else(transport::default_connector);
        let template = config.server_listener_resource_name_template.clone();
        let limiter = RequestLimiter::new(config.request_rate_limit);
        let task = Task {
            shared: Arc::clone(&shared),
            state: State::new(config, decoder),
            published: cascade::Published::default(),
            identities: Vec::new(),
            store,
            connector,
            generation: u64::MAX,
            limiter,
        };
        let handle = tokio::spawn(task.run());
        XdsClient {
            owner: Arc::new(Owner {
                shared,
                task: Mutex::new(Some(handle)),
                template,
            }),
        }
    }

    /// Watches the listener `name` (a client target `xds:///name` resolves
    /// to the listener `name`, gRFC A27). The config is published once the
    /// listener and everything it needs arrived.
    pub fn watch_listener(&self, name: &str) -> Watch {
        self.owner.shared.watch(name);
        Watch {
            owner: Arc::clone(&self.owner),
            name: name.to_owned(),
        }
    }

    /// Subscribes the SDS secrets of `identity` over the shared ADS stream
    /// and keeps the returned watch's
    /// [`CredentialStore`](mesh_identity::CredentialStore) current with
    /// them (module `sds`: the certificate must be a valid X.509-SVID of
    /// the identity's trust domain with a matching key, the roots usable;
    /// anything else is NACKed and the last good identity stays; nothing is
    /// published before both secrets are valid).
    ///
    /// While the watch lives, TLS contexts may reference these secrets by
    /// name over ADS (`tls_certificate_sds_secret_configs`,
    /// `validation_context_sds_secret_config`): they mean the process
    /// identity and its roots, as `ISTIO_MUTUAL`. Call it right after
    /// [`start`](Self::start): a resource that references the secrets and
    /// arrives before the watch is NACKed (fail closed) until the server
    /// sends it again.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use mesh_core::ConfigStore;
    /// use mesh_identity::tls::{PeerMatcher, client_config};
    /// use mesh_xds::{Bootstrap, SdsIdentity, XdsClient};
    ///
    /// let store = ConfigStore::new();
    /// let xds = XdsClient::start(Bootstrap::from_env()?.config, store.clone());
    /// // Istio's `default` and `ROOTCA`, roots of `cluster.local`.
    /// let identity = xds.watch_identity(SdsIdentity::istio("cluster.local"));
    /// identity.wait_for_updates(1).await; // both secrets arrived valid
    /// // `MeshBuilder::with_credentials(identity.store().clone())`, or:
    /// let tls = client_config(identity.store().clone(), PeerMatcher::AnyTrusted)?;
    /// # Ok(()) }
    /// ```
    pub fn watch_identity(&self, identity: SdsIdentity) -> SdsWatch {
        SdsWatch::new(Arc::clone(&self.owner), identity)
    }

    /// Watches the server-side listener of `addr`, named by the bootstrap's
    /// `server_listener_resource_name_template` with `%s` replaced by
    /// `<ip>:<port>` (gRFC A36; IPv6 in brackets). Without a template the
    /// name is `<ip>:<port>`.
    pub fn watch_server_listener(&self, addr: SocketAddr) -> Watch {
        let name = server_listener_name(self.owner.template.as_deref(), addr);
        self.watch_listener(&name)
    }

    /// The status of every watched or cached resource (A3.13).
    pub fn status(&self) -> Vec<ResourceStatus> {
        let statuses = Arc::clone(&self.owner.shared.lock().statuses);
        statuses.as_ref().clone()
    }

    /// Every watched or cached resource with its raw value, for CSDS
    /// config dumps.
    pub fn raw_resources(&self) -> Vec<(TypeUrl, String, Option<Any>)> {
        let raw = Arc::clone(&self.owner.shared.lock().raw);
        raw.iter()
            .map(|(t, n, a)| (*t, n.clone(), a.as_deref().cloned()))
            .collect()
    }

    /// The value of one watched or cached resource as received (`None`
    /// when it is not cached). Cheaper than
    /// [`raw_resources`](Self::raw_resources) for one name.
    pub fn raw_resource(&self, type_url: TypeUrl, name: &str) -> Option<Any> {
        let raw = Arc::clone(&self.owner.shared.lock().raw);
        raw.iter()
            .find(|(t, n, _)| *t == type_url && n == name)
            .and_then(|(_, _, a)| a.as_deref().cloned())
    }

    /// The node the client identifies as.
    pub fn node(&self) -> &Node {
        &self.owner.shared.node
    }

    /// A snapshot of the counters (gRFC A78).
    pub fn metrics(&self) -> XdsClientMetrics {
        let statuses = Arc::clone(&self.owner.shared.lock().statuses);
        self.owner.shared.metrics.snapshot(&statuses)
    }

    /// Stops the task and waits for it to end. Other handles stay valid
    /// but the client no longer updates the store.
    pub async fn shutdown(self) {
        self.owner.shared.close();
        let handle = self
            .owner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            // The task never panics by design; a JoinError is only a
            // cancelled runtime.
            let _ = h.await;
        }
    }
}

/// The server-listener resource name of `addr`.
pub fn server_listener_name(template: Option<&str>, addr: SocketAddr) -> String {
    let hostport = match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    match template {
        Some(t) if t.contains("%s") => t.replace("%s", &hostport),
        Some(t) => t.to_owned(),
        None => hostport,
    }
}

// === the task ===

/// The sending half of a stream.
enum Tx {
    Sotw(mpsc::Sender<DiscoveryRequest>),
    Delta(mpsc::Sender<DeltaDiscoveryRequest>),
}

impl Tx {
    /// Queues `req`; fails when the stream is gone. Never waits on the
    /// task itself: the transport drains the queue.
    async fn send(&self, req: Request) -> Result<(), ()> {
        match (self, req) {
            (Tx::Sotw(tx), Request::Sotw(r)) => tx.send(r).await.map_err(|_| ()),
            (Tx::Delta(tx), Request::Delta(r)) => tx.send(r).await.map_err(|_| ()),
            // A request of the other variant cannot be produced for this
            // stream's protocol; dropping it is the only safe move.
            _ => Ok(()),
        }
    }
}

/// The receiving half of a stream.
enum Rx {
    Sotw(Streaming<DiscoveryResponse>),
    Delta(Streaming<DeltaDiscoveryResponse>),
}

impl Rx {
    /// The next response (cancel-safe: `Streaming::message` keeps its state
    /// in the stream).
    async fn next(&mut self) -> Result<Option<Response>, tonic::Status> {
        match self {
            Rx::Sotw(s) => Ok(s.message().await?.map(Response::Sotw)),
            Rx::Delta(s) => Ok(s.message().await?.map(Response::Delta)),
        }
    }
}

/// An open stream with its first response (the promoted fallback probe).
struct Opened {
    server: usize,
    tx: Tx,
    rx: Rx,
    first: Option<Response>,
    /// The opening requests it was made with: the wanted names may have
    /// changed while the probe waited, so the adopted stream's
    /// subscriptions are these, not the current wanted sets.
    sent: Vec<Request>,
}

/// How a stream ended.
enum Outcome {
    /// The client is shutting down.
    Shutdown,
    /// The stream ended after at least one response (A4.1: not an error).
    Ended,
    /// No stream, or it ended before any response (A4.2: a connectivity
    /// error).
    Failed(String),
    /// A higher-priority server answered while on a fallback (A6.3).
    Promoted(Box<Opened>),
    /// Nothing is watched any more: the stream was closed (A1.12).
    Idle,
}

struct Task {
    shared: Arc<Shared>,
    state: State,
    published: cascade::Published,
    /// The SDS identities fed from the cache.
    identities: Vec<sds::Publisher>,
    store: ConfigStore,
    connector: Connector,
    generation: u64,
    limiter: RequestLimiter,
}

/// Opens a stream to `server`: the channel, then the RPC with `opening`
/// queued ahead, all within `timeout` (A4.10).
async fn open(
    connector: Connector,
    servers: Vec<crate::config::ServerConfig>,
    server: usize,
    opening: Vec<Request>,
    timeout: Duration,
) -> Result<(Tx, Rx), String> {
    let Some(cfg) = servers.get(server).cloned() else {
        return Err(format!("no server {server}"));
    };
    let uri = cfg.uri.clone();
    let fut = async move {
        let channel = (connector)(server, &cfg)
            .await
            .map_err(|e| format!("connecting to xds server {}: {e}", cfg.uri))?;
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        match cfg.protocol {
            Protocol::StateOfTheWorld => {
                let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
                for r in opening {
                    if let Request::Sotw(r) = r {
                        tx.try_send(r)
                            .map_err(|e| format!("queueing a request: {e}"))?;
                    }
                }
                let resp = client
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .map_err(|s| format!("xds server {}: {s}", cfg.uri))?;
                Ok((Tx::Sotw(tx), Rx::Sotw(resp.into_inner())))
            }
            Protocol::Delta => {
                let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
                for r in opening {
                    if let Request::Delta(r) = r {
                        tx.try_send(r)
                            .map_err(|e| format!("queueing a request: {e}"))?;
                    }
                }
                let resp = client
                    .delta_aggregated_resources(ReceiverStream::new(rx))
                    .await
                    .map_err(|s| format!("xds server {}: {s}", cfg.uri))?;
                Ok((Tx::Delta(tx), Rx::Delta(resp.into_inner())))
            }
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "xds server {uri}: no connection within {}s (connect timeout)",
            timeout.as_secs_f64()
        )),
    }
}

/// Opens a stream to the primary and waits for its first response, after
/// `delay` (the fallback probe, gRFC A71).
fn probe(
    connector: Connector,
    servers: Vec<crate::config::ServerConfig>,
    opening: Vec<Request>,
    timeout: Duration,
    delay: Duration,
) -> BoxFuture<'static, Result<Opened, String>> {
    Box::pin(async move {
        tokio::time::sleep(delay).await;
        let sent = opening.clone();
        let (tx, mut rx) = open(connector, servers, 0, opening, timeout).await?;
        match rx.next().await {
            Ok(Some(first)) => Ok(Opened {
                server: 0,
                tx,
                rx,
                first: Some(first),
                sent,
            }),
            Ok(None) => Err("the primary closed the stream before any response".to_owned()),
            Err(s) => Err(format!("primary: {s}")),
        }
    })
}

/// The `attempt`-th backoff delay: `base × multiplier^attempt`, capped,
/// with ± `jitter` (gRPC connection backoff, A4.2/A4.3).
fn backoff_delay(cfg: &crate::config::BackoffConfig, attempt: u32) -> Duration {
    let exp = cfg.multiplier.max(1.0).powi(attempt.min(64) as i32);
    let base = (cfg.base.as_secs_f64() * exp).min(cfg.max.as_secs_f64());
    let jitter = cfg.jitter.clamp(0.0, 1.0);
    let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    Duration::from_secs_f64((base * factor).max(0.0))
}

impl Task {
    fn closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Copies the handles' interest into the state when it changed.
    fn sync_interest(&mut self) -> bool {
        let inner = self.shared.lock();
        if inner.generation == self.generation {
            return false;
        }
        self.generation = inner.generation;
        self.state.interest = inner.interest.clone();
        let identities = sds::sync(&mut self.identities, &inner.identities);
        drop(inner);
        self.state.set_sds_identities(identities);
        true
    }

    /// Recomputes the cascade, republishes and refreshes the status view.
    fn settle(&mut self) {
        cascade::recompute_all(&mut self.state);
        // The status view first: a store watcher woken by the publication
        // (a server following its listener) reads a status and raw values
        // that cover the new snapshot.
        self.refresh_view();
        if let Some(resources) = self.published.update(&self.state)
            && let Err(e) = self.store.publish(SourceId::new(SOURCE), resources)
        {
            tracing::warn!(error = %e, "xDS config rejected by the store; the last good config stays");
        }
        sds::publish(&self.state, &mut self.identities);
    }

    /// Refreshes the status view the handles read.
    fn refresh_view(&mut self) {
        let statuses = Arc::new(self.state.statuses());
        let raw = Arc::new(self.state.raw());
        let mut inner = self.shared.lock();
        inner.statuses = statuses;
        inner.raw = raw;
    }

    /// Waits `d`, or less when the client closes. Returns whether it
    /// closed. Interest changes meanwhile update the status (A4.6: the
    /// subscriptions queue until a stream exists).
    async fn pause(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            if self.closed() {
                return true;
            }
            if self.sync_interest() {
                self.settle();
            }
            // A5.3: TTLs run while no stream is up.
            let ttl = self.state.next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return self.closed(),
                _ = self.shared.wake.notified() => {}
                () = sleep_until_opt(ttl) => {
                    if self.state.fire_timers(Instant::now()) {
                        self.settle();
                    }
                }
            }
        }
    }

    /// A1.12: waits until something is watched (no stream meanwhile).
    /// Returns whether the client closed.
    async fn wait_for_interest(&mut self) -> bool {
        loop {
            if self.closed() {
                return true;
            }
            if self.sync_interest() {
                self.settle();
            }
            if !self.state.idle() {
                return false;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Sends `req` through the rate limiter (A1.14): now if a token is
    /// there, otherwise when one returns (collapsed with later requests of
    /// its type).
    async fn send(&mut self, tx: &Tx, req: Request) -> Result<(), ()> {
        self.limiter.push(req);
        self.flush(tx).await
    }

    /// Sends the requests the rate limiter lets go now.
    async fn flush(&mut self, tx: &Tx) -> Result<(), ()> {
        for r in self.limiter.ready(Instant::now()) {
            tx.send(r).await?;
        }
        Ok(())
    }

    async fn run(mut self) {
        self.sync_interest();
        self.settle();
        let servers = self.state.config.servers.len();
        if servers == 0 {
            tracing::error!("xDS client has no server to connect to");
            while !self.pause(Duration::from_secs(3600)).await {}
            return;
        }
        let mut server = 0;
        let mut attempt = 0u32;
        let mut opened: Option<Opened> = None;
        loop {
            if self.closed() {
                return;
            }
            if self.sync_interest() {
                self.settle();
            }
            if self.state.idle() {
                // A1.12: no stream while nothing is watched.
                opened = None;
                if self.wait_for_interest().await {
                    return;
                }
                server = 0;
                attempt = 0;
            }
            let started = Instant::now();
            let outcome = self.stream(server, opened.take()).await;
            self.state.stream_ended();
            // A1.14: what waited for tokens belongs to the old stream; the
            // next one opens with one fresh request per type.
            self.limiter.reset();
            self.shared.metrics.set_connected(server, false);
            match outcome {
                Outcome::Shutdown => return,
                Outcome::Idle => {
                    // A1.12 (grpc-go `TestADS_ACK_NACK_ResourceIsNotRequestedAnymore`):
                    // the stream is closed; nothing is cached, so a later
                    // watch starts a new stream with empty versions.
                    tracing::info!("nothing is watched any more; xDS stream closed");
                    self.state.forget_versions();
                    self.settle();
                    attempt = 0;
                    server = 0;
                }
                Outcome::Promoted(o) => {
                    tracing::info!(
                        server = o.server,
                        "xDS primary server is back; leaving the fallback"
                    );
                    server = o.server;
                    attempt = 0;
                    opened = Some(*o);
                }
                Outcome::Ended => {
                    // A4.1: not an error; backoff resets (A4.2), the next
                    // stream starts at the primary (gRFC A71), no sooner
                    // than MIN_STREAM_INTERVAL after this one (A4.4).
                    attempt = 0;
                    server = 0;
                    self.settle();
                    let wait =
                        (started + MIN_STREAM_INTERVAL).saturating_duration_since(Instant::now());
                    if self.pause(wait).await {
                        return;
                    }
                }
                Outcome::Failed(reason) => {
                    self.shared.metrics.server_failure();
                    tracing::warn!(server, %reason, "xDS stream failed");
                    // A6.1: fall back only on a connectivity failure with a
                    // watched resource that is not cached.
                    if server + 1 < servers && self.state.has_unsettled() {
                        server += 1;
                        continue;
                    }
                    // A6.4: every server failed; A4.2: back off, then start
                    // again at the primary.
                    self.settle();
                    let delay = backoff_delay(&self.state.config.backoff, attempt);
                    attempt = attempt.saturating_add(1);
                    server = 0;
                    if self.pause(delay).await {
                        return;
                    }
                }
            }
        }
    }

    /// Runs one stream until it ends.
    async fn stream(&mut self, server: usize, opened: Option<Opened>) -> Outcome {
        self.sync_interest();
        let (tx, mut rx, first) = match opened {
            Some(o) => {
                self.state.adopt_stream(o.server, &o.sent);
                (o.tx, o.rx, o.first)
            }
            None => {
                self.state.stream_started(server);
                cascade::recompute_all(&mut self.state);
                // A4.6: whatever was subscribed before the stream existed
                // goes in its opening requests.
                // A1.14: the opening requests take tokens too; those
                // without one follow on the stream as tokens return.
                for r in self.state.subscription_requests() {
                    self.limiter.push(r);
                }
                let opening = self.limiter.ready(Instant::now());
                let timeout = self.state.config.connect_timeout;
                let servers = self.state.config.servers.clone();
                let mut fut = std::pin::pin!(open(
                    self.connector.clone(),
                    servers,
                    server,
                    opening,
                    timeout
                ));
                loop {
                    let ttl = self.state.next_deadline();
                    tokio::select! {
                        r = &mut fut => match r {
                            Ok((tx, rx)) => break (tx, rx, None),
                            Err(e) => return Outcome::Failed(e),
                        },
                        () = self.wait_closed() => return Outcome::Shutdown,
                        // A5.3: TTLs run while connecting.
                        () = sleep_until_opt(ttl) => {
                            if self.state.fire_timers(Instant::now()) {
                                self.settle();
                            }
                        }
                    }
                }
            }
        };
        self.shared.metrics.set_connected(server, true);
        if self.sync_interest() {
            cascade::recompute_all(&mut self.state);
            if self.send_subscriptions(&tx).await.is_err() {
                return Outcome::Failed("the stream closed".to_owned());
            }
            if self.state.idle() {
                return Outcome::Idle;
            }
        }
        // A3.1: the timers start once the requests are on a live stream.
        self.state.stream_connected(Instant::now());
        self.settle();
        let mut responded = false;
        if let Some(first) = first {
            responded = true;
            if self.on_response(first, &tx).await.is_err() {
                return Outcome::Ended;
            }
            if self.state.idle() {
                return Outcome::Idle;
            }
        }
        // A6.3: on a fallback, keep trying the primary.
        let mut probe_attempt = 0u32;
        let mut probing: Option<BoxFuture<'static, Result<Opened, String>>> = None;
        loop {
            if server > 0 && probing.is_none() {
                let delay = backoff_delay(&self.state.config.backoff, probe_attempt);
                probe_attempt = probe_attempt.saturating_add(1);
                probing = Some(probe(
                    self.connector.clone(),
                    self.state.config.servers.clone(),
                    self.state.opening_requests(0),
                    self.state.config.connect_timeout,
                    delay,
                ));
            }
            let deadline = self.state.next_deadline();
            tokio::select! {
                biased;
                () = self.shared.wake.notified() => {
                    if self.closed() {
                        return Outcome::Shutdown;
                    }
                    if self.sync_interest() {
                        cascade::recompute_all(&mut self.state);
                        if self.send_subscriptions(&tx).await.is_err() {
                            return self.broken(responded, "the stream closed");
                        }
                        self.settle();
                        if self.state.idle() {
                            return Outcome::Idle;
                        }
                    }
                }
                () = sleep_until_opt(deadline) => {
                    if self.state.fire_timers(Instant::now()) {
                        self.settle();
                    }
                }
                () = sleep_until_opt(self.limiter.retry_at()) => {
                    if self.flush(&tx).await.is_err() {
                        return self.broken(responded, "the stream closed");
                    }
                }
                r = rx.next() => match r {
                    Ok(Some(resp)) => {
                        responded = true;
                        if self.on_response(resp, &tx).await.is_err() {
                            return Outcome::Ended;
                        }
                        if self.state.idle() {
                            return Outcome::Idle;
                        }
                    }
                    Ok(None) => return self.broken(responded, "the server closed the stream"),
                    Err(s) => return self.broken(responded, &format!("stream error: {s}")),
                },
                r = poll_opt(&mut probing) => {
                    probing = None;
                    match r {
                        Ok(o) => return Outcome::Promoted(Box::new(o)),
                        Err(e) => tracing::debug!(error = %e, "xDS primary still unavailable"),
                    }
                }
            }
        }
    }

    fn broken(&self, responded: bool, why: &str) -> Outcome {
        if responded {
            tracing::info!(
                reason = why,
                "xDS stream ended after responses; reconnecting"
            );
            Outcome::Ended
        } else {
            Outcome::Failed(why.to_owned())
        }
    }

    /// Returns once the client closes. Interest changes meanwhile are
    /// picked up by generation once the stream is up, not through the
    /// wake-up, so nothing is lost.
    async fn wait_closed(&self) {
        while !self.closed() {
            self.shared.wake.notified().await;
        }
    }

    /// Applies a response, publishes, then ACKs/NACKs it and sends the
    /// subscription changes it caused.
    async fn on_response(&mut self, resp: Response, tx: &Tx) -> Result<(), ()> {
        let applied = self.state.apply(resp, &self.shared.metrics);
        // The interest may have changed while applying; take it too.
        let interest = self.sync_interest();
        if applied.changed || interest {
            self.settle();
        } else {
            // A rejected secret changes no value, but counts.
            sds::publish(&self.state, &mut self.identities);
            self.refresh_view();
        }
        self.send(tx, applied.ack).await?;
        self.send_subscriptions(tx).await
    }

    async fn send_subscriptions(&mut self, tx: &Tx) -> Result<(), ()> {
        if self.state.idle() {
            // A1.12: the stream closes instead; no unsubscription needed.
            return Ok(());
        }
        for r in self.state.subscription_requests() {
            self.send(tx, r).await?;
        }
        self.state.start_timers(Instant::now());
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn poll_opt<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => Pin::new(f).await,
        None => std::future::pending().await,
    }
}
