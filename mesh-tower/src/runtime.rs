//! The runtime: a config snapshot joined with the state that outlives it.
//!
//! For every snapshot the store publishes, the mesh builds a [`Runtime`]:
//! the snapshot plus, per cluster, the endpoints to balance over and their
//! connection pools and load gauges. Building reuses everything that did
//! not change:
//!
//! - a cluster whose config and endpoint set are the same `Arc`s as before
//!   keeps its whole runtime;
//! - otherwise each endpoint keeps its state (pool, in-flight count) when
//!   its address, metadata and transport settings are unchanged (the
//!   [`EndpointDiff`] of `mesh-core`), and only new or changed endpoints
//!   get new state;
//! - per-cluster counters (the round-robin position, and later breakers and
//!   budgets) are kept by cluster name for as long as the cluster exists.
//!
//! The request path reads the runtime with one `ArcSwap` load, so a config
//! push changes behaviour from the next request on and drops nothing.

use std::sync::Arc;

// Keys are cluster names from config, so a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_core::lb::{LeastRequest, RoundRobin, WeightedRandom};
use mesh_core::model::{Cluster, EndpointDiff, EndpointSet, LbPolicy};
use mesh_core::outlier::{Outcome, OutlierDetector, OutlierStats};
use mesh_core::{ClusterName, Snapshot, Version};
use tokio::time::Instant;

use crate::breaker::{BreakerState, BreakerStats};
use crate::endpoint::{EndpointState, Transport};
use crate::retry::RetryState;

/// A snapshot with the runtime state of its clusters.
pub(crate) struct Runtime {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) clusters: HashMap<ClusterName, Arc<ClusterRuntime>>,
    // The zero of the outlier detectors' clocks, fixed for the mesh.
    epoch: Instant,
}

/// Per-cluster state that lives as long as the cluster name does.
#[derive(Default)]
pub(crate) struct ClusterShared {
    next: AtomicUsize,
    pub(crate) breaker_stats: Arc<BreakerStats>,
    pub(crate) outlier_stats: OutlierStats,
    // The retry budget and `http.maxRetries` gauge.
    retry: Arc<RetryState>,
}

/// One cluster as of one snapshot.
pub(crate) struct ClusterRuntime {
    pub(crate) config: Arc<Cluster>,
    endpoint_set: Option<Arc<EndpointSet>>,
    endpoints: Box<[Arc<EndpointState>]>,
    // Indexes into `endpoints` that requests may go to.
    candidates: Box<[u32]>,
    picker: Picker,
    shared: Arc<ClusterShared>,
    breaker: Arc<BreakerState>,
    outlier: Option<OutlierDetector>,
    epoch: Instant,
}

enum Picker {
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    LeastRequest(LeastRequest),
}

impl Runtime {
    pub(crate) fn empty() -> Self {
        Self {
            snapshot: Arc::new(Snapshot::default()),
            clusters: HashMap::default(),
            epoch: Instant::now(),
        }
    }

    pub(crate) fn version(&self) -> Version {
        self.snapshot.version()
    }

    /// The runtime for `snapshot`, reusing the state of `previous`.
    pub(crate) fn build(snapshot: Arc<Snapshot>, previous: &Runtime) -> Self {
        let clusters = snapshot
            .clusters()
            .map(|cluster| {
                let endpoints = snapshot.endpoints(cluster.name.as_str()).cloned();
                let rt = match previous.clusters.get(&cluster.name) {
                    Some(old)
                        if Arc::ptr_eq(&old.config, cluster)
                            && same_set(&old.endpoint_set, &endpoints) =>
                    {
                        Arc::clone(old)
                    }
                    old => Arc::new(ClusterRuntime::build(
                        Arc::clone(cluster),
                        endpoints,
                        old.map(|o| &**o),
                        previous.epoch,
                    )),
                };
                (cluster.name.clone(), rt)
            })
            .collect();
        Self {
            snapshot,
            clusters,
            epoch: previous.epoch,
        }
    }
}

