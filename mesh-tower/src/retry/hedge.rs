//! Hedging: when an answer is slow, send another copy of the request and
//! take whichever answers first (gRFC A6 "Hedging Policy"; "The Tail at
//! Scale", Dean & Barroso).
//!
//! [`Hedge`] sends the first copy at once and another every `delay` while
//! none has answered, up to the policy's `max_attempts` (at most 5, as
//! gRFC A6 caps it). The delay is fixed, or the given percentile of the
//! cluster's recent latencies once enough were measured (tower's `Hedge`).
//! A successful response (status below 500 without a failing
//! `grpc-status` in its headers) wins at once and the other copies are
//! dropped, which cancels them (an HTTP/2 RST_STREAM). A failed copy
//! triggers the next one right away, as gRFC A6 does for non-fatal codes;
//! when every copy failed, the last failure is returned. Each copy after
//! the first is taken from the same retry budget and `http.maxRetries`
//! limit as retries: hedging never adds more load than retrying could.
//! Only requests whose body can be replayed (see [`Retry`](super::Retry))
//! are hedged.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use mesh_core::model::{HedgeDelay, HedgePolicy, RetryBudget};
use tokio::time::{Instant, Sleep};

use super::RetryState;
use super::budget::RetryGuard;
use super::replay::{self, Replay};
use crate::body::BoxBody;
use crate::error::BoxError;
use crate::route::RouteDecision;

/// gRFC A6: "maxAttempts ... values greater than 5 are treated as 5".
const MAX_ATTEMPTS: u32 = 5;

/// Recent latencies of a cluster, for percentile hedging delays: a
/// histogram of 1.19×-wide buckets from 1 µs to about 10 minutes, counted
/// with atomics and halved once it holds [`DECAY_AT`] samples, so recent
/// latencies dominate.
#[derive(Debug)]
pub(crate) struct Latencies {
    buckets: [AtomicU64; BUCKETS],
    total: AtomicU64,
}

const BUCKETS: usize = 120;
const DECAY_AT: u64 = 1 << 14;

impl Default for Latencies {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            total: AtomicU64::new(0),
        }
    }
}

fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros().max(1) as f64;
    // 4 buckets per doubling.
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

fn upper_of(bucket: usize) -> Duration {
    Duration::from_micros(2f64.powf((bucket + 1) as f64 / 4.0) as u64)
}

impl Latencies {
    pub(crate) fn record(&self, d: Duration) {
        self.buckets[bucket_of(d)].fetch_add(1, Ordering::Relaxed);
        if self.total.fetch_add(1, Ordering::Relaxed) + 1 >= DECAY_AT {
            self.total.store(0, Ordering::Relaxed);
            let mut kept = 0;
            for b in &self.buckets {
                let v = b.load(Ordering::Relaxed) / 2;
                b.store(v, Ordering::Relaxed);
                kept += v;
            }
            self.total.fetch_add(kept, Ordering::Relaxed);
        }
    }

    /// The `percentile` latency (an upper bound of its bucket), once at
    /// least `min` samples were recorded.
    pub(crate) fn percentile(&self, percentile: f64, min: u64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 || total < min {
            return None;
        }
        let rank = ((percentile / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_of(i));
            }
        }
        None
    }
}

/// Hedges requests by their route's [`HedgePolicy`] (or the layer's); see
/// the module docs.
#[derive(Clone, Debug)]
pub struct Hedge<S> {
    inner: S,
    shared: Arc<HedgeShared>,
}

#[derive(Debug)]
struct HedgeShared {
    policy: Option<HedgePolicy>,
    budget: RetryBudget,
    max_replay_bytes: usize,
    state: Arc<RetryState>,
}

