//! Per-layer overhead of the retry and timeout layers (issue 3) with a
//! no-op inner service on the success path, side by side in the same run
//! with `tower::retry::Retry` + `tower::timeout::Timeout` and
//! tower-resilience 0.13's retry and time limiter; plus heap allocations
//! per request for each, counted with an instrumented global allocator.
//!
//! Ours take `http::Request<BoxBody>` (what the mesh client sends) with
//! Istio's default retry policy, so each request keeps a copy of its head
//! for a possible retry, as it does in the client. tower's `Retry` gets a
//! policy that copies the same request head. tower-resilience's retry
//! needs a `Clone` request, so it gets a small request struct holding the
//! same head. Every request is `poll_ready` + `call` + one poll of the
//! (immediately ready) future with a no-op waker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::alloc::System;
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::Empty;
use mesh_core::model::RetryPolicy;
use mesh_tower::body::{BoxBody, boxed};
use mesh_tower::retry::RetryLayer;
use mesh_tower::timeout::TimeoutLayer;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::{Layer, Service};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Res = Response<BoxBody>;

fn noop() -> impl Service<
    Request<BoxBody>,
    Response = Res,
    Error = Infallible,
    Future = std::future::Ready<Result<Res, Infallible>>,
> + Clone {
    tower::service_fn(|_: Request<BoxBody>| {
        std::future::ready(Ok(Response::new(boxed(Empty::<Bytes>::new()))))
    })
}

fn request() -> Request<BoxBody> {
    let mut req = Request::new(boxed(Empty::<Bytes>::new()));
    *req.uri_mut() = Uri::from_static("http://svc:8080/x");
    req
}

/// A request head that is `Clone`, for tower-resilience's retry.
#[derive(Clone)]
struct Head {
    _method: Method,
    _uri: Uri,
    _headers: HeaderMap,
}

fn head() -> Head {
    Head {
        _method: Method::GET,
        _uri: Uri::from_static("http://svc:8080/x"),
        _headers: HeaderMap::new(),
    }
}

fn noop_head() -> impl Service<
    Head,
    Response = (),
    Error = Infallible,
    Future = std::future::Ready<Result<(), Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: Head| std::future::ready(Ok(())))
}

fn bench<S: Service<R>, R>(c: &mut Criterion, group: &str, name: &str, svc: S, make: fn() -> R) {
    mesh_benches::bench_layer(c, GLOBAL, group, name, svc, make);
}

/// tower's retry policy: retry errors up to 2 times, copying the head.
#[derive(Clone)]
struct Attempts(usize);

impl<E> tower::retry::Policy<Request<BoxBody>, Res, E> for Attempts {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<BoxBody>,
        result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request<BoxBody>) -> Option<Request<BoxBody>> {
        let mut r = Request::new(boxed(Empty::<Bytes>::new()));
        *r.method_mut() = req.method().clone();
        *r.uri_mut() = req.uri().clone();
        *r.headers_mut() = req.headers().clone();
        Some(r)
    }
}

fn retries(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    bench(c, "retry", "no layer", noop(), request);
    let ours = RetryLayer::new().with_policy(RetryPolicy::istio_default());
    bench(
        c,
        "retry",
        "mesh Retry (Istio default policy)",
        ours.layer(noop()),
        request,
    );
    bench(
        c,
        "retry",
        "tower Retry",
        tower::retry::Retry::new(Attempts(2), noop()),
        request,
    );
    let tr = tower_resilience::retry::RetryLayer::<Head, (), Infallible>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(25))
        .build();
    bench(
        c,
        "retry",
        "tower-resilience Retry",
        tr.layer(noop_head()),
        head,
    );
}

fn timeouts(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    bench(
        c,
        "timeout",
        "mesh Timeout",
        TimeoutLayer::new(Duration::from_secs(1)).layer(noop()),
        request,
    );
    bench(
        c,
        "timeout",
        "tower Timeout",
        tower::timeout::Timeout::new(noop(), Duration::from_secs(1)),
        request,
    );
    let tl = tower_resilience::timelimiter::TimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(1))
        .build();
    bench(
        c,
        "timeout",
        "tower-resilience TimeLimiter",
        tl.layer(noop()),
        request,
    );
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = retries, timeouts
}
criterion_main!(benches);
