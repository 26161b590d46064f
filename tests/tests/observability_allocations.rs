//! Recording Istio's metrics and propagating trace context must not touch
//! the heap for an untraced request, and a traced one only for the header
//! values written. Counted with an
//! instrumented global allocator in a binary of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use mesh_core::ClusterName;
use mesh_tower::metrics::{IstioMetrics, Protocol, Record, Reporter, ResponseFlag, SeriesTable};
use mesh_tower::trace::{self, SpanContext, TraceContext};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn record(code: u16) -> Record<'static> {
    Record {
        reporter: Reporter::Source,
        destination: None,
        code,
        grpc_status: None,
        flag: ResponseFlag::None,
        protocol: Protocol::Http,
        duration: Duration::from_micros(1500),
        request_bytes: 10,
        response_bytes: 100,
        peer: Default::default(),
    }
}

/// One test: the allocator's counts are global, so a second test running
/// on another thread would be counted too.
#[test]
fn telemetry_allocates_nothing_untraced_and_only_header_values_traced() {
    metric_recording_does_not_allocate_even_for_new_series();
    untraced_requests_allocate_nothing();
    trace_injection_allocates_only_the_header_values_it_writes();
}

/// Runs `measure` (which builds its own fresh state and returns the
/// allocations of its measured region) up to three times and returns the
/// first count that is zero, else the last. The allocator counts every
/// thread of the process, and the test harness's own threads allocate now
/// and then (about one run in 40 on a loaded machine saw 4 foreign
/// allocations); code that allocates does so on every attempt, so retrying
/// with fresh state hides noise, never a regression.
fn fewest_allocations(mut measure: impl FnMut() -> stats_alloc::Stats) -> stats_alloc::Stats {
    let mut last = measure();
    for _ in 0..2 {
        if (last.allocations, last.reallocations) == (0, 0) {
            break;
        }
        last = measure();
    }
    last
}

fn metric_recording_does_not_allocate_even_for_new_series() {
    let change = fewest_allocations(record_into_fresh_series);
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "recording allocated ({change:?})"
    );
}

fn record_into_fresh_series() -> stats_alloc::Stats {
    let metrics = IstioMetrics::new("productpage");
    let tables: Vec<SeriesTable> = (0..20)
        .map(|i| {
            SeriesTable::new(Some(ClusterName::new(format!(
                "outbound|9080||svc{i}.default.svc.cluster.local"
            ))))
        })
        .collect();
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        for t in &tables {
            for code in [200, 404, 503] {
                t.record(&record(code));
            }
        }
        metrics.inbound().record(&record(200));
        metrics.unrouted().record(&record(404));
    }
    let change = region.change();
    assert_eq!(
        tables.iter().map(|t| t.requests_total(503)).sum::<u64>(),
        2000
    );
    assert_eq!(metrics.inbound().requests_total(200), 100);
    change
}

fn untraced_requests_allocate_nothing() {
    let change = fewest_allocations(untraced_requests);
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "untraced propagation allocated ({change:?})"
    );
}

fn untraced_requests() -> stats_alloc::Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let id = HeaderValue::from_static("req-1");
    let mut headers = HeaderMap::with_capacity(16);
    headers.insert("x-request-id", id.clone());
    let p = trace::Propagators::all();
    let never = trace::Sampling::never();
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        // A server request without a trace context, and the calls its
        // handler makes (the task-local is set, to `None`).
        let cx = trace::server_context(&headers, p, never, &id);
        assert!(cx.is_none());
        rt.block_on(trace::scope(cx, async {
            assert!(trace::outbound(&mut headers, p, never).is_none());
            assert!(trace::attempt(&mut headers).is_none());
        }));
        // A call outside any server.
        assert!(trace::outbound(&mut headers, p, never).is_none());
    }
    let change = region.change();
    assert_eq!(headers.len(), 1, "nothing injected: {headers:?}");
    change
}

fn trace_injection_allocates_only_the_header_values_it_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let never = trace::Sampling::never();
    rt.block_on(trace::scope(
        Some(TraceContext {
            request_id: Some(HeaderValue::from_static("req-1")),
            ..TraceContext::new(SpanContext::new_root())
        }),
        async {
            // Room for every header up front, as a request that already
            // has its headers would have.
            // The fewest of three tries, for the reason given at
            // `fewest_allocations`.
            let (mut call, mut attempt) = (usize::MAX, usize::MAX);
            for _ in 0..3 {
                let mut headers = HeaderMap::with_capacity(16);
                trace::outbound(&mut headers, trace::Propagators::default(), never);
                trace::attempt(&mut headers);
                let region = Region::new(GLOBAL);
                let c = trace::outbound(&mut headers, trace::Propagators::default(), never);
                std::hint::black_box(c);
                call = call.min(region.change().allocations);
                let region = Region::new(GLOBAL);
                std::hint::black_box(trace::attempt(&mut headers));
                attempt = attempt.min(region.change().allocations);
            }
            // traceparent, x-b3-traceid, x-b3-spanid, x-b3-parentspanid:
            // one `Bytes` each (x-b3-sampled and the request id are static
            // or shared).
            assert!(call <= 4, "{call} allocations");
            // traceparent, x-b3-spanid, x-b3-parentspanid.
            assert!(attempt <= 3, "{attempt} allocations");
        },
    ));
}
