//! The counters a circuit breaker enforces its limits with.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_core::model::{ConnectionLimits, Protocol};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Counts of one cluster's circuit breaker, shared by every state the
/// cluster has had (they survive limit changes and config pushes).
#[derive(Debug, Default)]
pub struct BreakerStats {
    pub(crate) overflow_requests: AtomicU64,
    pub(crate) overflow_pending: AtomicU64,
}

impl BreakerStats {
    /// Requests failed fast because `http2MaxRequests` requests were in
    /// flight (Envoy `upstream_rq_pending_overflow`, requests part).
    pub fn overflow_requests(&self) -> u64 {
        self.overflow_requests.load(Ordering::Relaxed)
    }

    /// Requests failed fast because every connection was busy and
    /// `http1MaxPendingRequests` requests were already waiting (Envoy
    /// `upstream_rq_pending_overflow`, pending part).
    pub fn overflow_pending(&self) -> u64 {
        self.overflow_pending.load(Ordering::Relaxed)
    }
}

/// The live counters of one cluster's limits: requests in flight, and
/// for HTTP/1.1 the connections in use and the requests waiting for one.
///
/// Shared by every client of the cluster in the process (the mesh keeps
/// one per cluster name), as Envoy's circuit breakers are per cluster and
/// per proxy. Admission is one `fetch_add` on the request counter; an
/// HTTP/1.1 request then takes a connection slot with a non-blocking
/// `try_acquire`, and waits only when every slot is taken and fewer than
/// `max_pending_requests` requests already wait, so the wait queue is
/// bounded by config.
#[derive(Debug)]
pub struct BreakerState {
    cluster: Arc<str>,
    limits: ConnectionLimits,
    requests: AtomicU64,
    pending: AtomicU64,
    // HTTP/1.1 only: one request per connection at a time, so connections
    // in use are bounded by bounding the requests holding one.
    connections: Option<Arc<Semaphore>>,
    stats: Arc<BreakerStats>,
}

impl BreakerState {
    /// State enforcing `limits` for a cluster named `cluster` whose
    /// endpoints speak `protocol`.
    pub fn new(cluster: &str, limits: ConnectionLimits, protocol: Protocol) -> Arc<Self> {
        Self::with_stats(cluster, limits, protocol, Arc::default())
    }

    pub(crate) fn with_stats(
        cluster: &str,
        limits: ConnectionLimits,
        protocol: Protocol,
        stats: Arc<BreakerStats>,
    ) -> Arc<Self> {
        let bounded = limits.max_connections != u32::MAX;
        let connections = (protocol == Protocol::Http1 && bounded).then(|| {
            Arc::new(Semaphore::new(
                (limits.max_connections as usize).min(Semaphore::MAX_PERMITS),
            ))
        });
        Arc::new(Self {
            cluster: cluster.into(),
            limits,
            requests: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            connections,
            stats,
        })
    }

    /// The limits enforced.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Requests admitted and not yet finished.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests waiting for an HTTP/1.1 connection slot.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The overflow counts.
    pub fn stats(&self) -> &BreakerStats {
        &self.stats
    }

    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    pub(crate) fn connections(&self) -> Option<&Arc<Semaphore>> {
        self.connections.as_ref()
    }

    /// Admits one request, or says which limit is reached.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Admitted, Overflow> {
        let max = u64::from(self.limits.max_requests);
        if self.requests.fetch_add(1, Ordering::Relaxed) >= max {
            self.requests.fetch_sub(1, Ordering::Relaxed);
            self.stats.overflow_requests.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Requests(self.limits.max_requests));
        }
        let permit = Permit {
            state: Arc::clone(self),
            connection: None,
        };
        let Some(sem) = &self.connections else {
            return Ok(Admitted::Now(permit));
        };
        match Arc::clone(sem).try_acquire_owned() {
            Ok(c) => Ok(Admitted::Now(permit.with_connection(c))),
            Err(TryAcquireError::Closed) => Ok(Admitted::Now(permit)),
            Err(TryAcquireError::NoPermits) => {
                let max = u64::from(self.limits.max_pending_requests);
                if self.pending.fetch_add(1, Ordering::Relaxed) >= max {
                    self.pending.fetch_sub(1, Ordering::Relaxed);
                    self.stats.overflow_pending.fetch_add(1, Ordering::Relaxed);
                    return Err(Overflow::Pending(self.limits.max_pending_requests));
                }
                Ok(Admitted::Wait(permit, Pending(Arc::clone(self))))
            }
        }
    }
}

/// Which limit a request overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    Requests(u32),
    Pending(u32),
}

pub(crate) enum Admitted {
    Now(Permit),
    // Admitted as a request; must wait for a connection slot.
    Wait(Permit, Pending),
}

/// One request waiting for a connection slot, until dropped.
pub(crate) struct Pending(Arc<BreakerState>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted request. Dropping it (when the response body ends, or
/// when the request fails) frees its place under the limits.
pub struct Permit {
    state: Arc<BreakerState>,
    connection: Option<OwnedSemaphorePermit>,
}

impl Permit {
    pub(crate) fn with_connection(mut self, c: OwnedSemaphorePermit) -> Self {
        self.connection = Some(c);
        self
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("cluster", &self.state.cluster)
            .finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.state.requests.fetch_sub(1, Ordering::Relaxed);
    }
}
