//! An ADS server that serves the current [`Snapshot`] of a
//! [`ConfigStore`], so that a mesh YAML file (or any other source) can be
//! the control plane of Envoy, of proxyless gRPC and of this crate's own
//! client.
//!
//! Every snapshot the store publishes is encoded once
//! ([`EncodedSnapshot`]) and pushed to every open stream, State-of-the-World
//! and incremental (delta) alike. The protocol rules are the server's side
//! of Envoy's `xds_protocol.rst` and of section A of the rules reference:
//!
//! - SotW: `version_info` is the store version; each response has a fresh
//!   nonce; a request whose `response_nonce` is not the stream's latest is
//!   stale and ignored (A7.8); a NACK is detected by `error_detail`
//!   (A1.5), logged and recorded ([`AdsServer::nacks`]), and not answered
//!   with the same content again; LDS and CDS responses hold the full
//!   subscribed set (A7.1), a wildcard being `*` or — on a stream that never
//!   named a resource of the type — an empty list (A7.2); only requested
//!   names are returned (A1.10).
//! - Delta: per-resource versions (a hash of the resource's bytes), the
//!   `initial_resource_versions` of a reconnecting client honoured (A7.6),
//!   subscription changes honoured whatever their nonce (A7.5), deleted and
//!   non-existent resources reported in `removed_resources` (A7.7).
//! - Pushes go out in make-before-break order: SDS (secrets set with
//!   [`AdsServer::set_secrets`]), CDS, EDS, LDS, RDS (A8.6).
//!
//! Each stream is served by one task that ends when the client closes its
//! request stream or drops the response stream; responses wait in a channel
//! of [`STREAM_BUFFER`] (no unbounded queue).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use mesh_core::{ConfigStore, Snapshot};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::TypeUrl;
use crate::encode::{EncodedResource, EncodedSnapshot};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

mod delta;
mod sotw;

#[cfg(test)]
mod tests;

/// Responses buffered per stream before the stream's task waits for the
/// client to read (at most one per type is ever pending in practice).
pub const STREAM_BUFFER: usize = 16;

/// NACKs kept for [`AdsServer::nacks`] (the oldest are dropped; the count
/// in [`AdsServer::nack_count`] keeps growing).
const NACKS_KEPT: usize = 64;

/// The order pushes go out in: make-before-break (xDS protocol, "Eventual
/// consistency considerations").
pub(crate) const PUSH_ORDER: [TypeUrl; 5] = [
    // Secrets first: a cluster or listener naming one is only accepted by
    // a client that watches it (translate::tls), and the identity should
    // be in place before the TLS that uses it.
    TypeUrl::Secret,
    TypeUrl::Cluster,
    TypeUrl::ClusterLoadAssignment,
    TypeUrl::Listener,
    TypeUrl::RouteConfiguration,
];

/// A NACK a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The client's node ID (from the first request of its stream).
    pub node: String,
    /// The type it rejected.
    pub type_url: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The version the client still uses (its last accepted one).
    pub version: String,
    /// The client's `error_detail.message`.
    pub message: String,
    /// Whether it came on a delta stream.
    pub delta: bool,
    /// When it arrived (wall clock, for display).
    pub at: SystemTime,
}

/// What one open stream has acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStatus {
    /// The client's node ID.
    pub node: String,
    /// Whether it is a delta stream.
    pub delta: bool,
    /// Per type URL, the last version the client ACKed (SotW: the
    /// `version_info`; delta: the `system_version_info` of the ACKed
    /// response).
    pub acked: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
struct Registry {
    streams: Mutex<HashMap<u64, StreamStatus>>,
    nacks: Mutex<VecDeque<Nack>>,
    nack_count: AtomicU64,
    next_stream: AtomicU64,
}

