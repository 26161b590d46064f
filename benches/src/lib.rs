//! Shared parts of the benchmarks: a plain hyper HTTP/2 server on its own
//! thread, and load generation with latency histograms.
//!
//! - `cargo bench -p mesh-benches --bench decision`: route match, cluster
//!   choice and endpoint pick for a 50-route table with 10 endpoints
//!   (criterion), plus heap allocations per decision.
//! - `cargo bench -p mesh-benches --bench h2_compare`: the mesh client
//!   against a plain hyper-util client, over loopback HTTP/2, in the same
//!   run: closed-loop throughput and latency, and latency at a fixed rate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A minimal HTTP/2 (prior knowledge) server answering `ok` to everything,
/// on one runtime thread of its own so it does not share the client's.
/// Runs until the process ends.
pub fn spawn_h2_server() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(1024)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("server address")
}

/// Every resilience policy of issue 3 on the `bench` service (a
/// `ServiceEntry` for `bench:8080` goes before it), none of which changes
/// what a healthy backend answers or receives: header edits remove an
/// absent request header and set a response header, so the comparison
/// with plain hyper-util measures the client stack, not a server parsing
/// one more header (a request header `set` costs 2 allocations in the
/// client's header map and 4 in the server's; `e2e_loop` shows both).
pub const EVERY_POLICY: &str = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: bench }
spec:
  host: bench
  trafficPolicy:
    loadBalancer: { simple: LEAST_REQUEST }
    connectionPool:
      tcp: { maxConnections: 100, connectTimeout: 1s }
      http: { http2MaxRequests: 10000, maxRetries: 100, idleTimeout: 60s }
    outlierDetection: { consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: bench }
spec:
  hosts: [bench]
  http:
  - route: [{ destination: { host: bench } }]
    timeout: 5s
    retries: { attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure" }
    fault:
      delay: { fixedDelay: 1s, percentage: { value: 0 } }
    headers:
      request:
        remove: [x-debug]
      response:
        set: { x-mesh: "1" }
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: bench-ratelimit }
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_OUTBOUND
      listener: { portNumber: 8080 }
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: { max_tokens: 1000000, tokens_per_fill: 1000000, fill_interval: 1s }
            filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
            filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED } }
"#;

/// One request through `svc` as a layer bench drives it: `poll_ready`,
/// `call`, and one poll of the response future with a no-op waker.
/// Whether the response was ready and successful at once.
pub fn poll_once<S: tower::Service<R>, R>(svc: &mut S, req: R) -> bool {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match svc.poll_ready(&mut cx) {
        std::task::Poll::Ready(Ok(())) => {}
        _ => return false,
    }
    let fut = std::pin::pin!(svc.call(req));
    matches!(fut.poll(&mut cx), std::task::Poll::Ready(Ok(_)))
}

/// Prints the heap allocations per call of `f` (after 100 warm-up calls),
/// counted by `global`, the bench binary's instrumented allocator.
pub fn print_allocs(
    global: &'static stats_alloc::StatsAlloc<std::alloc::System>,
    name: &str,
    mut f: impl FnMut(),
) {
    for _ in 0..100 {
        f();
    }
    let region = stats_alloc::Region::new(global);
    for _ in 0..1000 {
        f();
    }
    let allocs = region.change().allocations;
    println!(
        "{name}: {:.3} heap allocations per request",
        allocs as f64 / 1000.0
    );
}

/// Benches one layer over a no-op service under `group/name`: asserts the
/// request succeeds, prints its heap allocations per request (counted by
/// `global`, the bench binary's instrumented allocator), then times it
/// with criterion. `make` builds each request.
pub fn bench_layer<S, R>(
    c: &mut criterion::Criterion,
    global: &'static stats_alloc::StatsAlloc<std::alloc::System>,
    group: &str,
    name: &str,
    mut svc: S,
    make: impl Fn() -> R,
) where
    S: tower::Service<R>,
{
    use std::hint::black_box;
    assert!(poll_once(&mut svc, make()), "{name}: the request succeeds");
    print_allocs(global, &format!("{group}/{name}"), || {
        black_box(poll_once(&mut svc, make()));
    });
    c.benchmark_group(group)
        .bench_function(name, |b| b.iter(|| black_box(poll_once(&mut svc, make()))));
}

/// What a load run measured.
#[derive(Debug)]
pub struct Report {
    /// Requests completed per second.
    pub throughput: f64,
    /// Latency percentiles in microseconds: p50, p90, p99, p99.9.
    pub latency_us: [u64; 4],
    /// Requests that failed.
    pub errors: u64,
}

impl Report {
    fn from(h: &Histogram<u64>, completed: u64, errors: u64, elapsed: Duration) -> Self {
        Self {
            throughput: completed as f64 / elapsed.as_secs_f64(),
            latency_us: [
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
            ],
            errors,
        }
    }
}

/// Sends requests with `send` from `concurrency` tasks back to back for
/// `duration` (closed loop).
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, send: F) -> Report
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for _ in 0..concurrency {
        let (send, stop, errors) = (send.clone(), Arc::clone(&stop), Arc::clone(&errors));
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = tokio::time::Instant::now();
                if send().await {
                    let _ = h.record(t.elapsed().as_micros() as u64);
                    n += 1;
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            (h, n)
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut completed = 0;
    while let Some(Ok((h, n))) = tasks.join_next().await {
        let _ = all.add(&h);
        completed += n;
    }
    Report::from(
        &all,
        completed,
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

/// Sends `rate` requests per second for `duration` (open loop: each
/// request starts on schedule whether or not earlier ones finished).
/// Latency is measured from the moment the request task starts, not from
/// its tick: tokio's timer has millisecond granularity, so ticks at 2000/s
/// arrive in bursts and the schedule would dominate what is measured.
pub async fn fixed_rate<F, Fut>(rate: u64, duration: Duration, send: F) -> Report
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let errors = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * duration.as_secs().max(1);
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for _ in 0..total {
        tick.tick().await;
        let (send, hist, errors, completed) = (
            send.clone(),
            Arc::clone(&hist),
            Arc::clone(&errors),
            Arc::clone(&completed),
        );
        tasks.spawn(async move {
            let started = tokio::time::Instant::now();
            if send().await {
                let us = started.elapsed().as_micros() as u64;
                let _ = hist.lock().expect("not poisoned").record(us);
                completed.fetch_add(1, Ordering::Relaxed);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let h = hist.lock().expect("not poisoned").clone();
    Report::from(
        &h,
        completed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    )
}
