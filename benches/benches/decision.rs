//! The routing decision for one request: route match in a 50-route table,
//! weighted cluster choice, and endpoint pick among 10 endpoints, for each
//! load-balancing policy. Also prints heap allocations per decision,
//! counted by an instrumented global allocator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::alloc::System;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_tower::Mesh;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn mesh(rt: &tokio::runtime::Runtime, lb: &str) -> Mesh {
    let endpoints: Vec<SocketAddr> = (1..=10)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
        .collect();
    let _guard = rt.enter();
    mesh_examples::mesh_from_yaml(&mesh_examples::yaml::many_routes(50, &endpoints, lb))
}

fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("decision");
    for lb in ["LEAST_REQUEST", "ROUND_ROBIN", "RANDOM"] {
        let client = mesh(&rt, lb).client();
        for (label, path) in [
            ("first", "/api/r0/x"),
            ("middle", "/api/r25/x"),
            ("last", "/elsewhere"),
        ] {
            let mut req = http::Request::get(format!("http://bench:8080{path}"))
                .body(())
                .expect("request");
            // Warm up: the regex engine allocates its per-thread cache once.
            black_box(client.decide(&mut req).expect("routed"));
            let region = Region::new(GLOBAL);
            for _ in 0..1000 {
                black_box(client.decide(&mut req).expect("routed"));
            }
            let allocs = region.change().allocations;
            println!(
                "decision/{lb}/{label}: {:.3} heap allocations per decision",
                allocs as f64 / 1000.0
            );
            group.bench_function(format!("{lb}/{label}"), |b| {
                b.iter(|| black_box(client.decide(&mut req).expect("routed")))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