impl Registry {
    /// Records the client's answer to the response `nonce` of `type_url`,
    /// which carried `version`: an ACK, or a NACK when `error` (the
    /// request's `error_detail` message) is present (A1.5).
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        stream: u64,
        node: &str,
        type_url: &str,
        nonce: &str,
        version: String,
        error: Option<&str>,
        delta: bool,
    ) {
        match error {
            Some(message) => self.nack(Nack {
                node: node.to_owned(),
                type_url: type_url.to_owned(),
                nonce: nonce.to_owned(),
                version,
                message: message.to_owned(),
                delta,
                at: SystemTime::now(),
            }),
            None => self.ack(stream, type_url, &version),
        }
    }

    fn nack(&self, nack: Nack) {
        tracing::warn!(
            node = %nack.node,
            type_url = %nack.type_url,
            nonce = %nack.nonce,
            version = %nack.version,
            delta = nack.delta,
            error = %nack.message,
            "xds client rejected a response (nack)"
        );
        self.nack_count.fetch_add(1, Ordering::Relaxed);
        let mut nacks = lock(&self.nacks);
        if nacks.len() == NACKS_KEPT {
            nacks.pop_front();
        }
        nacks.push_back(nack);
    }

    fn ack(&self, stream: u64, type_url: &str, version: &str) {
        if let Some(s) = lock(&self.streams).get_mut(&stream) {
            s.acked.insert(type_url.to_owned(), version.to_owned());
        }
    }

    fn open(self: &Arc<Self>, node: String, delta: bool) -> StreamGuard {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        lock(&self.streams).insert(
            id,
            StreamStatus {
                node,
                delta,
                acked: BTreeMap::new(),
            },
        );
        StreamGuard {
            id,
            registry: Arc::clone(self),
        }
    }
}

/// What every ADS stream holds, State-of-the-World or delta (`Sub` is the
/// per-type subscription state of the variant, `Resp` its response).
struct StreamCore<Resp, Sub> {
    /// The encoded snapshots to serve; the loop waits on changes.
    snapshots: watch::Receiver<Arc<EncodedSnapshot>>,
    registry: Arc<Registry>,
    /// The bounded channel to the response stream.
    tx: mpsc::Sender<Result<Resp, tonic::Status>>,
    types: HashMap<TypeUrl, Sub>,
    /// The client's node ID, from the stream's first request.
    node: String,
    /// The latest nonce sent on this stream.
    nonce: u64,
}

impl<Resp, Sub> StreamCore<Resp, Sub> {
    fn new(
        snapshots: watch::Receiver<Arc<EncodedSnapshot>>,
        registry: Arc<Registry>,
        tx: mpsc::Sender<Result<Resp, tonic::Status>>,
    ) -> Self {
        Self {
            snapshots,
            registry,
            tx,
            types: HashMap::new(),
            node: String::new(),
            nonce: 0,
        }
    }
}

/// The part of an ADS stream that differs between State-of-the-World and
/// delta; [`serve_stream`] runs the request loop both share.
trait AdsStream {
    /// The request message.
    type Request;
    /// Whether this is a delta stream (for the registry and logs).
    const DELTA: bool;
    /// The node ID a request carries (the first request of a stream must).
    fn node_of(req: &Self::Request) -> Option<&str>;
    /// Handles one request; false when the client is gone.
    async fn on_request(&mut self, req: Self::Request, stream: u64) -> bool;
    /// Sends what changed in the snapshot; false when the client is gone.
    async fn push_all(&mut self) -> bool;
}

/// What woke an ADS stream's loop.
enum Wake<R> {
    Request(Result<Option<R>, tonic::Status>),
    Snapshot(bool),
    ClientGone,
}

