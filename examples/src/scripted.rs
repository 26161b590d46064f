//! A backend whose behaviour is scripted per request, for resilience tests.
//!
//! Each request takes the next [`Action`] from the backend's queue, or,
//! when the queue is empty, the action its `x-script` header names, or the
//! default action. Actions answer with a status, gRPC errors as
//! Trailers-Only or as headers + empty body + trailers, a delay, a reset,
//! or a hang. Serves HTTP/1.1 and HTTP/2 (prior knowledge) on loopback and
//! is killed (listener and every connection) when dropped.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use mesh_examples::scripted::{Action, Scripted};
//!
//! let backend = Scripted::start("b1").await?;
//! // Fail twice, then succeed: "succeed on attempt 3".
//! backend.push([Action::status(503), Action::status(503)]);
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// What a scripted backend does with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with this status after `delay`, with `headers`.
    Respond {
        /// The status.
        status: u16,
        /// Wait this long first.
        delay: Duration,
        /// Extra response headers.
        headers: Vec<(String, String)>,
    },
    /// gRPC error as Trailers-Only: HTTP 200 with `grpc-status` in the
    /// only HEADERS frame.
    GrpcTrailersOnly(i32),
    /// gRPC status in trailers after headers and an empty body.
    GrpcTrailers(i32),
    /// Fail the stream: HTTP/2 RST_STREAM, or a closed HTTP/1 connection.
    Reset,
    /// Never answer (until the backend is dropped).
    Hang,
}

impl Action {
    /// Answer `status` at once.
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Answer 200 after `delay`.
    pub fn delayed(delay: Duration) -> Self {
        Self::Respond {
            status: 200,
            delay,
            headers: Vec::new(),
        }
    }

    /// Answer `status` with one extra header.
    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Self::Respond {
            status,
            delay: Duration::ZERO,
            headers: vec![(name.into(), value.into())],
        }
    }

    /// Parses the `x-script` header form: `status=503`, `delay=100ms`,
    /// `grpc=14` (Trailers-Only), `grpc-trailers=14`, `reset`, `hang`.
    pub fn parse(s: &str) -> Option<Self> {
        let (k, v) = s.split_once('=').unwrap_or((s, ""));
        Some(match k {
            "status" => Self::status(v.parse().ok()?),
            "delay" => Self::delayed(Duration::from_millis(v.strip_suffix("ms")?.parse().ok()?)),
            "grpc" => Self::GrpcTrailersOnly(v.parse().ok()?),
            "grpc-trailers" => Self::GrpcTrailers(v.parse().ok()?),
            "reset" => Self::Reset,
            "hang" => Self::Hang,
            _ => return None,
        })
    }
}

/// The header that names a request's action when the queue is empty.
pub const SCRIPT_HEADER: &str = "x-script";
/// The response header naming the backend that answered.
pub const SERVED_BY: &str = "x-served-by";

#[derive(Debug)]
struct State {
    name: String,
    queue: Mutex<VecDeque<Action>>,
    default: Mutex<Action>,
    hits: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    connections: AtomicU64,
    // Bodies received, for replay tests (bounded: the last 64).
    bodies: Mutex<VecDeque<Bytes>>,
    // The headers of the last request, for propagation tests.
    last_headers: Mutex<HeaderMap>,
}

