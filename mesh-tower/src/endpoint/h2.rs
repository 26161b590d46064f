//! The HTTP/2 connection pool of one endpoint, on `hyper::client::conn::http2`.
//!
//! One multiplexed connection per endpoint; another only when every open
//! one has as many streams in flight as its peer allows
//! (`SETTINGS_MAX_CONCURRENT_STREAMS`, read from the connection as it is
//! driven) or as `http.maxConcurrentStreams` allows or has served `maxRequestsPerConnection` requests, up to the
//! cluster's `tcp.maxConnections` per endpoint; past that, requests queue
//! on the least loaded connection inside h2, bounded by the breaker's
//! request limit.
//!
//! The request path takes no lock: an `ArcSwap` load of the connection
//! list, a compare-and-add on the chosen connection's stream count, and a
//! clone of its `SendRequest`. Only opening a connection is serialized
//! (one attempt at a time per endpoint; concurrent requests wait for it
//! on a `Notify` and share its failure), and that path allocates.
//!
//! Each connection is driven by a task that ends when the connection
//! does: when the peer closes it, when it has been idle for
//! `http.idleTimeout` (checked every quarter timeout), or when the pool
//! (the endpoint) is dropped and its senders with it. The task removes its
//! connection from the pool. A request holds its stream (and keeps the
//! connection busy) until its response body ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::connect::{ConnectError, Connector};
use crate::body::BoxBody;
use crate::error::BoxError;

/// The peer's stream limit assumed until its SETTINGS arrive: h2's
/// initial `max_send_streams`, and RFC 9113's recommended minimum for
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
const INITIAL_MAX_STREAMS: usize = 100;

/// What an HTTP/2 pool enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct H2Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) max_requests_per_connection: Option<u32>,
    pub(crate) max_connections: u32,
    /// `http.maxConcurrentStreams`: at most this many streams per
    /// connection, below the peer's own limit.
    pub(crate) max_concurrent_streams: Option<u32>,
}

/// The response of one request, with the stream's place on its
/// connection (held until the response body ends).
pub(crate) type Sent = (Response<Incoming>, StreamGuard);

/// The future of one request sent through the pool.
pub(crate) type SendFuture = Pin<Box<dyn Future<Output = Result<Sent, BoxError>> + Send>>;

pub(crate) struct H2Pool {
    connector: Connector,
    settings: H2Settings,
    conns: ArcSwap<Vec<Arc<H2Conn>>>,
    connecting: AtomicBool,
    connected: Notify,
    // Bumped by every failed connect; waiters that see it move share the
    // failure instead of each trying again.
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
    opened: AtomicU64,
    next_id: AtomicU64,
}

struct H2Conn {
    id: u64,
    sender: http2::SendRequest<BoxBody>,
    streams: AtomicUsize,
    max_streams: AtomicUsize,
    requests: AtomicU32,
    // Set while the driver decides to close an idle connection.
    retiring: AtomicBool,
    // Nanoseconds since `born` when the last stream ended.
    last_used: AtomicU64,
    born: Instant,
}