/// Serves one ADS stream until the client goes away: requests are
/// answered, and every new snapshot is pushed.
async fn serve_stream<Resp, Sub>(
    mut s: StreamCore<Resp, Sub>,
    mut requests: tonic::Streaming<<StreamCore<Resp, Sub> as AdsStream>::Request>,
) where
    StreamCore<Resp, Sub>: AdsStream,
    <StreamCore<Resp, Sub> as AdsStream>::Request: Send + 'static,
{
    let registry = Arc::clone(&s.registry);
    let delta = <StreamCore<Resp, Sub> as AdsStream>::DELTA;
    let kind = if delta { "delta" } else { "sotw" };
    let mut guard: Option<StreamGuard> = None;
    let mut node = String::new();
    loop {
        let wake = tokio::select! {
            req = requests.message() => Wake::Request(req),
            changed = s.snapshots.changed() => Wake::Snapshot(changed.is_ok()),
            () = s.tx.closed() => Wake::ClientGone,
        };
        match wake {
            Wake::Request(Ok(Some(req))) => {
                if guard.is_none() {
                    node = StreamCore::<Resp, Sub>::node_of(&req)
                        .unwrap_or_default()
                        .to_owned();
                    tracing::info!(%node, kind, "ads stream opened");
                    guard = Some(registry.open(node.clone(), delta));
                    s.node.clone_from(&node);
                }
                let stream = guard.as_ref().map_or(0, |g| g.id);
                if !s.on_request(req, stream).await {
                    break;
                }
            }
            Wake::Request(Ok(None)) | Wake::ClientGone => break,
            Wake::Request(Err(status)) => {
                tracing::debug!(%node, kind, %status, "ads stream failed");
                break;
            }
            Wake::Snapshot(open) => {
                if !open || !s.push_all().await {
                    break;
                }
            }
        }
    }
    tracing::info!(%node, kind, "ads stream closed");
}

/// Removes a stream from the registry when its task ends.
struct StreamGuard {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        lock(&self.registry.streams).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is plain bookkeeping: a panic elsewhere cannot leave it
    // half-updated in a way that matters.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ADS server. Cheap to clone; the encoding task stops when the last
/// clone and the last [`AdsServer::service`] are dropped.
#[derive(Clone, Debug)]
pub struct AdsServer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    snapshots: watch::Receiver<Arc<EncodedSnapshot>>,
    feed: Arc<Feed>,
    registry: Arc<Registry>,
    /// The task encoding the store's snapshots; `None` when the snapshots
    /// come from the caller ([`AdsServer::from_snapshot`]).
    encoder: Option<tokio::task::JoinHandle<()>>,
}

/// Where the served snapshot comes from: the store's, encoded, with the
/// secrets set on the server. Both writers (the encoder task and
/// [`AdsServer::set_secrets`]) send under the `secrets` lock, so neither
/// overwrites the other's update.
#[derive(Debug)]
struct Feed {
    tx: watch::Sender<Arc<EncodedSnapshot>>,
    secrets: Mutex<BTreeMap<String, EncodedResource>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(encoder) = &self.encoder {
            encoder.abort();
        }
    }
}

