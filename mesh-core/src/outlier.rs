//! Outlier detection: the state machine that ejects failing endpoints
//! from balancing for a while (Envoy "Outlier detection", Istio
//! `DestinationRule.trafficPolicy.outlierDetection`, gRFC A50).
//!
//! Two kinds of detection, as in Envoy:
//!
//! - **consecutive** (`consecutive5xxErrors`, `consecutiveGatewayErrors`,
//!   `consecutiveLocalOriginFailures`): counted per response where the
//!   response (or the connect error or reset) is seen, and an endpoint is
//!   ejected the moment its count reaches the threshold;
//! - **interval** (success rate, failure percentage): every `interval` the
//!   counts of the last interval are compared across endpoints and the
//!   outliers are ejected; the counts then restart.
//!
//! The n-th ejection of an endpoint lasts `n × baseEjectionTime`, at most
//! `max(baseEjectionTime, maxEjectionTime)`; every interval an endpoint
//! spends un-ejected lowers `n` by one again (Envoy's ejection multiplier).
//! An ejected endpoint returns at the first interval sweep after its time,
//! as in Envoy. At most `maxEjectionPercent` of the endpoints are ejected
//! at once, but at least one may always be (Envoy: "will eject at least
//! one host regardless of the value"). When fewer than
//! `minHealthPercent` of the endpoints are un-ejected, the balancer
//! ignores ejections and uses every endpoint (Envoy's panic mode; Istio
//! sets the panic threshold from `minHealthPercent`).
//!
//! Without `splitExternalLocalOriginErrors`, a local-origin failure
//! (connect failure, reset) counts as a 5xx and as a gateway error, as
//! Envoy maps it to 503; with it, such failures count only towards
//! `consecutiveLocalOriginFailures`, and responses only towards the
//! others.
//!
//! **Where the sweep runs:** lazily, on the request path: whoever records
//! or picks first after `interval` has passed wins a compare-and-swap on
//! the next sweep time and runs it (O(endpoints), once per interval, no
//! allocation). So no task per cluster is needed and state is plain
//! atomics; the cost is one clock read per request on clusters with
//! outlier detection. The clock is the caller's (`now` in nanoseconds
//! since any fixed epoch), so tests run on paused time.
//!
//! Everything is atomics: recording costs a few relaxed operations and
//! takes no lock.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::model::OutlierDetection;

/// What one attempt at an endpoint produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers with this HTTP status arrived.
    Response(u16),
    /// The endpoint failed locally: connect failure, timeout or reset.
    LocalFailure,
}

/// The outlier state of one endpoint. Lives with the endpoint's runtime
/// state, so it survives config pushes that keep the endpoint.
#[derive(Debug, Default)]
pub struct HostOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    successes: AtomicU64,
    failures: AtomicU64,
    ejected: AtomicBool,
    ejected_at: AtomicU64,
    multiplier: AtomicU32,
}

impl HostOutlier {
    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// How many ejections the next one will count as, minus one (Envoy's
    /// ejection multiplier).
    pub fn multiplier(&self) -> u32 {
        self.multiplier.load(Ordering::Relaxed)
    }

    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_local.store(0, Ordering::Relaxed);
    }
}

/// Why an endpoint was ejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectionReason {
    /// `consecutive5xxErrors`.
    Consecutive5xx,
    /// `consecutiveGatewayErrors`.
    ConsecutiveGateway,
    /// `consecutiveLocalOriginFailures`.
    ConsecutiveLocalOrigin,
    /// The success-rate algorithm.
    SuccessRate,
    /// The failure-percentage algorithm.
    FailurePercentage,
}

/// Ejection counts of one cluster (Envoy `outlier_detection.*` stats).
#[derive(Debug, Default)]
pub struct OutlierStats {
    ejections: [AtomicU64; 5],
    overflow: AtomicU64,
}

impl OutlierStats {
    /// Ejections for `reason` so far (Envoy `ejections_enforced_*`).
    pub fn ejections(&self, reason: EjectionReason) -> u64 {
        self.ejections[reason as usize].load(Ordering::Relaxed)
    }

