//! Demo backends on loopback, with knobs the demo and the tests turn.
//!
//! Each backend serves HTTP/1.1 and HTTP/2 (prior knowledge) on
//! `127.0.0.1:<ephemeral>` behind the mesh server layer. Dropping a backend
//! kills it at once: the listener and every open connection close, as when
//! a process dies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_tower::{MeshServerLayer, ServerStats};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::proto::ratings_server::{Ratings as RatingsApi, RatingsServer};
use crate::proto::{RatingReply, RatingRequest};

/// A running server; killed on drop.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stats: Arc<ServerStats>,
    connections: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `router`, behind a [`MeshServerLayer`], on an ephemeral
    /// loopback port.
    pub async fn start(router: axum::Router) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), router).await
    }

    /// Serves `router` on `addr` (a port freed by a killed server can be
    /// reused to bring it back).
    pub async fn start_on(addr: SocketAddr, router: axum::Router) -> std::io::Result<Self> {
        Self::serve(addr, router, MeshServerLayer::new()).await
    }

    /// Serves `router` behind `layer` (a server layer configured by the
    /// caller, e.g. with other trace propagators) on an ephemeral loopback
    /// port.
    pub async fn start_with_layer(
        router: axum::Router,
        layer: MeshServerLayer,
    ) -> std::io::Result<Self> {
        Self::serve(SocketAddr::from(([127, 0, 0, 1], 0)), router, layer).await
    }

    async fn serve(
        addr: SocketAddr,
        router: axum::Router,
        layer: MeshServerLayer,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::clone(layer.stats());
        let router = router.layer(layer);
        let (tx, mut rx) = oneshot::channel();
        let connections = Arc::new(AtomicU64::new(0));
        let accepted_count = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            // The set owns every connection: dropping it when the loop ends
            // aborts them all, which is what a killed process does.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        accepted_count.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nodelay(true);
                        let svc = TowerToHyperService::new(router.clone());
                        conns.spawn(async move {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            stats,
            connections,
            shutdown: Some(tx),
            task,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters of the server's mesh layer.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The response header naming the version that answered.
pub const VERSION_HEADER: &str = "x-version";
/// A request header asking the backend to wait this many milliseconds.
pub const DELAY_HEADER: &str = "x-delay-ms";

#[derive(Debug)]
struct ReviewsState {
    version: String,
    hits: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    delay_ms: AtomicU64,
    status: AtomicU16,
}

/// An instance of the `reviews` HTTP service: answers every path with its
/// version in the body and in `x-version`.
#[derive(Debug)]
pub struct Reviews {
    state: Arc<ReviewsState>,
    server: Server,
}

impl Reviews {
    /// Starts an instance of `version`.
    pub async fn start(version: &str) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), version).await
    }

    /// Starts an instance of `version` on `addr`.
    pub async fn start_on(addr: SocketAddr, version: &str) -> std::io::Result<Self> {
        let state = Arc::new(ReviewsState {
            version: version.to_owned(),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            status: AtomicU16::new(200),
        });
        let router = axum::Router::new()
            .fallback(review)
            .with_state(Arc::clone(&state));
        Ok(Self {
            server: Server::start_on(addr, router).await?,
            state,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The version this instance reports.
    pub fn version(&self) -> &str {
        &self.state.version
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// The most requests ever handled at once.
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::Relaxed)
    }

    /// Makes every response wait `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Makes every response carry `status`.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// The counters of the instance's mesh server layer.
    pub fn stats(&self) -> &ServerStats {
        self.server.stats()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }
}

async fn review(
    State(state): State<Arc<ReviewsState>>,
    headers: http::HeaderMap,
) -> impl IntoResponse {
    state.hits.fetch_add(1, Ordering::Relaxed);
    let now = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    state.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let delay = headers
        .get(DELAY_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| state.delay_ms.load(Ordering::Relaxed));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.in_flight.fetch_sub(1, Ordering::Relaxed);
    let status = http::StatusCode::from_u16(state.status.load(Ordering::Relaxed))
        .unwrap_or(http::StatusCode::OK);
    (
        status,
        [(VERSION_HEADER, state.version.clone())],
        state.version.clone(),
    )
}

/// An instance of the `ratings` gRPC service, served by tonic inside an
/// axum router.
#[derive(Debug)]
pub struct Ratings {
    hits: Arc<AtomicU64>,
    server: Server,
}

#[derive(Clone)]
struct RatingsImpl {
    name: String,
    hits: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl RatingsApi for RatingsImpl {
    async fn get(
        &self,
        request: tonic::Request<RatingRequest>,
    ) -> Result<tonic::Response<RatingReply>, tonic::Status> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let product = request.into_inner().product;
        if product.is_empty() {
            return Err(tonic::Status::invalid_argument("product is required"));
        }
        Ok(tonic::Response::new(RatingReply {
            product,
            stars: 5,
            served_by: self.name.clone(),
        }))
    }
}

impl Ratings {
    /// Starts an instance that reports itself as `name`.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let hits = Arc::new(AtomicU64::new(0));
        let svc = RatingsServer::new(RatingsImpl {
            name: name.to_owned(),
            hits: Arc::clone(&hits),
        });
        let router = tonic::service::Routes::new(svc).into_axum_router();
        Ok(Self {
            hits,
            server: Server::start(router).await?,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Calls answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// The counters of the instance's mesh server layer.
    pub fn stats(&self) -> &ServerStats {
        self.server.stats()
    }
}

/// The tonic service of a `ratings` instance named `name`, for serving
/// with `tonic::transport::Server` directly.
pub fn ratings_service(name: &str) -> RatingsServer<impl RatingsApi> {
    RatingsServer::new(RatingsImpl {
        name: name.to_owned(),
        hits: Arc::default(),
    })
}