impl<S> Hedge<S> {
    /// Hedges by the route's policy only.
    pub fn new(inner: S) -> Self {
        HedgeLayer::new().layer_service(inner)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Applies [`Hedge`] to a service.
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    policy: Option<HedgePolicy>,
    budget: RetryBudget,
    max_replay_bytes: usize,
    state: Arc<RetryState>,
}

impl Default for HedgeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl HedgeLayer {
    /// Hedges by the route's policy; Linkerd's default budget for
    /// requests without a route decision.
    pub fn new() -> Self {
        Self {
            policy: None,
            budget: RetryBudget::default(),
            max_replay_bytes: super::DEFAULT_MAX_REPLAY_BYTES,
            state: Arc::new(RetryState::new()),
        }
    }

    /// The policy for requests without a route decision.
    pub fn with_policy(mut self, policy: HedgePolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The budget for requests without a route decision.
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The layer's own state (budget, latencies).
    pub fn state(&self) -> &Arc<RetryState> {
        &self.state
    }

    fn layer_service<S>(&self, inner: S) -> Hedge<S> {
        Hedge {
            inner,
            shared: Arc::new(HedgeShared {
                policy: self.policy.clone(),
                budget: self.budget,
                max_replay_bytes: self.max_replay_bytes,
                state: Arc::clone(&self.state),
            }),
        }
    }
}

impl<S> tower::Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Hedge<S> {
        self.layer_service(inner)
    }
}

/// Marks requests sent by [`Hedge`], which already counted them in the
/// retry budget, so that [`Retry`](super::Retry) below does not count
/// them again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hedged;

struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    decision: Option<RouteDecision>,
    body: Replay,
}

impl Template {
    fn request(&self) -> Request<BoxBody> {
        let mut req = Request::new(self.body.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        if let Some(d) = &self.decision {
            req.extensions_mut().insert(d.clone());
        }
        req.extensions_mut().insert(Hedged);
        req
    }
}

/// The response future of [`Hedge`].
#[pin_project::pin_project(project = Proj)]
pub enum HedgeFuture<S>
where
    S: tower::Service<Request<BoxBody>>,
{
    /// No hedging: the inner future.
    Single(#[pin] S::Future),
    /// Hedging (boxed: the copies and their timer are large).
    Hedged(Box<Hedging<S>>),
}

/// The state of a hedged request.
#[doc(hidden)]
pub struct Hedging<S>
where
    S: tower::Service<Request<BoxBody>>,
{
    svc: S,
    template: Template,
    copies: Vec<(Instant, Pin<Box<S::Future>>)>,
    guards: Vec<RetryGuard>,
    sent: u32,
    max: u32,
    delay: Duration,
    timer: Pin<Box<Sleep>>,
    state: Arc<RetryState>,
    budget: RetryBudget,
    max_retries: u32,
    wants_ready: bool,
}

fn succeeded<B>(res: &Response<B>) -> bool {
    res.status().as_u16() < 500
        && res
            .headers()
            .get("grpc-status")
            .is_none_or(|v| v.as_bytes() == b"0")
}

impl<S, B> tower::Service<Request<BoxBody>> for Hedge<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = HedgeFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<BoxBody>) -> Self::Future {
        let decision = req.extensions().get::<RouteDecision>().cloned();
        let policy = decision
            .as_ref()
            .and_then(RouteDecision::hedge_policy)
            .or(self.shared.policy.as_ref());
        let Some(policy) = policy.filter(|p| p.max_attempts > 1) else {
            return HedgeFuture::Single(self.inner.call(req));
        };
        let (state, budget, max_retries) = match &decision {
            Some(d) => (
                Arc::clone(d.cluster.retry_state()),
                d.cluster().retry_budget,
                d.cluster().limits.max_retries,
            ),
            None => (Arc::clone(&self.shared.state), self.shared.budget, u32::MAX),
        };
        let delay = match policy.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile {
                percentile,
                min_data_points,
            } => state.latencies().percentile(percentile, min_data_points),
        };
        let Some(delay) = delay else {
            // Not enough data yet: measure, do not hedge.
            return HedgeFuture::Single(self.inner.call(req));
        };
        let max = policy.max_attempts.min(MAX_ATTEMPTS);
        state.deposit(&budget);
        let mut req = req;
        req.extensions_mut().insert(Hedged);
        let (parts, body) = req.into_parts();
        let (replay, body) = replay::capture(body, self.shared.max_replay_bytes);
        let Some(replay) = replay else {
            return HedgeFuture::Single(self.inner.call(Request::from_parts(parts, body)));
        };
        let template = Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            decision,
            body: replay,
        };
        let first = self.inner.call(Request::from_parts(parts, body));
        HedgeFuture::Hedged(Box::new(Hedging {
            svc: self.inner.clone(),
            template,
            copies: vec![(Instant::now(), Box::pin(first))],
            guards: Vec::new(),
            sent: 1,
            max,
            delay,
            timer: Box::pin(tokio::time::sleep(delay)),
            state,
            budget,
            max_retries,
            wants_ready: false,
        }))
    }
}

