//! Request mirroring (Istio `mirror` + `mirrorPercentage`, Envoy
//! `RequestMirrorPolicy`): a copy of a request is sent to another cluster
//! and its result thrown away.
//!
//! The copy must never affect the caller, so it never waits: the
//! [`Shaping`](super::Shaping) layer hands it to a bounded queue with
//! `try_send` and goes on. One worker task per [`Mesh`](crate::Mesh),
//! owned by it and ended with it, sends the queued copies with at most
//! [`MAX_IN_FLIGHT`] at once. When the queue is full the copy is dropped
//! and counted, never buffered further: mirroring is best-effort in Envoy
//! too.
//!
//! A copy goes to an endpoint of the mirror cluster picked by that
//! cluster's balancer, with `-shadow` appended to the host of its
//! authority (`reviews:9080` becomes `reviews-shadow:9080`), as Envoy's
//! shadow writer does (envoyproxy/envoy#2595 put the suffix before the
//! port). Only requests whose body is known to be empty are copied: a
//! streaming body would have to be buffered for the copy, which could
//! delay the caller; such requests are counted as skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use http::Request;
use http::uri::{Authority, Uri};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use crate::body::BoxBody;
use crate::endpoint::InFlight;
use crate::runtime::ClusterRuntime;

/// Copies waiting to be sent, at most.
pub const QUEUE_CAPACITY: usize = 64;
/// Copies being sent at once, at most.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a copy may take when its route sets no timeout: Envoy's
/// default route timeout, 15 s (`RouteAction.timeout`), which also bounds
/// its shadow requests.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// Counters of mirrored requests.
#[derive(Debug, Default)]
pub struct MirrorStats {
    queued: AtomicU64,
    dropped: AtomicU64,
    skipped: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

impl MirrorStats {
    /// Copies queued for sending.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Copies dropped because the queue was full (or no worker runs).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Requests not copied because their body was not known to be empty.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Copies answered by the mirror cluster (any status).
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    /// Copies that failed (no endpoint, connect error, timeout).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

pub(crate) struct MirrorJob {
    cluster: Arc<ClusterRuntime>,
    req: Request<BoxBody>,
    timeout: Duration,
}

/// The sending side of a mesh's mirror worker.
#[derive(Clone, Debug)]
pub struct Mirrors {
    tx: Option<mpsc::Sender<MirrorJob>>,
    stats: Arc<MirrorStats>,
}

impl Default for Mirrors {
    /// Mirrors with no worker: every copy is dropped and counted.
    fn default() -> Self {
        Self {
            tx: None,
            stats: Arc::default(),
        }
    }
}

impl std::fmt::Debug for MirrorJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorJob")
            .field("cluster", &self.cluster.config.name)
            .finish_non_exhaustive()
    }
}

impl Mirrors {
    /// A worker and its handle. The caller owns the task.
    pub(crate) fn spawn() -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let stats = Arc::new(MirrorStats::default());
        let task = tokio::spawn(worker(rx, Arc::clone(&stats)));
        (
            Self {
                tx: Some(tx),
                stats,
            },
            task,
        )
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<MirrorStats> {
        &self.stats
    }

    pub(crate) fn skip(&self) {
        self.stats.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a copy of `req` (whose body is empty) for `cluster`, or
    /// drops it when the queue is full.
    pub(crate) fn send<B>(
        &self,
        cluster: Arc<ClusterRuntime>,
        req: &Request<B>,
        timeout: Duration,
    ) {
        let Some(tx) = &self.tx else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // Reserve first so that a full queue costs no copy.
        let Ok(permit) = tx.try_reserve() else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut copy = Request::new(crate::body::boxed(http_body_util::Empty::new()));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = shadow_uri(req.uri());
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        if let Some(host) = copy.headers().get(http::header::HOST)
            && let Ok(h) = host.to_str()
            && let Ok(v) = http::HeaderValue::try_from(shadow_authority(h))
        {
            copy.headers_mut().insert(http::header::HOST, v);
        }
        permit.send(MirrorJob {
            cluster,
            req: copy,
            timeout,
        });
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
    }
}

/// `host[:port]` with `-shadow` appended to the host, as Envoy's shadow
/// writer names a mirrored request's authority.
pub fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{authority}-shadow"),
    }
}

fn shadow_uri(uri: &Uri) -> Uri {
    let mut parts = uri.clone().into_parts();
    if let Some(a) = &parts.authority
        && let Ok(shadow) = Authority::try_from(shadow_authority(a.as_str()))
    {
        parts.authority = Some(shadow);
    }
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

async fn worker(mut rx: mpsc::Receiver<MirrorJob>, stats: Arc<MirrorStats>) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = rx.recv(), if in_flight.len() < MAX_IN_FLIGHT => match job {
                Some(job) => in_flight.push(send(job)),
                None => break,
            },
            Some(ok) = in_flight.next(), if !in_flight.is_empty() => {
                let counter = if ok { &stats.completed } else { &stats.failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    while let Some(ok) = in_flight.next().await {
        let counter = if ok { &stats.completed } else { &stats.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends one copy and reads its response to the end; true when answered.
async fn send(job: MirrorJob) -> bool {
    let Some(endpoint) = job.cluster.pick(None) else {
        return false;
    };
    let in_flight = InFlight::start(Arc::clone(endpoint));
    let exchange = async {
        let (res, _stream) = in_flight.endpoint().send(job.req).await.ok()?;
        res.into_body().collect().await.ok()?;
        Some(())
    };
    matches!(
        tokio::time::timeout(job.timeout, exchange).await,
        Ok(Some(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_goes_before_the_port() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(
            shadow_uri(&"http://reviews:9080/a?b=1".parse().unwrap()),
            "http://reviews-shadow:9080/a?b=1"
        );
    }
}
