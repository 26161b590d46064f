//! The per-cluster retry budget and concurrent-retry limit.
//!
//! # Why a budget and not only a maximum number of retries
//!
//! A per-request maximum multiplies load when a backend fails: with 2
//! retries, a backend failing every request receives three times the
//! traffic exactly when it can least take it (a retry storm). A budget
//! bounds retries by the traffic itself: at most `ratio` retries per
//! original request, plus a small floor so that low-traffic clients can
//! still retry (Linkerd's `retryBudget`: 20% + 10/s over 10 s; tower's
//! `TpsBudget`). Envoy's `retry_budget.budget_percent` states the same
//! ratio over concurrent requests; we count over a window as Linkerd does,
//! which also bounds retries of short requests that never overlap.
//!
//! # How
//!
//! The window (`ttl`) is split into [`SLOTS`] slots of atomics, reused
//! round-robin and reset lazily when a new period reaches them, so
//! depositing (one per request) is two atomic operations and no lock.
//! Withdrawing (one per retry) sums the live slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mesh_core::model::RetryBudget;
use tokio::time::Instant;

/// Slots per window.
const SLOTS: u64 = 10;

/// The retry state of one cluster, shared by every client of the process
/// and kept across config pushes that keep the cluster.
#[derive(Debug)]
pub struct RetryState {
    start: Instant,
    slots: [Slot; SLOTS as usize],
    active_retries: AtomicU32,
    retries: AtomicU64,
    refused: AtomicU64,
    latencies: super::hedge::Latencies,
}

#[derive(Debug, Default)]
struct Slot {
    period: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Why a retry was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The budget is spent.
    Budget,
    /// `http.maxRetries` retries are already in flight.
    Concurrency(u32),
}

impl Default for RetryState {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryState {
    /// A fresh state: an empty window.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            slots: Default::default(),
            active_retries: AtomicU32::new(0),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            latencies: Default::default(),
        }
    }

    /// Retries granted so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused so far (budget or `http.maxRetries`).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Recent latencies, for percentile hedging.
    pub(crate) fn latencies(&self) -> &super::hedge::Latencies {
        &self.latencies
    }

    /// Retries in flight now.
    pub fn active_retries(&self) -> u32 {
        self.active_retries.load(Ordering::Relaxed)
    }

    fn period(&self, budget: &RetryBudget) -> u64 {
        // u64 nanoseconds: no u128 arithmetic on the request path.
        let ttl = budget.ttl.as_secs() * 1_000_000_000 + u64::from(budget.ttl.subsec_nanos());
        let slot = (ttl / SLOTS).max(1);
        let e = self.start.elapsed();
        (e.as_secs() * 1_000_000_000 + u64::from(e.subsec_nanos())) / slot
    }

    fn slot(&self, period: u64) -> &Slot {
        let slot = &self.slots[(period % SLOTS) as usize];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Records one original request.
    pub(crate) fn deposit(&self, budget: &RetryBudget) {
        let period = self.period(budget);
        self.slot(period).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget and the concurrency limit, or says
    /// why not. The returned guard holds the concurrency slot until the
    /// retry's attempt ends.
    pub(crate) fn withdraw(
        self: &Arc<Self>,
        budget: &RetryBudget,
        max_retries: u32,
    ) -> Result<RetryGuard, Refusal> {
        let active = self.active_retries.fetch_add(1, Ordering::AcqRel);
        if active >= max_retries {
            self.active_retries.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Concurrency(max_retries));
        }
        let guard = RetryGuard(Arc::clone(self));
        let period = self.period(budget);
        // Count this retry first, then check: concurrent withdrawals can
        // then never overshoot together.
        self.slot(period).retries.fetch_add(1, Ordering::AcqRel);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let p = slot.period.load(Ordering::Acquire);
            if p + SLOTS > period && p <= period {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = allowed(budget, requests);
        if retries > allowed {
            self.slot(period).retries.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Budget);
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        Ok(guard)
    }
}

/// Retries a window with `requests` original requests allows:
/// `ratio * requests + min_per_second * ttl`.
pub(crate) fn allowed(budget: &RetryBudget, requests: u64) -> u64 {
    let floor = u64::from(budget.min_per_second) * budget.ttl.as_secs().max(1);
    (budget.ratio.max(0.0) * requests as f64) as u64 + floor
}

/// Holds one of the cluster's `http.maxRetries` slots.
#[derive(Debug)]
pub(crate) struct RetryGuard(Arc<RetryState>);

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The budget's window, for messages.
pub(crate) fn describe(budget: &RetryBudget) -> String {
    format!(
        "{}% of requests + {}/s over {:?}",
        budget.ratio * 100.0,
        budget.min_per_second,
        Duration::from_secs(budget.ttl.as_secs())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn linkerd_default_allows_a_fifth_of_requests_plus_a_floor() {
        // Linkerd's default (linkerd.io ServiceProfile reference,
        // `retryBudget`): 20% + 10/s over 10 s.
        let b = RetryBudget::default();
        assert_eq!(
            (b.ratio, b.min_per_second, b.ttl),
            (0.2, 10, Duration::from_secs(10))
        );
        let s = Arc::new(RetryState::new());
        for _ in 0..1000 {
            s.deposit(&b);
        }
        let mut granted = 0;
        let mut guards = Vec::new();
        while let Ok(g) = s.withdraw(&b, u32::MAX) {
            granted += 1;
            guards.push(g);
        }
        assert_eq!(granted, 200 + 100, "20% of 1000 plus 10/s * 10 s");
        assert_eq!(s.withdraw(&b, u32::MAX).unwrap_err(), Refusal::Budget);

        // After the window the old requests and retries are forgotten.
        tokio::time::advance(Duration::from_secs(11)).await;
        let mut granted = 0;
        while s.withdraw(&b, u32::MAX).is_ok() {
            granted += 1;
        }
        assert_eq!(granted, 100, "only the floor is left");
    }

    #[tokio::test(start_paused = true)]
    async fn max_retries_caps_concurrent_retries() {
        let b = RetryBudget::default();
        let s = Arc::new(RetryState::new());
        let g1 = s.withdraw(&b, 2).unwrap();
        let _g2 = s.withdraw(&b, 2).unwrap();
        assert_eq!(s.withdraw(&b, 2).unwrap_err(), Refusal::Concurrency(2));
        drop(g1);
        assert!(s.withdraw(&b, 2).is_ok(), "a finished retry frees its slot");
        assert_eq!(s.active_retries(), 1);
    }
}