    /// All ejections so far (Envoy `ejections_enforced_total`).
    pub fn ejections_total(&self) -> u64 {
        self.ejections
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .sum()
    }

    /// Ejections skipped because `maxEjectionPercent` was reached (Envoy
    /// `ejections_overflow`).
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }
}

/// The detector of one cluster: its config, how many of its endpoints are
/// ejected, and when the next interval sweep is due.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierDetection,
    ejected: AtomicU32,
    next_sweep: AtomicU64,
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl OutlierDetector {
    /// A detector for `config`; `hosts` are the cluster's endpoints (some
    /// may already be ejected from before a config push) and `now` the
    /// current time. The first sweep is one interval from `now`, or the
    /// sweep time of `previous`.
    pub fn new<'a>(
        config: OutlierDetection,
        hosts: impl Iterator<Item = &'a HostOutlier>,
        now: u64,
        previous: Option<&OutlierDetector>,
    ) -> Self {
        let ejected = hosts.filter(|h| h.is_ejected()).count() as u32;
        let next = previous
            .map(|p| p.next_sweep.load(Ordering::Relaxed))
            .unwrap_or_else(|| now.saturating_add(nanos(config.interval)));
        Self {
            config,
            ejected: AtomicU32::new(ejected),
            next_sweep: AtomicU64::new(next),
        }
    }

    /// The config.
    pub fn config(&self) -> &OutlierDetection {
        &self.config
    }

    /// Endpoints ejected now.
    pub fn ejected(&self) -> u32 {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Whether the balancer must ignore ejections: fewer than
    /// `minHealthPercent` of the `total` endpoints are un-ejected (Envoy
    /// panic mode). With the default 0 this never happens.
    pub fn panic(&self, total: usize) -> bool {
        let healthy = (total as u64).saturating_sub(u64::from(self.ejected()));
        healthy * 100 < u64::from(self.config.min_health_percent) * total as u64
    }

    /// Whether the balancer should skip `host` now.
    pub fn skips(&self, host: &HostOutlier, total: usize) -> bool {
        host.is_ejected() && !self.panic(total)
    }

    /// Records one outcome at `host`, ejecting it if a consecutive
    /// threshold is reached. Returns the reason when it was ejected.
    pub fn record(
        &self,
        host: &HostOutlier,
        outcome: Outcome,
        now: u64,
        total: usize,
        stats: &OutlierStats,
    ) -> Option<EjectionReason> {
        let c = &self.config;
        let (five_xx, gateway, local) = match outcome {
            Outcome::Response(s) if s >= 500 => (true, matches!(s, 502..=504), false),
            Outcome::Response(_) => {
                host.successes.fetch_add(1, Ordering::Relaxed);
                host.reset_consecutive();
                return None;
            }
            // Not split: a local failure is a 503 (Envoy maps connect
            // failures and resets to gateway errors).
            Outcome::LocalFailure if !c.split_external_local_origin_errors => (true, true, false),
            Outcome::LocalFailure => (false, false, true),
        };
        host.failures.fetch_add(1, Ordering::Relaxed);
        if host.is_ejected() {
            return None;
        }
        let bump = |counter: &AtomicU32, hit: bool, threshold: Option<u32>| -> bool {
            if !hit {
                return false;
            }
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            threshold.is_some_and(|t| n >= t)
        };
        let reason = if bump(&host.consecutive_5xx, five_xx, c.consecutive_5xx) {
            EjectionReason::Consecutive5xx
        } else if bump(
            &host.consecutive_gateway,
            gateway,
            c.consecutive_gateway_errors,
        ) {
            EjectionReason::ConsecutiveGateway
        } else if bump(
            &host.consecutive_local,
            local,
            c.consecutive_local_origin_failures,
        ) {
            EjectionReason::ConsecutiveLocalOrigin
        } else {
            return None;
        };
        self.eject(host, reason, now, total, stats)
            .then_some(reason)
    }

    /// Ejects `host` unless that would pass `maxEjectionPercent` or the
    /// cluster is below `minHealthPercent`.
    fn eject(
        &self,
        host: &HostOutlier,
        reason: EjectionReason,
        now: u64,
        total: usize,
        stats: &OutlierStats,
    ) -> bool {
        host.reset_consecutive();
        if self.panic(total) {
            return false;
        }
        let max = u64::from(self.config.max_ejection_percent);
        let allowed = self
            .ejected
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                let after = u64::from(e) + 1;
                (e == 0 || after * 100 <= max * total as u64).then_some(e + 1)
            })
            .is_ok();
        if !allowed {
            stats.overflow.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if host.ejected.swap(true, Ordering::Relaxed) {
            // Someone else ejected it first.
            self.ejected.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        host.ejected_at.store(now, Ordering::Relaxed);
        host.multiplier.fetch_add(1, Ordering::Relaxed);
        stats.ejections[reason as usize].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Runs the interval sweep over `hosts` if one is due at `now`: returns
    /// expired ejections, lowers the multiplier of healthy endpoints, runs
    /// the success-rate and failure-percentage algorithms, and restarts the
    /// interval counts. Returns whether it ran.
    pub fn maybe_sweep<'a, I>(&self, hosts: I, now: u64, stats: &OutlierStats) -> bool
    where
        I: Iterator<Item = &'a HostOutlier> + Clone,
    {
        let due = self.next_sweep.load(Ordering::Relaxed);
        if now < due {
            return false;
        }
        let next = now.saturating_add(nanos(self.config.interval));
        if self
            .next_sweep
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false; // another caller sweeps
        }
        self.sweep(hosts, now, stats);
        true
    }

    fn sweep<'a, I>(&self, hosts: I, now: u64, stats: &OutlierStats)
    where
        I: Iterator<Item = &'a HostOutlier> + Clone,
    {
        let c = &self.config;
        let base = nanos(c.base_ejection_time);
        let max = nanos(c.max_ejection_time.max(c.base_ejection_time));
        let total = hosts.clone().count();
        let mut ejected = 0;
        for h in hosts.clone() {
            if h.is_ejected() {
                let n = u64::from(h.multiplier().max(1));
                let length = base.saturating_mul(n).min(max);
                if now >= h.ejected_at.load(Ordering::Relaxed).saturating_add(length) {
                    h.ejected.store(false, Ordering::Relaxed);
                    h.reset_consecutive();
                } else {
                    ejected += 1;
                }
            } else {
                let _ = h
                    .multiplier
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| m.checked_sub(1));
            }
        }
        self.ejected.store(ejected, Ordering::Relaxed);

        if let Some(sr) = c.success_rate {
            // gRFC A50 / Envoy: mean and standard deviation of the success
            // rates of endpoints with enough requests.
            let rates = || {
                hosts.clone().filter_map(|h| {
                    let s = h.successes.load(Ordering::Relaxed);
                    let f = h.failures.load(Ordering::Relaxed);
                    (s + f >= u64::from(sr.request_volume) && s + f > 0)
                        .then(|| (h, s as f64 / (s + f) as f64))
                })
            };
            let n = rates().count();
            if n > 0 && n >= sr.minimum_hosts as usize {
                let mean = rates().map(|(_, r)| r).sum::<f64>() / n as f64;
                let var = rates().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n as f64;
                let threshold = mean - var.sqrt() * (f64::from(sr.stdev_factor) / 1000.0);
                for (h, r) in rates() {
                    if r < threshold && enforce(sr.enforcement_percentage) && !h.is_ejected() {
                        self.eject(h, EjectionReason::SuccessRate, now, total, stats);
                    }
                }
            }
        }
        if let Some(fp) = c.failure_percentage {
            let volumes = || {
                hosts.clone().filter_map(|h| {
                    let s = h.successes.load(Ordering::Relaxed);
                    let f = h.failures.load(Ordering::Relaxed);
                    (s + f >= u64::from(fp.request_volume) && s + f > 0).then_some((h, s, f))
                })
            };
            if volumes().count() >= fp.minimum_hosts as usize {
                for (h, s, f) in volumes() {
                    let pct = f * 100 / (s + f);
                    if pct >= u64::from(fp.threshold)
                        && enforce(fp.enforcement_percentage)
                        && !h.is_ejected()
                    {
                        self.eject(h, EjectionReason::FailurePercentage, now, total, stats);
                    }
                }
            }
        }
        for h in hosts {
            h.successes.store(0, Ordering::Relaxed);
            h.failures.store(0, Ordering::Relaxed);
        }
    }
}