/// A scripted backend; see the module docs.
#[derive(Debug)]
pub struct Scripted {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    /// Starts a backend named `name` on an ephemeral loopback port,
    /// answering 200 by default.
    pub async fn start(name: &str) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name).await
    }

    /// Starts a backend on `addr` (to bring a killed one back on its port).
    pub async fn start_on(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            name: name.to_owned(),
            queue: Mutex::default(),
            default: Mutex::new(Action::status(200)),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            bodies: Mutex::default(),
            last_headers: Mutex::default(),
        });
        let (tx, mut rx) = oneshot::channel();
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            state.connections.fetch_add(1, Ordering::Relaxed);
                            let state = Arc::clone(&state);
                            conns.spawn(async move {
                                let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
                                let _ = auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                    while conns.try_join_next().is_some() {}
                }
            }
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues actions for the next requests, in order.
    pub fn push(&self, actions: impl IntoIterator<Item = Action>) {
        lock(&self.state.queue).extend(actions);
    }

    /// Sets the action for requests when the queue is empty and the
    /// request names none.
    pub fn set_default(&self, action: Action) {
        *lock(&self.state.default) = action;
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// The most requests handled at once.
    pub fn max_in_flight(&self) -> u64 {
        self.state.max_in_flight.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// The headers of the last request received.
    pub fn last_headers(&self) -> HeaderMap {
        lock(&self.state.last_headers).clone()
    }

    /// The bodies of the last requests (up to 64), oldest first.
    pub fn bodies(&self) -> Vec<Bytes> {
        lock(&self.state.bodies).iter().cloned().collect()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decrements the in-flight gauge when the handler ends, however it ends.
struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body of at most one data frame and optional trailers.
#[derive(Debug)]
pub struct ScriptBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[derive(Debug)]
struct ResetStream;

impl std::fmt::Display for ResetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted reset")
    }
}

impl std::error::Error for ResetStream {}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ScriptBody>, ResetStream> {
    state.hits.fetch_add(1, Ordering::Relaxed);
    let now = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    state.max_in_flight.fetch_max(now, Ordering::Relaxed);
    let _gauge = InFlight(Arc::clone(&state));

    *lock(&state.last_headers) = req.headers().clone();
    let from_header = req
        .headers()
        .get(SCRIPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Action::parse);
    let action = lock(&state.queue)
        .pop_front()
        .or(from_header)
        .unwrap_or_else(|| lock(&state.default).clone());

    // Read the request body, as a server does before answering.
    let body = http_body_util::BodyExt::collect(req.into_body())
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    {
        let mut bodies = lock(&state.bodies);
        if bodies.len() == 64 {
            bodies.pop_front();
        }
        bodies.push_back(body);
    }

    let served_by =
        HeaderValue::from_str(&state.name).unwrap_or_else(|_| HeaderValue::from_static("?"));
    let grpc = |code: i32, trailers_only: bool| {
        let mut res = Response::new(ScriptBody {
            data: None,
            trailers: None,
        });
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        res.headers_mut().insert(SERVED_BY, served_by.clone());
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from(code));
        if trailers_only {
            res.headers_mut().extend(t);
        } else {
            res.body_mut().trailers = Some(t);
        }
        res
    };
    match action {
        Action::Respond {
            status,
            delay,
            headers,
        } => {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut res = Response::new(ScriptBody {
                data: Some(Bytes::from(state.name.clone())),
                trailers: None,
            });
            *res.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            res.headers_mut().insert(SERVED_BY, served_by);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    res.headers_mut().append(k, v);
                }
            }
            Ok(res)
        }
        Action::GrpcTrailersOnly(code) => Ok(grpc(code, true)),
        Action::GrpcTrailers(code) => Ok(grpc(code, false)),
        Action::Reset => Err(ResetStream),
        Action::Hang => {
            std::future::pending::<()>().await;
            Err(ResetStream)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_script_forms() {
        assert_eq!(Action::parse("status=503"), Some(Action::status(503)));
        assert_eq!(
            Action::parse("delay=100ms"),
            Some(Action::delayed(Duration::from_millis(100)))
        );
        assert_eq!(Action::parse("grpc=14"), Some(Action::GrpcTrailersOnly(14)));
        assert_eq!(
            Action::parse("grpc-trailers=8"),
            Some(Action::GrpcTrailers(8))
        );
        assert_eq!(Action::parse("reset"), Some(Action::Reset));
        assert_eq!(Action::parse("hang"), Some(Action::Hang));
        assert_eq!(Action::parse("nonsense"), None);
    }
}