impl<S, B> Hedging<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    fn poll_hedge(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<B>, BoxError>> {
        loop {
            let mut blocked = false;
            // Send the next copy when its time came (or a copy failed).
            if self.wants_ready || (self.sent < self.max && self.timer.as_mut().poll(cx).is_ready())
            {
                self.wants_ready = true;
                if self.sent >= self.max {
                    self.wants_ready = false;
                } else {
                    match self.svc.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            self.wants_ready = false;
                            match self.state.withdraw(&self.budget, self.max_retries) {
                                Ok(guard) => {
                                    self.guards.push(guard);
                                    let fut = self.svc.call(self.template.request());
                                    self.copies.push((Instant::now(), Box::pin(fut)));
                                    self.sent += 1;
                                    tracing::debug!(copy = self.sent, "hedged");
                                }
                                // No budget: wait for the copies in flight.
                                Err(_) => self.sent = self.max,
                            }
                            let next = Instant::now() + self.delay;
                            self.timer.as_mut().reset(next);
                            continue;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                        Poll::Pending => blocked = true,
                    }
                }
            }
            let mut i = 0;
            while i < self.copies.len() {
                let (started, fut) = &mut self.copies[i];
                let started = *started;
                match fut.as_mut().poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(result) => {
                        drop(self.copies.swap_remove(i));
                        let result = result.map_err(Into::into);
                        let won = matches!(&result, Ok(r) if succeeded(r));
                        if won {
                            self.state.latencies().record(started.elapsed());
                        }
                        if won || (self.copies.is_empty() && self.sent >= self.max) {
                            // Dropping the other copies cancels them.
                            self.copies.clear();
                            return Poll::Ready(result);
                        }
                        // A failure: the next copy goes now, if any is left.
                        if self.sent < self.max {
                            self.wants_ready = true;
                        } else if self.copies.is_empty() {
                            return Poll::Ready(result);
                        }
                    }
                }
            }
            if !self.wants_ready || blocked {
                return Poll::Pending;
            }
        }
    }
}

impl<S, B> Future for HedgeFuture<S>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Single(f) => f.poll(cx).map_err(Into::into),
            Proj::Hedged(h) => h.poll_hedge(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_recent_samples() {
        let l = Latencies::default();
        assert_eq!(l.percentile(90.0, 1), None);
        for i in 1..=100u64 {
            l.record(Duration::from_millis(i));
        }
        assert_eq!(l.percentile(90.0, 101), None, "too few data points");
        let p90 = l.percentile(90.0, 100).unwrap();
        // Buckets are 19% wide.
        assert!(
            p90 >= Duration::from_millis(90) && p90 <= Duration::from_millis(108),
            "{p90:?}"
        );
        let p50 = l.percentile(50.0, 100).unwrap();
        assert!(
            p50 >= Duration::from_millis(50) && p50 <= Duration::from_millis(60),
            "{p50:?}"
        );
    }
}
