//! The cost per request of the observability layers: recording Istio's
//! standard metrics (one record: a counter and three histograms) against
//! not recording, and a client call's trace propagation (the logical
//! call's headers plus one attempt's) with no trace and sampling off, at
//! 1% and at 100% sampling, and inside a server's trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use mesh_core::ClusterName;
use mesh_tower::metrics::{Protocol, Record, Reporter, ResponseFlag, SeriesTable};
use mesh_tower::trace::{self, Propagators, Sampling, SpanContext, TraceContext};

fn metrics(c: &mut Criterion) {
    let tables: Vec<SeriesTable> = (0..50)
        .map(|i| {
            SeriesTable::new(Some(ClusterName::new(format!(
                "outbound|9080||svc{i}.default.svc.cluster.local"
            ))))
        })
        .collect();
    let mut g = c.benchmark_group("observability/metrics");
    let mut i = 0usize;
    g.bench_function("record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            tables[i % tables.len()].record(black_box(&Record {
                reporter: Reporter::Source,
                destination: None,
                code: if i.is_multiple_of(10) { 503 } else { 200 },
                grpc_status: None,
                flag: ResponseFlag::None,
                protocol: Protocol::Http,
                duration: Duration::from_micros(1200),
                request_bytes: 0,
                response_bytes: 512,
                peer: Default::default(),
            }));
        })
    });
    g.bench_function("no_record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(&tables[i % tables.len()]);
        })
    });
    g.finish();
}

/// A request as an application builds it: a few headers, no trace.
fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(16);
    h.insert("user-agent", HeaderValue::from_static("bench"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h
}

fn propagation(c: &mut Criterion) {
    let mut g = c.benchmark_group("observability/trace");
    let p = Propagators::default();
    for (name, sampling) in [
        ("untraced_sampling_off", Sampling::never()),
        ("sampled_1pct", Sampling::percentage(1.0)),
        ("sampled_100pct", Sampling::always()),
    ] {
        g.bench_function(format!("call_and_attempt/{name}"), |b| {
            let base = request_headers();
            b.iter_batched_ref(
                || base.clone(),
                |headers| {
                    black_box(trace::outbound(headers, p, sampling));
                    black_box(trace::attempt(headers));
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("clone_headers_only", |b| {
        let base = request_headers();
        b.iter_batched_ref(
            || base.clone(),
            |headers| {
                black_box(&*headers);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cx = TraceContext {
        request_id: Some(HeaderValue::from_static(
            "0f3c1a2e-8b7d-4c6e-9a5f-1b2c3d4e5f60",
        )),
        ..TraceContext::new(SpanContext::new_root())
    };
    g.bench_function("in_server_trace/w3c_baggage_b3multi", |b| {
        let mut headers = HeaderMap::with_capacity(16);
        b.iter(|| {
            rt.block_on(trace::scope(Some(cx.clone()), async {
                black_box(trace::outbound(&mut headers, p, Sampling::never()));
                black_box(trace::attempt(&mut headers));
            }))
        })
    });
    g.bench_function("scope_only", |b| {
        b.iter(|| rt.block_on(trace::scope(Some(cx.clone()), async { black_box(1) })))
    });
    g.finish();
}

criterion_group!(benches, metrics, propagation);
criterion_main!(benches);