fn same_set(a: &Option<Arc<EndpointSet>>, b: &Option<Arc<EndpointSet>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl ClusterRuntime {
    fn build(
        config: Arc<Cluster>,
        endpoint_set: Option<Arc<EndpointSet>>,
        previous: Option<&ClusterRuntime>,
        epoch: Instant,
    ) -> Self {
        let transport = Transport::of(&config);
        let new_eps = endpoint_set.as_ref().map_or(&[][..], |s| s.endpoints());
        let old_configs: Vec<_> = previous
            .map(|p| p.endpoints.iter().map(|e| endpoint_config(e)).collect())
            .unwrap_or_default();
        let diff = EndpointDiff::between(&old_configs, new_eps);
        let endpoints: Box<[Arc<EndpointState>]> = new_eps
            .iter()
            .zip(&diff.kept)
            .map(|(ep, kept)| match (kept, previous) {
                (Some(i), Some(p)) if p.endpoints[*i].reusable_for(ep, &transport) => {
                    Arc::clone(&p.endpoints[*i])
                }
                _ => EndpointState::new(ep, transport.clone()),
            })
            .collect();
        if let Some(p) = previous {
            for &i in &diff.removed {
                tracing::debug!(cluster = %config.name, endpoint = %p.endpoints[i].address(), "endpoint removed; draining");
            }
        }

        // Health: route to routable endpoints; when none is routable, to all
        // of them rather than to none (Envoy's panic mode, in its simplest
        // form: the threshold arrives with outlier detection).
        let mut candidates: Vec<u32> = new_eps
            .iter()
            .enumerate()
            .filter(|(_, e)| e.health.is_routable())
            .map(|(i, _)| i as u32)
            .collect();
        if candidates.is_empty() {
            candidates = (0..new_eps.len() as u32).collect();
        }
        let weights: Vec<u32> = candidates
            .iter()
            .map(|&i| new_eps[i as usize].weight)
            .collect();
        let picker = match &config.lb_policy {
            LbPolicy::RoundRobin => Picker::RoundRobin(RoundRobin::new(&weights)),
            LbPolicy::Random => Picker::Random(WeightedRandom::new(&weights)),
            other @ (LbPolicy::PeakEwma { .. }
            | LbPolicy::RingHash { .. }
            | LbPolicy::Maglev { .. }) => {
                // Balancers in progress (issue 3); nothing translates to
                // them yet.
                tracing::warn!(cluster = %config.name, policy = ?other, "load balancer not implemented yet; using LEAST_REQUEST");
                Picker::LeastRequest(LeastRequest::new(&weights, 2))
            }
            LbPolicy::LeastRequest { choice_count } => {
                Picker::LeastRequest(LeastRequest::new(&weights, *choice_count))
            }
        };
        let shared: Arc<ClusterShared> =
            previous.map(|p| Arc::clone(&p.shared)).unwrap_or_default();
        // The breaker's counters survive a push that keeps the limits; new
        // limits start new counters (requests admitted under the old ones
        // finish under them), with the overflow counts carried over.
        let breaker = match previous {
            Some(p) if p.config.limits == config.limits && p.config.protocol == config.protocol => {
                Arc::clone(&p.breaker)
            }
            _ => BreakerState::with_stats(
                config.name.as_str(),
                config.limits,
                config.protocol,
                Arc::clone(&shared.breaker_stats),
            ),
        };
        let outlier = config.outlier_detection.map(|od| {
            OutlierDetector::new(
                od,
                endpoints.iter().map(|e| e.outlier()),
                nanos_since(epoch),
                previous.and_then(|p| p.outlier.as_ref()),
            )
        });
        Self {
            shared,
            breaker,
            outlier,
            epoch,
            config,
            endpoint_set,
            endpoints,
            candidates: candidates.into(),
            picker,
        }
    }

    /// Picks the endpoint for one request, or `None` when there is none.
    pub(crate) fn pick(&self) -> Option<&Arc<EndpointState>> {
        self.pick_avoiding(|_| false)
    }

    /// Picks an endpoint, skipping ejected ones (unless the cluster is in
    /// panic) and those `avoid` names (e.g. hosts a retry already tried).
    /// When the policy's pick is skipped, two uniform redraws follow, then
    /// a scan from a random start; when every endpoint is skipped, the
    /// policy's pick stands (Envoy's retry host predicates also give up
    /// after a few attempts). Allocation-free.
    pub(crate) fn pick_avoiding(
        &self,
        avoid: impl Fn(&EndpointState) -> bool,
    ) -> Option<&Arc<EndpointState>> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        let at = |k: usize| &self.endpoints[self.candidates[k] as usize];
        let detector = self.outlier.as_ref().inspect(|d| {
            d.maybe_sweep(
                self.endpoints.iter().map(|e| e.outlier()),
                nanos_since(self.epoch),
                &self.shared.outlier_stats,
            );
        });
        let total = self.endpoints.len();
        let usable = |k: usize| {
            let e = at(k);
            !(detector.is_some_and(|d| d.skips(e.outlier(), total)) || avoid(e))
        };
        let first = self.pick_index();
        if usable(first) {
            return Some(at(first));
        }
        for _ in 0..2 {
            let k = fastrand::usize(..n);
            if usable(k) {
                return Some(at(k));
            }
        }
        let start = fastrand::usize(..n);
        let found = (0..n).map(|i| (start + i) % n).find(|&k| usable(k));
        Some(at(found.unwrap_or(first)))
    }

    fn pick_index(&self) -> usize {
        match &self.picker {
            Picker::RoundRobin(rr) => rr.pick(self.shared.next.fetch_add(1, Ordering::Relaxed)),
            Picker::Random(w) => w.pick(),
            Picker::LeastRequest(lr) => {
                lr.pick(|k| self.endpoints[self.candidates[k] as usize].in_flight())
            }
        }
    }

    /// Records what an attempt at `endpoint` produced, for outlier
    /// detection. A no-op without it.
    pub(crate) fn record(&self, endpoint: &EndpointState, outcome: Outcome) {
        if let Some(d) = &self.outlier {
            let now = nanos_since(self.epoch);
            let stats = &self.shared.outlier_stats;
            if let Some(reason) = d.record(
                endpoint.outlier(),
                outcome,
                now,
                self.endpoints.len(),
                stats,
            ) {
                tracing::debug!(cluster = %self.config.name, endpoint = %endpoint.address(), ?reason, "endpoint ejected");
            }
            d.maybe_sweep(self.endpoints.iter().map(|e| e.outlier()), now, stats);
        }
    }

    /// Whether outlier detection is on.
    pub(crate) fn detects_outliers(&self) -> bool {
        self.outlier.is_some()
    }

    /// The outlier detector and its counts.
    pub(crate) fn outlier(&self) -> (Option<&OutlierDetector>, &OutlierStats) {
        (self.outlier.as_ref(), &self.shared.outlier_stats)
    }

    /// The circuit breaker state of the cluster.
    pub(crate) fn breaker(&self) -> &Arc<BreakerState> {
        &self.breaker
    }

    /// The endpoints requests may go to now.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = &Arc<EndpointState>> {
        self.candidates.iter().map(|&i| &self.endpoints[i as usize])
    }

    /// The cluster's retry budget and concurrent-retry gauge, kept for as
    /// long as the cluster exists.
    pub(crate) fn retry_state(&self) -> &Arc<RetryState> {
        &self.shared.retry
    }

    /// All endpoints with their state, for status output and tests.
    pub(crate) fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn endpoint_config(state: &EndpointState) -> mesh_core::model::Endpoint {
    state.config().clone()
}
