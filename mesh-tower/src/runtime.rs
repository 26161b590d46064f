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
use std::time::Duration;

// Keys are cluster names from config, so a fast hasher is safe.
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use mesh_core::lb::locality::{self, priority_load};
use mesh_core::lb::{
    LeastRequest, Maglev, PeakEwma, RingHash, RoundRobin, WeightedRandom, hash::request_hash,
    slow_start_factor,
};
use mesh_core::model::{
    Cluster, Endpoint, EndpointDiff, EndpointSet, HashKey, LbPolicy, LocalityLbSetting,
};
use mesh_core::outlier::{Outcome, OutlierDetector, OutlierStats};
use mesh_core::{ClusterName, Snapshot, Version};
use tokio::time::Instant;

use crate::breaker::{BreakerState, BreakerStats};
use crate::endpoint::{EndpointState, Transport, UpstreamTlsConfig};
use crate::mesh::Node;
use crate::retry::RetryState;
use mesh_identity::CredentialStore;

/// A snapshot with the runtime state of its clusters.
pub(crate) struct Runtime {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) clusters: HashMap<ClusterName, Arc<ClusterRuntime>>,
    // The zero of the outlier detectors' clocks, fixed for the mesh.
    epoch: Instant,
    // Where this process runs, for locality-aware balancing.
    node: Arc<Node>,
    // The workload's identity, for ISTIO_MUTUAL clusters.
    credentials: Option<Arc<CredentialStore>>,
    /// Server-side rate limits of the snapshot's server listeners.
    pub(crate) server_limits: Arc<[crate::ratelimit::ServerLimit]>,
}

/// Per-cluster state that lives as long as the cluster name does.
pub(crate) struct ClusterShared {
    /// Istio's standard metrics of the calls to this cluster.
    pub(crate) istio: Arc<crate::metrics::SeriesTable>,
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
    // The candidates grouped by locality (one group without locality
    // balancing), each with its own picker.
    groups: Box<[Group]>,
    choice: Choice,
    shared: Arc<ClusterShared>,
    breaker: Arc<BreakerState>,
    outlier: Option<OutlierDetector>,
    epoch: Instant,
    /// The cluster's client-side rate limit, kept while its config is.
    pub(crate) rate_limiter: Option<Arc<mesh_core::ratelimit::TokenBucketState>>,
    // Upstream TLS, built once per TLS setting.
    tls: Option<Arc<UpstreamTlsConfig>>,
}

/// Endpoints of one locality group (a priority level or a `distribute`
/// target) and their picker.
struct Group {
    // Indexes into `endpoints`.
    members: Box<[u32]>,
    picker: Picker,
}

/// How a request chooses its group.
enum Choice {
    Single,
    // Weighted over groups (`distribute`).
    Distribute(WeightedRandom),
    // Groups are priority levels, best first (failover).
    Priority,
}

/// The most priority levels weighed per pick; more are merged into the
/// last (Istio's locality failover has at most five).
const MAX_LEVELS: usize = 8;

enum Picker {
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    LeastRequest(LeastRequest),
    PeakEwma(PeakEwma),
    RingHash(RingHash),
    Maglev(Maglev),
}