impl AdsServer {
    /// A server for `store`'s snapshots. Spawns the task that encodes every
    /// new snapshot, so it must be called within a Tokio runtime.
    pub fn new(store: &ConfigStore) -> Self {
        let mut updates = store.subscribe();
        let first = Arc::new(EncodedSnapshot::encode(&updates.borrow_and_update()));
        let (tx, snapshots) = watch::channel(first);
        let feed = Arc::new(Feed {
            tx,
            secrets: Mutex::new(BTreeMap::new()),
        });
        let encoder_feed = Arc::clone(&feed);
        let encoder = tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let snapshot: Arc<Snapshot> = Arc::clone(&updates.borrow_and_update());
                let mut encoded = EncodedSnapshot::encode(&snapshot);
                tracing::debug!(version = encoded.version, "serving a new snapshot");
                let secrets = lock(&encoder_feed.secrets);
                encoded.secrets = secrets.clone();
                if encoder_feed.tx.send(Arc::new(encoded)).is_err() {
                    break;
                }
            }
        });
        Self {
            inner: Arc::new(Inner {
                snapshots,
                feed,
                registry: Arc::default(),
                encoder: Some(encoder),
            }),
        }
    }

    /// A server with no store: it serves `first`, then whatever
    /// [`set_snapshot`](Self::set_snapshot) is given, pushed as
    /// [`new`](Self::new) pushes a store's snapshots. For tests that shape
    /// what a control plane serves, such as a route naming a cluster whose
    /// CDS and EDS are withheld for a while (gRFC A74).
    pub fn from_snapshot(first: EncodedSnapshot) -> Self {
        let (tx, snapshots) = watch::channel(Arc::new(first));
        Self {
            inner: Arc::new(Inner {
                snapshots,
                feed: Arc::new(Feed {
                    tx,
                    secrets: Mutex::new(BTreeMap::new()),
                }),
                registry: Arc::default(),
                encoder: None,
            }),
        }
    }

    /// Serves `snapshot` (with the secrets set by
    /// [`set_secrets`](Self::set_secrets)) and pushes what changed. Meant
    /// for a server made by [`from_snapshot`](Self::from_snapshot): on one
    /// made by [`new`](Self::new) the store's next change replaces it. A
    /// SotW client sees [`EncodedSnapshot::version`] as `version_info`, so
    /// give every distinct snapshot a new version.
    pub fn set_snapshot(&self, mut snapshot: EncodedSnapshot) {
        let held = lock(&self.inner.feed.secrets);
        snapshot.secrets = held.clone();
        self.inner.feed.tx.send_replace(Arc::new(snapshot));
    }

    /// Serves `secrets` (SDS `Secret`s, by name) beside the store's
    /// resources, replacing those served before, and pushes them to every
    /// stream that subscribed them (secrets first, then the store's types in
    /// make-before-break order). The model carries no secrets, so a control plane
    /// that hands out workload identities (istio-agent's role for Envoy's
    /// `default` and `ROOTCA`) sets them here; a client takes them with
    /// [`XdsClient::watch_identity`](crate::XdsClient::watch_identity).
    /// The SotW `version_info` stays the store version: a secret-only
    /// change is pushed as new content under the same version.
    pub fn set_secrets(&self, secrets: impl IntoIterator<Item = Secret>) {
        let encoded: BTreeMap<String, EncodedResource> = secrets
            .into_iter()
            .map(|s| (s.name.clone(), EncodedResource::new(&s)))
            .collect();
        let mut held = lock(&self.inner.feed.secrets);
        *held = encoded.clone();
        self.inner.feed.tx.send_modify(|current| {
            let mut next = EncodedSnapshot::clone(current);
            next.secrets = encoded;
            *current = Arc::new(next);
        });
    }

    /// The tonic service, to add to a `tonic::transport::Server`.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsServer> {
        AggregatedDiscoveryServiceServer::new(self.clone())
    }

    /// Serves ADS on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await
    }

    /// The snapshot currently served.
    pub fn current(&self) -> Arc<EncodedSnapshot> {
        Arc::clone(&self.inner.snapshots.borrow())
    }

    /// Waits until the served snapshot is at least store version `version`
    /// (encoding runs on its own task, just after the store publishes).
    pub async fn wait_for_version(&self, version: u64) {
        let mut rx = self.inner.snapshots.clone();
        // An error means the encoder stopped: nothing newer will come.
        let _ = rx.wait_for(|s| s.version >= version).await;
    }

    /// The most recent NACKs (at most 64), oldest first.
    pub fn nacks(&self) -> Vec<Nack> {
        lock(&self.inner.registry.nacks).iter().cloned().collect()
    }

    /// How many NACKs arrived since the server started.
    pub fn nack_count(&self) -> u64 {
        self.inner.registry.nack_count.load(Ordering::Relaxed)
    }

    /// The open streams and what each has acknowledged.
    pub fn streams(&self) -> Vec<StreamStatus> {
        let mut v: Vec<_> = lock(&self.inner.registry.streams)
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = StreamCore::new(
            self.inner.snapshots.clone(),
            Arc::clone(&self.inner.registry),
            tx,
        );
        tokio::spawn(serve_stream::<_, sotw::Subscription>(
            stream,
            request.into_inner(),
        ));
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = StreamCore::new(
            self.inner.snapshots.clone(),
            Arc::clone(&self.inner.registry),
            tx,
        );
        tokio::spawn(serve_stream::<_, delta::Subscription>(
            stream,
            request.into_inner(),
        ));
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
