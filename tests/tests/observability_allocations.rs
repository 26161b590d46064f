//! Recording Istio's metrics and propagating trace context must not touch
//! the heap beyond the header values written. Counted with an
//! instrumented global allocator in a binary of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use mesh_core::ClusterName;
use mesh_tower::metrics::{IstioMetrics, Protocol, Record, Reporter, ResponseFlag};
use mesh_tower::trace::{self, SpanContext, TraceContext};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn record(dest: &ClusterName, code: u16) -> Record<'_> {
    Record {
        reporter: Reporter::Source,
        destination: Some(dest),
        code,
        grpc_status: None,
        flag: ResponseFlag::None,
        protocol: Protocol::Http,
        duration: Duration::from_micros(1500),
        request_bytes: 10,
        response_bytes: 100,
    }
}

/// One test: the allocator's counts are global, so a second test running
/// on another thread would be counted too.
#[test]
fn metric_recording_and_trace_injection_do_not_allocate_beyond_header_values() {
    metric_recording_does_not_allocate_even_for_new_series();
    trace_injection_allocates_only_the_header_values_it_writes();
}

fn metric_recording_does_not_allocate_even_for_new_series() {
    let metrics = IstioMetrics::new("productpage");
    let clusters: Vec<ClusterName> = (0..20)
        .map(|i| ClusterName::new(format!("outbound|9080||svc{i}.default.svc.cluster.local")))
        .collect();
    let region = Region::new(GLOBAL);
    for _ in 0..100 {
        for c in &clusters {
            for code in [200, 404, 503] {
                metrics.record(&record(c, code));
            }
        }
    }
    let change = region.change();
    assert_eq!(
        (change.allocations, change.reallocations),
        (0, 0),
        "recording allocated ({change:?})"
    );
    assert_eq!(metrics.requests_total(Reporter::Source, 503), 2000);
}

fn trace_injection_allocates_only_the_header_values_it_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(trace::scope(
        Some(TraceContext {
            request_id: Some(HeaderValue::from_static("req-1")),
            ..TraceContext::new(SpanContext::new_root())
        }),
        async {
            // Room for every header up front, as a request that already
            // has its headers would have.
            let mut headers = HeaderMap::with_capacity(16);
            trace::outbound(&mut headers, trace::Propagators::default());
            trace::attempt(&mut headers);
            let region = Region::new(GLOBAL);
            let call = trace::outbound(&mut headers, trace::Propagators::default());
            std::hint::black_box(call);
            let call = region.change();
            let region = Region::new(GLOBAL);
            std::hint::black_box(trace::attempt(&mut headers));
            let attempt = region.change();
            // traceparent, x-b3-traceid, x-b3-spanid, x-b3-parentspanid:
            // one `Bytes` each (x-b3-sampled and the request id are static
            // or shared).
            assert!(call.allocations <= 4, "{call:?}");
            // traceparent, x-b3-spanid, x-b3-parentspanid.
            assert!(attempt.allocations <= 3, "{attempt:?}");
        },
    ));
}