impl Runtime {
    pub(crate) fn empty(node: Node, credentials: Option<Arc<CredentialStore>>) -> Self {
        Self {
            snapshot: Arc::new(Snapshot::default()),
            clusters: HashMap::default(),
            epoch: Instant::now(),
            node: Arc::new(node),
            credentials,
            server_limits: Arc::from([]),
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
                        &previous.node,
                        previous.credentials.as_ref(),
                    )),
                };
                (cluster.name.clone(), rt)
            })
            .collect();
        let server_limits = crate::ratelimit::server_limits(&snapshot, &previous.server_limits);
        Self {
            snapshot,
            clusters,
            epoch: previous.epoch,
            node: Arc::clone(&previous.node),
            credentials: previous.credentials.clone(),
            server_limits,
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
        node: &Node,
        credentials: Option<&Arc<CredentialStore>>,
    ) -> Self {
        // The TLS config is rebuilt only when the setting (or the HTTP
        // version, which decides ALPN) changed.
        let tls = match previous {
            Some(p) if p.config.tls == config.tls && p.config.protocol == config.protocol => {
                p.tls.clone()
            }
            _ => UpstreamTlsConfig::build(&config, credentials),
        };
        let transport = Transport::of(&config, tls.clone());
        let shared: Arc<ClusterShared> = match previous {
            Some(p) => Arc::clone(&p.shared),
            None => Arc::new(ClusterShared {
                istio: Arc::new(crate::metrics::SeriesTable::new(Some(config.name.clone()))),
                next: AtomicUsize::new(0),
                breaker_stats: Arc::default(),
                outlier_stats: OutlierStats::default(),
                retry: Arc::default(),
            }),
        };
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
                // Endpoints added after the cluster's first build warm up
                // (slow start); the first ones do not.
                _ => EndpointState::new(
                    ep,
                    transport.clone(),
                    previous.is_some(),
                    Arc::clone(&shared.istio),
                ),
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
        let (groups, choice) = locality_groups(&config, node, &candidates, new_eps);
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
        let rate_limiter = crate::ratelimit::carry(
            config.rate_limit,
            previous.and_then(|p| p.rate_limiter.as_ref()),
        );
        Self {
            shared,
            breaker,
            outlier,
            epoch,
            rate_limiter,
            tls,
            config,
            endpoint_set,
            endpoints,
            candidates: candidates.into(),
            groups,
            choice,
        }
    }

    /// Picks the endpoint for one request, or `None` when there is none.
    pub(crate) fn pick(&self, hash: Option<u64>) -> Option<&Arc<EndpointState>> {
        self.pick_avoiding(hash, |_| false)
    }

    /// The hash key of the cluster's consistent-hash policy, if it has one.
    pub(crate) fn hash_key(&self) -> Option<&HashKey> {
        match &self.config.lb_policy {
            LbPolicy::RingHash { key, .. } | LbPolicy::Maglev { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The request's hash under the cluster's consistent-hash policy.
    pub(crate) fn request_hash<B>(&self, req: &http::Request<B>) -> Option<u64> {
        self.hash_key()
            .and_then(|k| request_hash(k, req.uri(), req.headers()))
    }

    /// Whether attempts must be timed (peak EWMA) or their outcomes
    /// recorded (outlier detection).
    pub(crate) fn observes(&self) -> bool {
        self.outlier.is_some() || matches!(self.config.lb_policy, LbPolicy::PeakEwma { .. })
    }

    /// Picks an endpoint, skipping ejected ones (unless the cluster is in
    /// panic), ones that just failed to connect, and those `avoid` names (e.g. hosts a retry already tried).
    /// When the policy's pick is skipped, two uniform redraws follow, then
    /// a scan from a random start; when every endpoint is skipped, the
    /// policy's pick stands (Envoy's retry host predicates also give up
    /// after a few attempts). Allocation-free.
    pub(crate) fn pick_avoiding(
        &self,
        hash: Option<u64>,
        avoid: impl Fn(&EndpointState) -> bool,
    ) -> Option<&Arc<EndpointState>> {
        if self.candidates.is_empty() {
            return None;
        }
        let detector = self.outlier.as_ref().inspect(|d| {
            d.maybe_sweep(
                self.endpoints.iter().map(|e| e.outlier()),
                nanos_since(self.epoch),
                &self.shared.outlier_stats,
            );
        });
        let total = self.endpoints.len();
        let usable = |e: &EndpointState| {
            e.is_ready() && !(detector.is_some_and(|d| d.skips(e.outlier(), total)) || avoid(e))
        };
        let group = &self.groups[self.choose_group(detector)];
        let n = group.members.len();
        let at = |k: usize| &self.endpoints[group.members[k] as usize];
        let mut first = self.pick_index(group, hash);
        // Slow start (Envoy `SlowStartConfig`): an endpoint still warming
        // up keeps a pick with probability equal to its weight factor;
        // otherwise the policy draws again (at most 4 times).
        if let Some(ss) = &self.config.slow_start {
            for _ in 0..4 {
                let factor = at(first)
                    .added()
                    .map_or(1.0, |t| slow_start_factor(ss, t.elapsed()));
                if factor >= 1.0 || fastrand::f64() < factor {
                    break;
                }
                first = self.pick_index(group, hash);
            }
        }
        if usable(at(first)) {
            return Some(at(first));
        }
        for _ in 0..2 {
            let k = fastrand::usize(..n);
            if usable(at(k)) {
                return Some(at(k));
            }
        }
        let start = fastrand::usize(..n);
        if let Some(k) = (0..n).map(|i| (start + i) % n).find(|&k| usable(at(k))) {
            return Some(at(k));
        }
        // Nothing usable in the group: any usable candidate, best group
        // first.
        let found = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter())
            .map(|&i| &self.endpoints[i as usize])
            .find(|e| usable(e));
        Some(found.unwrap_or(at(first)))
    }

    /// The group a request draws from: the only one, a weighted draw over
    /// `distribute` targets, or a priority level by Envoy's priority load
    /// (all traffic to the best level until ejections lower its health).
    fn choose_group(&self, detector: Option<&OutlierDetector>) -> usize {
        match &self.choice {
            Choice::Single => 0,
            Choice::Distribute(w) => w.pick(),
            Choice::Priority => {
                let Some(d) = detector else { return 0 };
                if d.ejected() == 0 || d.panic(self.endpoints.len()) {
                    return 0;
                }
                let levels = self.groups.len().min(MAX_LEVELS);
                let mut loads = [0u64; MAX_LEVELS];
                let health = self.groups[..levels].iter().map(|g| {
                    let ejected = g
                        .members
                        .iter()
                        .filter(|&&i| self.endpoints[i as usize].outlier().is_ejected())
                        .count();
                    ((g.members.len() - ejected) as u32, g.members.len() as u32)
                });
                let sum = priority_load(health, &mut loads[..levels]);
                if sum == 0 {
                    return 0;
                }
                let mut r = fastrand::u64(..sum);
                for (i, &load) in loads[..levels].iter().enumerate() {
                    if r < load {
                        return i;
                    }
                    r -= load;
                }
                0
            }
        }
    }

    fn pick_index(&self, group: &Group, hash: Option<u64>) -> usize {
        let ep = |k: usize| &self.endpoints[group.members[k] as usize];
        let n = group.members.len();
        match &group.picker {
            Picker::RoundRobin(rr) => rr.pick(self.shared.next.fetch_add(1, Ordering::Relaxed)),
            Picker::Random(w) => w.pick(),
            Picker::LeastRequest(lr) => lr.pick(|k| ep(k).in_flight()),
            Picker::PeakEwma(p) => p.pick(n, |k| {
                let e = ep(k);
                p.cost(e.ewma(), e.in_flight())
            }),
            // Without a key the request goes anywhere (Envoy: a random
            // host when no hash is produced).
            Picker::RingHash(r) => hash.map_or_else(|| fastrand::usize(..n), |h| r.pick(h)),
            Picker::Maglev(m) => hash.map_or_else(|| fastrand::usize(..n), |h| m.pick(h)),
        }
    }

    /// The balancer's view of how loaded `endpoint` is, lower preferred:
    /// the peak EWMA cost under `PEAK_EWMA`, otherwise the requests in
    /// flight per unit of weight (what `LEAST_REQUEST` compares).
    pub(crate) fn load_score(&self, endpoint: &EndpointState) -> f64 {
        match self.groups.first().map(|g| &g.picker) {
            Some(Picker::PeakEwma(p)) => p.cost(endpoint.ewma(), endpoint.in_flight()),
            _ => endpoint.in_flight() as f64 / f64::from(endpoint.config().weight.max(1)),
        }
    }

    /// Records what an attempt at `endpoint` produced and how long it
    /// took, for outlier detection and peak EWMA.
    pub(crate) fn record(&self, endpoint: &EndpointState, outcome: Outcome, rtt: Duration) {
        if let Some(Picker::PeakEwma(p)) = self.groups.first().map(|g| &g.picker) {
            let failed = match outcome {
                Outcome::Response(s) => s >= 500,
                Outcome::LocalFailure => true,
            };
            p.observe(endpoint.ewma(), rtt, failed, nanos_since(self.epoch));
        }
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

    /// The outlier detector and its counts.
    pub(crate) fn outlier(&self) -> (Option<&OutlierDetector>, &OutlierStats) {
        (self.outlier.as_ref(), &self.shared.outlier_stats)
    }

    /// The circuit breaker state of the cluster.
    pub(crate) fn breaker(&self) -> &Arc<BreakerState> {
        &self.breaker
    }

    /// The cluster's retry budget and concurrent-retry gauge, kept for as
    /// long as the cluster exists.
    /// The cluster's standard metrics.
    pub(crate) fn istio(&self) -> &Arc<crate::metrics::SeriesTable> {
        &self.shared.istio
    }

    pub(crate) fn retry_state(&self) -> &Arc<RetryState> {
        &self.shared.retry
    }

    /// All endpoints with their state, for status output and tests.
    pub(crate) fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }
}

/// The picker for `members` (indexes into `eps`) under `policy`.
fn picker(policy: &LbPolicy, members: &[u32], eps: &[Endpoint]) -> Picker {
    let weights: Vec<u32> = members.iter().map(|&i| eps[i as usize].weight).collect();
    let ids = || -> Vec<String> {
        members
            .iter()
            .map(|&i| eps[i as usize].address.to_string())
            .collect()
    };
    match policy {
        LbPolicy::RoundRobin => Picker::RoundRobin(RoundRobin::new(&weights)),
        LbPolicy::Random => Picker::Random(WeightedRandom::new(&weights)),
        LbPolicy::LeastRequest { choice_count } => {
            Picker::LeastRequest(LeastRequest::new(&weights, *choice_count))
        }
        LbPolicy::PeakEwma { default_rtt, decay } => {
            Picker::PeakEwma(PeakEwma::new(*default_rtt, *decay))
        }
        LbPolicy::RingHash {
            minimum_ring_size,
            maximum_ring_size,
            ..
        } => Picker::RingHash(RingHash::new(
            &ids(),
            &weights,
            *minimum_ring_size,
            *maximum_ring_size,
        )),
        LbPolicy::Maglev { table_size, .. } => {
            Picker::Maglev(Maglev::new(&ids(), &weights, *table_size))
        }
    }
}

/// Groups the candidates by locality (Istio `localityLbSetting`, see
/// `mesh_core::lb::locality`): `distribute` targets when a rule matches
/// this node's locality; otherwise, with outlier detection on (Istio's
/// condition for failover), priority levels; otherwise one group. Needs
/// the node's locality; without it there is one group.
fn locality_groups(
    config: &Cluster,
    node: &Node,
    candidates: &[u32],
    eps: &[Endpoint],
) -> (Box<[Group]>, Choice) {
    let single = || {
        let g = Group {
            members: candidates.into(),
            picker: picker(&config.lb_policy, candidates, eps),
        };
        (Box::from([g]), Choice::Single)
    };
    let default = LocalityLbSetting::default();
    let setting = config.locality_lb.as_ref().unwrap_or(&default);
    if !setting.enabled || node.locality.is_empty() || candidates.is_empty() {
        return single();
    }
    let refs: Vec<&Endpoint> = candidates.iter().map(|&i| &eps[i as usize]).collect();
    let mut by_group: Vec<(Vec<u32>, u32)> = Vec::new();
    let choice = if let Some(dist) = locality::distribution(&node.locality, setting, &refs) {
        let count = dist
            .iter()
            .flatten()
            .map(|(g, _)| *g + 1)
            .max()
            .unwrap_or(0);
        by_group = (0..count).map(|_| (Vec::new(), 0)).collect();
        for (&i, d) in candidates.iter().zip(&dist) {
            if let Some((g, w)) = d {
                by_group[*g as usize].0.push(i);
                by_group[*g as usize].1 = *w;
            }
        }
        by_group.retain(|(m, _)| !m.is_empty());
        let weights: Vec<u32> = by_group.iter().map(|(_, w)| *w).collect();
        Choice::Distribute(WeightedRandom::new(&weights))
    } else if config.outlier_detection.is_some() {
        let prio = locality::priorities(&node.locality, &node.labels, setting, &refs);
        let levels = prio.iter().max().map_or(0, |m| *m as usize + 1);
        by_group = (0..levels).map(|_| (Vec::new(), 0)).collect();
        for (&i, &p) in candidates.iter().zip(&prio) {
            // Levels past the last weighed one merge into it.
            by_group[(p as usize).min(MAX_LEVELS - 1)].0.push(i);
        }
        by_group.retain(|(m, _)| !m.is_empty());
        Choice::Priority
    } else {
        Choice::Single
    };
    if by_group.len() <= 1 && matches!(choice, Choice::Priority) || by_group.is_empty() {
        return single();
    }
    let groups = by_group
        .into_iter()
        .map(|(members, _)| Group {
            picker: picker(&config.lb_policy, &members, eps),
            members: members.into(),
        })
        .collect();
    (groups, choice)
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn endpoint_config(state: &EndpointState) -> mesh_core::model::Endpoint {
    state.config().clone()
}
