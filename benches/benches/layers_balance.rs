//! Per-layer overhead of B's layers (issue 3) with a no-op inner service,
//! side by side with the peers in the same run: the circuit breaker
//! against tower-resilience 0.13's circuit breaker and bulkhead and
//! `tower::limit::ConcurrencyLimit`; outlier accounting; each picker of
//! `mesh_core::lb` against `tower::balance::p2c` over the same number of
//! endpoints. Prints heap allocations per request for each, counted with
//! an instrumented global allocator.
//!
//! Every request is `poll_ready` + `call` + one poll of the (immediately
//! ready) future with a no-op waker, so only the layer's own work is
//! measured.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use mesh_core::lb::hash::{hash64, request_hash};
use mesh_core::lb::{
    EwmaState, LeastRequest, Maglev, PeakEwma, RingHash, RoundRobin, WeightedRandom,
};
use mesh_core::model::{ConnectionLimits, HashKey, OutlierDetection, Protocol};
use mesh_core::outlier::{HostOutlier, Outcome, OutlierDetector, OutlierStats};
use mesh_tower::breaker::{BreakerState, CircuitBreaker};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::Service;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ENDPOINTS: usize = 10;

fn noop() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<()>, Infallible>>,
> + Clone {
    tower::service_fn(|_: Request<()>| std::future::ready(Ok(Response::new(()))))
}

fn bench<S: Service<Request<()>>>(c: &mut Criterion, group: &str, name: &str, svc: S) {
    mesh_benches::bench_layer(c, GLOBAL, group, name, svc, || Request::new(()));
}

fn breakers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let limits = ConnectionLimits {
        max_requests: 1_000_000,
        ..ConnectionLimits::default()
    };
    bench(c, "breaker", "no layer", noop());
    bench(
        c,
        "breaker",
        "mesh CircuitBreaker (http2MaxRequests)",
        CircuitBreaker::new(noop(), BreakerState::new("c", limits, Protocol::Http2)),
    );
    let h1 = ConnectionLimits {
        max_connections: 1_000_000,
        ..limits
    };
    bench(
        c,
        "breaker",
        "mesh CircuitBreaker (HTTP/1 maxConnections)",
        CircuitBreaker::new(noop(), BreakerState::new("c", h1, Protocol::Http1)),
    );
    bench(
        c,
        "breaker",
        "tower ConcurrencyLimit",
        tower::limit::ConcurrencyLimit::new(noop(), 1_000_000),
    );
    let cb = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap();
    bench(
        c,
        "breaker",
        "tower-resilience CircuitBreaker",
        tower::Layer::layer(&cb, noop()),
    );
    let bh = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1_000_000)
        .build()
        .unwrap();
    bench(
        c,
        "breaker",
        "tower-resilience Bulkhead",
        tower::Layer::layer(&bh, noop()),
    );
}

fn outliers(c: &mut Criterion) {
    let hosts: Vec<HostOutlier> = (0..ENDPOINTS).map(|_| HostOutlier::default()).collect();
    let detector = OutlierDetector::new(OutlierDetection::default(), hosts.iter(), 0, None);
    let stats = OutlierStats::default();
    let now = AtomicU64::new(0);
    let mut record = || {
        // One microsecond per request: a sweep every 10 s of requests.
        let t = now.fetch_add(1000, Ordering::Relaxed);
        detector.record(&hosts[3], Outcome::Response(200), t, ENDPOINTS, &stats);
        detector.maybe_sweep(hosts.iter(), t, &stats);
        black_box(detector.skips(&hosts[3], ENDPOINTS));
    };
    mesh_benches::print_allocs(GLOBAL, "outlier/record+sweep check+skip check", &mut record);
    c.benchmark_group("outlier")
        .bench_function("record+sweep check+skip check", |b| b.iter(&mut record));
}

fn pickers(c: &mut Criterion) {
    let weights = [1u32; ENDPOINTS];
    let ids: Vec<String> = (0..ENDPOINTS).map(|i| format!("10.0.0.{i}:8080")).collect();
    let in_flight: Vec<AtomicU64> = (0..ENDPOINTS)
        .map(|i| AtomicU64::new(i as u64 % 3))
        .collect();
    let ticket = AtomicUsize::new(0);
    let rr = RoundRobin::new(&weights);
    let weighted_rr = RoundRobin::new(&[5, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
    let random = WeightedRandom::new(&weights);
    let lr = LeastRequest::new(&weights, 2);
    let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
    let ewma_state: Vec<EwmaState> = (0..ENDPOINTS).map(|_| EwmaState::default()).collect();
    for (i, s) in ewma_state.iter().enumerate() {
        ewma.observe(s, Duration::from_micros(100 + i as u64), false, 0);
    }
    let ring = RingHash::new(&ids, &weights, 1024, 8 << 20);
    let maglev = Maglev::new(&ids, &weights, Maglev::DEFAULT_TABLE_SIZE);
    let uri: http::Uri = "http://svc/".parse().unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "user-12345".parse().unwrap());
    let key = HashKey::Header("x-user".parse().unwrap());

    let mut g = c.benchmark_group("picker");
    macro_rules! pick {
        ($name:expr, $e:expr) => {{
            mesh_benches::print_allocs(GLOBAL, &format!("picker/{}", $name), || {
                black_box($e);
            });
            g.bench_function($name, |b| b.iter(|| black_box($e)));
        }};
    }
    pick!(
        "ROUND_ROBIN",
        rr.pick(ticket.fetch_add(1, Ordering::Relaxed))
    );
    pick!(
        "ROUND_ROBIN weighted",
        weighted_rr.pick(ticket.fetch_add(1, Ordering::Relaxed))
    );
    pick!("RANDOM", random.pick());
    pick!(
        "LEAST_REQUEST p2c",
        lr.pick(|i| in_flight[i].load(Ordering::Relaxed))
    );
    pick!(
        "peak EWMA p2c",
        ewma.pick(ENDPOINTS, |i| ewma
            .cost(&ewma_state[i], in_flight[i].load(Ordering::Relaxed)))
    );
    pick!("request hash (header)", request_hash(&key, &uri, &headers));
    pick!("ring hash", ring.pick(hash64(b"user-12345")));
    pick!("maglev", maglev.pick(hash64(b"user-12345")));
    g.finish();

    // tower's p2c over the same number of endpoints (PendingRequests load):
    // the whole ready + call + poll, as its pick cannot be taken apart.
    let services: Vec<_> = (0..ENDPOINTS)
        .map(|_| {
            tower::load::PendingRequests::new(noop(), tower::load::CompleteOnResponse::default())
        })
        .collect();
    let p2c = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
    bench(c, "picker", "tower p2c Balance (ready+call)", p2c);
    bench(c, "picker", "no layer (ready+call)", noop());
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = breakers, outliers, pickers
}
criterion_main!(benches);
