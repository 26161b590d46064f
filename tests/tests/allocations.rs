//! The routing decision (route match, cluster choice, endpoint pick) must
//! not touch the heap. Counted with an instrumented global allocator in a
//! binary of its own, on a current-thread runtime where nothing else runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::net::SocketAddr;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn routing_decision_does_not_allocate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let endpoints: Vec<SocketAddr> = (1..=10)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect();
        for lb in [
            "LEAST_REQUEST",
            "ROUND_ROBIN",
            "RANDOM",
            // Slow start, consistent hashing on a header (ring and Maglev).
            "ROUND_ROBIN, warmup: { duration: 60s }",
            "UNSPECIFIED, consistentHash: { httpHeaderName: x-tenant }",
            "UNSPECIFIED, consistentHash: { httpHeaderName: x-tenant, maglev: {} }",
        ] {
            let mesh =
                mesh_tests::mesh_from_yaml(&mesh_examples::yaml::many_routes(50, &endpoints, lb));
            let client = mesh.client();
            let mut requests: Vec<http::Request<()>> = [
                "/api/r0/x",
                "/api/r25/x",
                "/api/r45/123",
                "/api/r47/x",
                "/elsewhere",
            ]
            .iter()
            .map(|p| {
                http::Request::get(format!("http://bench:8080{p}"))
                    .header("x-tenant", "t47")
                    .body(())
                    .unwrap()
            })
            .collect();
            let mut names = Vec::new();
            for req in &mut requests {
                names.push(client.decide(req).unwrap().route().route().name.clone());
            }
            assert_eq!(
                names
                    .iter()
                    .map(|n| n.as_deref().unwrap())
                    .collect::<Vec<_>>(),
                ["r0", "r25", "r45", "r47", "catch-all"],
                "the requests exercise prefix, regex, header and catch-all routes"
            );

            let region = Region::new(GLOBAL);
            for _ in 0..1000 {
                for req in &mut requests {
                    let decision = client.decide(req).unwrap();
                    std::hint::black_box(&decision);
                }
            }
            let change = region.change();
            assert_eq!(
                (change.allocations, change.reallocations),
                (0, 0),
                "{lb}: the decision allocated ({change:?})"
            );
        }
    });
}
