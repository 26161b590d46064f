//! The cost per request of the observability layers: recording Istio's
//! standard metrics (one record: a counter and three histograms) against
//! not recording, and trace context propagation (the logical call's
//! headers plus one attempt's) against none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use mesh_core::ClusterName;
use mesh_tower::metrics::{IstioMetrics, Protocol, Record, Reporter, ResponseFlag};
use mesh_tower::trace::{self, Propagators, SpanContext, TraceContext};

fn metrics(c: &mut Criterion) {
    let m = IstioMetrics::new("productpage");
    let clusters: Vec<ClusterName> = (0..50)
        .map(|i| ClusterName::new(format!("outbound|9080||svc{i}.default.svc.cluster.local")))
        .collect();
    let mut g = c.benchmark_group("observability/metrics");
    let mut i = 0usize;
    g.bench_function("record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            m.record(black_box(&Record {
                reporter: Reporter::Source,
                destination: Some(&clusters[i % clusters.len()]),
                code: if i.is_multiple_of(10) { 503 } else { 200 },
                grpc_status: None,
                flag: ResponseFlag::None,
                protocol: Protocol::Http,
                duration: Duration::from_micros(1200),
                request_bytes: 0,
                response_bytes: 512,
            }));
        })
    });
    g.bench_function("no_record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&clusters[i % clusters.len()]);
        })
    });
    g.finish();
}

fn propagation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("observability/trace");
    let cx = TraceContext {
        request_id: Some(HeaderValue::from_static(
            "0f3c1a2e-8b7d-4c6e-9a5f-1b2c3d4e5f60",
        )),
        ..TraceContext::new(SpanContext::new_root())
    };
    for (name, p) in [
        ("w3c_baggage_b3multi", Propagators::default()),
        ("w3c_only", Propagators::none().with_tracecontext()),
        ("request_id_only", Propagators::none()),
    ] {
        g.bench_function(format!("call_and_attempt/{name}"), |b| {
            let mut headers = HeaderMap::with_capacity(16);
            b.iter(|| {
                rt.block_on(trace::scope(Some(cx.clone()), async {
                    black_box(trace::outbound(&mut headers, p));
                    black_box(trace::attempt(&mut headers));
                }))
            })
        });
    }
    g.bench_function("scope_only", |b| {
        b.iter(|| rt.block_on(trace::scope(Some(cx.clone()), async { black_box(1) })))
    });
    g.finish();
}

criterion_group!(benches, metrics, propagation);
criterion_main!(benches);
