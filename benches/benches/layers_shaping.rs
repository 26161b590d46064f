//! Per-layer overhead of C's layers (issue 3) with a no-op inner service:
//! fault injection at 0%, local rate limiting under its limit, and
//! traffic shaping setting one request header, each next to the bare
//! no-op service in the same run. Prints heap allocations per request for
//! each, counted with an instrumented global allocator.
//!
//! Every request is `poll_ready` + `call` + one poll of the (immediately
//! ready) future with a no-op waker, so only the layer's own work is
//! measured. The layers run standalone with static policies (the same
//! code path as under the mesh's route decision, minus the decision).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::alloc::System;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Empty;
use mesh_core::model::{
    AbortStatus, FaultAbort, FaultDelay, FaultPolicy, Fraction, HeaderMutations, TokenBucket,
};
use mesh_core::ratelimit::TokenBucketState;
use mesh_tower::ResponseBody;
use mesh_tower::fault::Fault;
use mesh_tower::ratelimit::RateLimit;
use mesh_tower::shaping::{Shaping, StaticShaping};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::Service;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

type Req = Request<Empty<Bytes>>;

fn noop() -> impl Service<
    Req,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<ResponseBody>, Infallible>>,
> + Clone {
    tower::service_fn(|_: Req| std::future::ready(Ok(Response::new(ResponseBody::empty()))))
}

fn bench<S: Service<Req>>(c: &mut Criterion, name: &str, svc: S) {
    mesh_benches::bench_layer(c, GLOBAL, "layers_shaping", name, svc, || {
        Request::new(Empty::new())
    });
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();

    bench(c, "no layer", noop());

    let zero = FaultPolicy {
        delay: Some(FaultDelay {
            delay: Duration::from_secs(1),
            fraction: Fraction::NONE,
        }),
        abort: Some(FaultAbort {
            status: AbortStatus::Http(503),
            fraction: Fraction::NONE,
        }),
    };
    bench(c, "Fault (delay and abort at 0%)", Fault::new(noop(), zero));
    let tiny = Fraction::from_ppm(1);
    let rare = FaultPolicy {
        delay: None,
        abort: Some(FaultAbort {
            status: AbortStatus::Http(503),
            fraction: tiny,
        }),
    };
    bench(
        c,
        "Fault (abort at 0.0001%, one draw)",
        Fault::new(noop(), rare),
    );

    let bucket = Arc::new(TokenBucketState::new(TokenBucket {
        max_tokens: u32::MAX,
        tokens_per_fill: u32::MAX,
        fill_interval: Duration::from_millis(50),
    }));
    bench(
        c,
        "RateLimit (under the limit)",
        RateLimit::new(noop(), bucket),
    );

    let set_header = StaticShaping {
        request_headers: HeaderMutations {
            set: Arc::from([(
                HeaderName::from_static("x-mesh"),
                HeaderValue::from_static("1"),
            )]),
            ..HeaderMutations::default()
        },
        ..StaticShaping::default()
    };
    bench(
        c,
        "Shaping (set one request header)",
        Shaping::with_static(noop(), set_header),
    );
    bench(c, "Shaping (no policy)", Shaping::new(noop()));
}

criterion_group!(benches, layers);
criterion_main!(benches);