/// Whether an ejection passes its `enforcement_percentage` draw.
fn enforce(percent: u32) -> bool {
    percent >= 100 || fastrand::u32(0..100) < percent
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{FailurePercentageEjection, SuccessRateEjection};

    const S: u64 = 1_000_000_000;

    struct Cluster {
        d: OutlierDetector,
        hosts: Vec<HostOutlier>,
        stats: OutlierStats,
    }

    impl Cluster {
        fn new(config: OutlierDetection, n: usize) -> Self {
            let hosts: Vec<HostOutlier> = (0..n).map(|_| HostOutlier::default()).collect();
            Self {
                d: OutlierDetector::new(config, hosts.iter(), 0, None),
                hosts,
                stats: OutlierStats::default(),
            }
        }

        fn record(&self, i: usize, o: Outcome, now: u64) -> Option<EjectionReason> {
            self.d
                .record(&self.hosts[i], o, now, self.hosts.len(), &self.stats)
        }

        fn sweep(&self, now: u64) -> bool {
            self.d.maybe_sweep(self.hosts.iter(), now, &self.stats)
        }

        fn ejected(&self) -> Vec<bool> {
            self.hosts.iter().map(|h| h.is_ejected()).collect()
        }
    }

    fn config() -> OutlierDetection {
        OutlierDetection {
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        }
    }

    #[test]
    fn five_consecutive_5xx_eject_and_a_success_resets_the_count() {
        let c = Cluster::new(config(), 2);
        for _ in 0..4 {
            assert_eq!(c.record(0, Outcome::Response(500), 0), None);
        }
        c.record(0, Outcome::Response(200), 0);
        for _ in 0..4 {
            assert_eq!(c.record(0, Outcome::Response(503), 0), None);
        }
        assert_eq!(
            c.record(0, Outcome::Response(500), 0),
            Some(EjectionReason::Consecutive5xx)
        );
        assert_eq!(c.ejected(), [true, false]);
        assert_eq!(c.stats.ejections(EjectionReason::Consecutive5xx), 1);
    }

    #[test]
    fn gateway_errors_and_local_failures_count_as_configured() {
        let c = Cluster::new(
            OutlierDetection {
                consecutive_5xx: None,
                consecutive_gateway_errors: Some(2),
                ..config()
            },
            3,
        );
        c.record(0, Outcome::Response(500), 0);
        assert_eq!(
            c.record(0, Outcome::Response(500), 0),
            None,
            "500 is no gateway error"
        );
        c.record(0, Outcome::Response(502), 0);
        assert_eq!(
            c.record(0, Outcome::LocalFailure, 0),
            Some(EjectionReason::ConsecutiveGateway),
            "not split: a connect failure is a gateway error"
        );

        let split = Cluster::new(
            OutlierDetection {
                split_external_local_origin_errors: true,
                consecutive_local_origin_failures: Some(2),
                ..config()
            },
            3,
        );
        for _ in 0..4 {
            split.record(0, Outcome::Response(503), 0);
        }
        split.record(0, Outcome::LocalFailure, 0);
        assert_eq!(
            split.record(0, Outcome::LocalFailure, 0),
            Some(EjectionReason::ConsecutiveLocalOrigin)
        );
        split.record(1, Outcome::LocalFailure, 0);
        for _ in 0..4 {
            assert_eq!(split.record(1, Outcome::Response(500), 0), None);
        }
        assert_eq!(
            split.record(1, Outcome::Response(500), 0),
            Some(EjectionReason::Consecutive5xx),
            "split: local failures do not count as 5xx"
        );
    }

    #[test]
    fn ejections_last_base_times_multiplier_up_to_the_maximum() {
        let cfg = OutlierDetection {
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(70),
            consecutive_5xx: Some(1),
            ..config()
        };
        let c = Cluster::new(cfg, 2);
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..3 {
            c.record(0, Outcome::Response(500), now);
            let start = now;
            while c.hosts[0].is_ejected() {
                now += S;
                c.sweep(now);
            }
            lengths.push((now - start) / S);
        }
        assert_eq!(lengths, [30, 60, 70], "30s, 2×30s, then capped at 70s");
        assert_eq!(c.hosts[0].multiplier(), 3);
        // Healthy intervals lower the multiplier again.
        for _ in 0..3 {
            now += S;
            c.sweep(now);
        }
        assert_eq!(c.hosts[0].multiplier(), 0);
    }

    #[test]
    fn max_ejection_percent_caps_ejections_but_allows_one() {
        let cfg = OutlierDetection {
            consecutive_5xx: Some(1),
            max_ejection_percent: 10,
            ..OutlierDetection::default()
        };
        let c = Cluster::new(cfg, 5);
        assert!(
            c.record(0, Outcome::Response(500), 0).is_some(),
            "one always may be"
        );
        assert_eq!(c.record(1, Outcome::Response(500), 0), None);
        assert_eq!(c.ejected(), [true, false, false, false, false]);
        assert_eq!(c.stats.overflow(), 1);

        let c = Cluster::new(
            OutlierDetection {
                consecutive_5xx: Some(1),
                max_ejection_percent: 50,
                ..OutlierDetection::default()
            },
            4,
        );
        for i in 0..4 {
            c.record(i, Outcome::Response(500), 0);
        }
        assert_eq!(c.ejected(), [true, true, false, false]);
    }

    #[test]
    fn below_min_health_percent_ejections_are_ignored() {
        let c = Cluster::new(
            OutlierDetection {
                consecutive_5xx: Some(1),
                min_health_percent: 60,
                ..config()
            },
            4,
        );
        c.record(0, Outcome::Response(500), 0);
        assert!(!c.d.panic(4), "3 of 4 healthy is 75%");
        assert!(c.d.skips(&c.hosts[0], 4));
        c.record(1, Outcome::Response(500), 0);
        assert!(c.d.panic(4), "2 of 4 healthy is 50% < 60%");
        assert!(!c.d.skips(&c.hosts[0], 4), "panic: every endpoint is used");
        assert_eq!(
            c.record(2, Outcome::Response(500), 0),
            None,
            "no more ejections"
        );
    }

    #[test]
    fn success_rate_ejects_endpoints_far_below_the_mean() {
        let c = Cluster::new(
            OutlierDetection {
                consecutive_5xx: None,
                success_rate: Some(SuccessRateEjection::default()),
                ..config()
            },
            6,
        );
        for i in 0..6 {
            for k in 0..100 {
                let failed = if i == 5 { k < 50 } else { k < 1 };
                c.record(i, Outcome::Response(if failed { 500 } else { 200 }), 0);
            }
        }
        assert!(!c.sweep(S), "not due before the interval");
        assert!(c.sweep(10 * S));
        assert_eq!(c.ejected(), [false, false, false, false, false, true]);
        assert_eq!(c.stats.ejections(EjectionReason::SuccessRate), 1);
    }

    #[test]
    fn failure_percentage_ejects_endpoints_above_the_threshold() {
        let c = Cluster::new(
            OutlierDetection {
                consecutive_5xx: None,
                failure_percentage: Some(FailurePercentageEjection::default()),
                ..config()
            },
            5,
        );
        for i in 0..5 {
            for k in 0..50 {
                let failed = i == 2 && k < 45;
                c.record(i, Outcome::Response(if failed { 503 } else { 200 }), 0);
            }
        }
        assert!(c.sweep(10 * S));
        assert_eq!(c.ejected(), [false, false, true, false, false]);
        // Too few requests in the next interval: nothing more is judged.
        c.record(3, Outcome::Response(500), 10 * S);
        assert!(c.sweep(20 * S));
        assert_eq!(c.stats.ejections(EjectionReason::FailurePercentage), 1);
    }

    #[test]
    fn sweeps_run_once_per_interval() {
        let c = Cluster::new(config(), 1);
        assert!(!c.sweep(9 * S));
        assert!(c.sweep(10 * S));
        assert!(!c.sweep(10 * S), "the next is one interval later");
        assert!(c.sweep(20 * S));
    }
}
