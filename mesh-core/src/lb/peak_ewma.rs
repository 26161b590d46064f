//! Peak-EWMA power of two choices: Linkerd's default balancer (from
//! Finagle's `p2cPeakEwma`, tower's `PeakEwma`).
//!
//! Each endpoint keeps an estimate of its round-trip time that jumps up to
//! any slower sample at once (peak-sensitive) and decays towards faster
//! ones with time constant `decay` (Linkerd: 10 s). Its cost is
//! `estimate × (in_flight + 1)`; the balancer draws two endpoints and
//! takes the cheaper.
//!
//! Two rules beyond tower's:
//!
//! - **cold start:** an endpoint with no sample yet and nothing in flight
//!   costs 0, so a new endpoint is tried as soon as it is drawn instead of
//!   looking `default_rtt` (30 ms) slow next to endpoints answering in
//!   1 ms and never being chosen; with requests in flight it costs
//!   `default_rtt × (in_flight + 1)` until its first sample.
//! - **failures cost:** a failed attempt (5xx, connect error, reset) is
//!   recorded as a sample of `FAILURE_PENALTY × max(rtt, estimate,
//!   default_rtt)`, so an endpoint that fails fast looks slow rather than
//!   fast and is not rewarded with more traffic; the penalty decays like
//!   any sample.
//!
//! State is two atomics per endpoint (the estimate as `f64` bits and the
//! time of the last sample); updates race benignly (a lost update is one
//! lost sample).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The peak-EWMA policy of a cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeakEwma {
    default_rtt: f64,
    decay: f64,
}

/// How much worse than its RTT a failure makes an endpoint look.
pub(crate) const FAILURE_PENALTY: f64 = 5.0;

/// The latency estimate of one endpoint.
#[derive(Debug, Default)]
pub struct EwmaState {
    // f64 nanoseconds; 0 until the first sample.
    estimate: AtomicU64,
    stamp: AtomicU64,
}

impl PeakEwma {
    /// A policy with `default_rtt` for unmeasured endpoints and time
    /// constant `decay` (Linkerd: 30 ms and 10 s).
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            default_rtt: default_rtt.as_nanos() as f64,
            decay: (decay.as_nanos() as f64).max(1.0),
        }
    }

    /// Records one attempt at `state` that took `rtt` until its response
    /// headers (or failure), at `now` (nanoseconds on the caller's clock).
    pub fn observe(&self, state: &EwmaState, rtt: Duration, failed: bool, now: u64) {
        let rtt = rtt.as_nanos() as f64;
        let old = f64::from_bits(state.estimate.load(Ordering::Relaxed));
        let sample = if failed {
            FAILURE_PENALTY * rtt.max(old).max(self.default_rtt)
        } else {
            rtt
        };
        let next = if old == 0.0 || sample > old {
            sample
        } else {
            let elapsed = now.saturating_sub(state.stamp.load(Ordering::Relaxed)) as f64;
            let w = (-elapsed / self.decay).exp();
            old * w + sample * (1.0 - w)
        };
        // Never 0 again once measured (0 means "no sample").
        state
            .estimate
            .store(next.max(1.0).to_bits(), Ordering::Relaxed);
        state.stamp.store(now, Ordering::Relaxed);
    }

    /// The cost of sending one more request to an endpoint.
    pub fn cost(&self, state: &EwmaState, in_flight: u64) -> f64 {
        let estimate = f64::from_bits(state.estimate.load(Ordering::Relaxed));
        if estimate == 0.0 {
            if in_flight == 0 {
                return 0.0;
            }
            return self.default_rtt * (in_flight + 1) as f64;
        }
        estimate * (in_flight + 1) as f64
    }

    /// Power of two choices among `n` endpoints on `cost(i)`.
    pub fn pick(&self, n: usize, cost: impl Fn(usize) -> f64) -> usize {
        if n <= 1 {
            return 0;
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        if cost(b) < cost(a) { b } else { a }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> PeakEwma {
        PeakEwma::new(30 * MS, Duration::from_secs(10))
    }

    #[test]
    fn estimates_jump_to_peaks_and_decay_towards_faster_samples() {
        let p = policy();
        let s = EwmaState::default();
        p.observe(&s, 10 * MS, false, 0);
        assert_eq!(p.cost(&s, 0), 10e6);
        p.observe(&s, 50 * MS, false, 1);
        assert_eq!(p.cost(&s, 0), 50e6, "peak-sensitive");
        // A fast sample 10 s (one time constant) later moves 63% of the way.
        p.observe(&s, MS, false, 10_000_000_001);
        let c = p.cost(&s, 0);
        assert!(
            (c - (50e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp()))).abs() < 1e3,
            "{c}"
        );
        assert_eq!(p.cost(&s, 1), 2.0 * c, "scaled by in-flight + 1");
    }

    #[test]
    fn new_endpoints_are_tried_and_failures_cost() {
        let p = policy();
        let fresh = EwmaState::default();
        assert_eq!(p.cost(&fresh, 0), 0.0, "cold start: tried when drawn");
        assert_eq!(
            p.cost(&fresh, 2),
            3.0 * 30e6,
            "default RTT while unmeasured"
        );

        let fast_failing = EwmaState::default();
        p.observe(&fast_failing, MS / 10, true, 0);
        let healthy = EwmaState::default();
        p.observe(&healthy, 5 * MS, false, 0);
        assert!(
            p.cost(&fast_failing, 0) > p.cost(&healthy, 0),
            "a fast failure is no reward"
        );
        for _ in 0..100 {
            assert_eq!(
                p.pick(2, |i| [p.cost(&fast_failing, 0), p.cost(&healthy, 0)][i]),
                1
            );
        }
    }
}