impl H2Conn {
    /// Takes a stream if the connection has room and is not retired.
    fn try_stream(self: &Arc<Self>, settings: &H2Settings) -> Option<StreamGuard> {
        if self.sender.is_closed() {
            return None;
        }
        if let Some(max) = settings.max_requests_per_connection
            && self.requests.load(Ordering::Relaxed) >= max
        {
            return None;
        }
        let mut max = self.max_streams.load(Ordering::Relaxed);
        if let Some(cap) = settings.max_concurrent_streams {
            max = max.min(cap as usize);
        }
        let max = max.max(1);
        // SeqCst with `retiring`: either the driver sees this stream or
        // this request sees the connection retiring.
        if self.streams.fetch_add(1, Ordering::SeqCst) >= max
            || self.retiring.load(Ordering::SeqCst)
        {
            self.streams.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Some(StreamGuard(Arc::clone(self)))
    }

    /// Retires the connection if it has been idle for `timeout`.
    fn retire_if_idle(&self, timeout: Duration) -> bool {
        let last = Duration::from_nanos(self.last_used.load(Ordering::Relaxed));
        if self.born.elapsed().saturating_sub(last) < timeout {
            return false;
        }
        self.retiring.store(true, Ordering::SeqCst);
        if self.streams.load(Ordering::SeqCst) == 0 {
            return true;
        }
        self.retiring.store(false, Ordering::SeqCst);
        false
    }
}

/// One stream in use on a connection, until dropped.
pub(crate) struct StreamGuard(Arc<H2Conn>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let c = &self.0;
        let now = u64::try_from(c.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        c.last_used.store(now, Ordering::Relaxed);
        c.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

impl H2Pool {
    pub(crate) fn new(connector: Connector, settings: H2Settings) -> Arc<Self> {
        Arc::new(Self {
            connector,
            settings,
            conns: ArcSwap::from_pointee(Vec::new()),
            connecting: AtomicBool::new(false),
            connected: Notify::new(),
            failures: AtomicU64::new(0),
            last_failure: Mutex::new(None),
            opened: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.conns.load().len()
    }

    /// Connections opened so far.
    pub(crate) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn try_any(&self) -> Option<(http2::SendRequest<BoxBody>, StreamGuard)> {
        let conns = self.conns.load();
        for c in conns.iter() {
            if let Some(g) = c.try_stream(&self.settings) {
                if let Some(max) = self.settings.max_requests_per_connection
                    && c.requests.load(Ordering::Relaxed) >= max
                {
                    // Its last request: out of the pool, so the connection
                    // closes once its streams end (the guards hold it).
                    self.remove(c.id);
                }
                return Some((c.sender.clone(), g));
            }
        }
        None
    }

    /// Sends `req` on a connection with room, opening one if needed.
    pub(crate) fn send(self: &Arc<Self>, req: Request<BoxBody>) -> SendFuture {
        if let Some((mut sender, guard)) = self.try_any() {
            let fut = sender.send_request(req);
            return Box::pin(async move {
                let res = fut.await.map_err(|e| Box::new(e) as BoxError)?;
                Ok((res, guard))
            });
        }
        let pool = Arc::clone(self);
        Box::pin(async move { pool.send_slow(req).await })
    }

    async fn send_slow(self: Arc<Self>, req: Request<BoxBody>) -> Result<Sent, BoxError> {
        loop {
            if let Some((mut sender, guard)) = self.try_any() {
                let res = sender.send_request(req).await?;
                return Ok((res, guard));
            }
            let at_limit = self.open() >= self.settings.max_connections.max(1) as usize;
            if at_limit {
                // `tcp.maxConnections` reached: queue on the least loaded
                // connection (h2 holds the stream until one frees up).
                let conns = self.conns.load_full();
                if let Some(c) = conns
                    .iter()
                    .filter(|c| !c.sender.is_closed())
                    .min_by_key(|c| c.streams.load(Ordering::Relaxed))
                {
                    c.streams.fetch_add(1, Ordering::SeqCst);
                    let guard = StreamGuard(Arc::clone(c));
                    if c.retiring.load(Ordering::SeqCst) {
                        // Being closed for idleness: try again.
                        drop(guard);
                        tokio::task::yield_now().await;
                        continue;
                    }
                    c.requests.fetch_add(1, Ordering::Relaxed);
                    let res = c.sender.clone().send_request(req).await?;
                    return Ok((res, guard));
                }
            }
            let failures = self.failures.load(Ordering::Acquire);
            if self
                .connecting
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let result = self.connect().await;
                if let Err(e) = &result {
                    *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(e.to_string());
                    self.failures.fetch_add(1, Ordering::AcqRel);
                }
                self.connecting.store(false, Ordering::Release);
                self.connected.notify_waiters();
                result?;
                continue;
            }
            let notified = self.connected.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.connecting.load(Ordering::Acquire) {
                notified.await;
            }
            if self.failures.load(Ordering::Acquire) != failures {
                let msg = self
                    .last_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default();
                return Err(Box::new(ConnectError::shared(msg)));
            }
        }
    }

    /// Opens one connection and adds it to the pool.
    async fn connect(self: &Arc<Self>) -> Result<(), ConnectError> {
        let io = tower::Service::call(&mut self.connector.clone(), http::Uri::default()).await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let (sender, conn) = builder
            .handshake::<_, BoxBody>(io)
            .await
            .map_err(|e| self.connector.error_from(e))?;
        let c = Arc::new(H2Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            sender,
            streams: AtomicUsize::new(0),
            max_streams: AtomicUsize::new(INITIAL_MAX_STREAMS),
            requests: AtomicU32::new(0),
            retiring: AtomicBool::new(false),
            last_used: AtomicU64::new(0),
            born: Instant::now(),
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.conns.rcu(|v| {
            let mut v = Vec::clone(v);
            v.push(Arc::clone(&c));
            v
        });
        tokio::spawn(drive(conn, Arc::downgrade(&c), Arc::downgrade(self)));
        Ok(())
    }

    fn remove(&self, id: u64) {
        self.conns
            .rcu(|v| v.iter().filter(|c| c.id != id).cloned().collect::<Vec<_>>());
    }
}

/// Drives one connection until it ends or idles out, then removes it from
/// the pool.
async fn drive<T>(
    conn: http2::Connection<T, BoxBody, TokioExecutor>,
    c: Weak<H2Conn>,
    pool: Weak<H2Pool>,
) where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let idle_timeout = match pool.upgrade() {
        Some(p) => p.settings.idle_timeout,
        None => return,
    };
    let id = c.upgrade().map(|c| c.id);
    let mut conn = Box::pin(conn);
    // Checked four times per timeout: an idle connection closes within
    // 1.25 idle timeouts.
    let mut check = tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(1)));
    check.tick().await;
    let result = std::future::poll_fn(|cx| {
        // Follow the peer's stream limit as its SETTINGS arrive.
        if let Some(c) = c.upgrade() {
            c.max_streams
                .store(conn.current_max_send_streams(), Ordering::Relaxed);
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(r.map_err(|e| e.to_string()));
        }
        while check.poll_tick(cx).is_ready() {
            let Some(c) = c.upgrade() else {
                return Poll::Ready(Ok(()));
            };
            if c.retire_if_idle(idle_timeout) {
                return Poll::Ready(Err("idle timeout".to_owned()));
            }
        }
        Poll::Pending
    })
    .await;
    if let (Some(p), Some(id)) = (pool.upgrade(), id) {
        p.remove(id);
    }
    tracing::debug!(result = ?result, "http/2 connection ended");
}
