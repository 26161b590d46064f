//! Runs one routing decision in a loop, for profilers
//! (`valgrind --tool=callgrind`, `perf`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
use std::net::SocketAddr;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _g = rt.enter();
    let endpoints: Vec<SocketAddr> = (1..=10)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
        .collect();
    let yaml = mesh_examples::yaml::many_routes(50, &endpoints, "LEAST_REQUEST");
    let client = mesh_examples::mesh_from_yaml(&yaml).client();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/api/r25/x".into());
    let mut req = http::Request::get(format!("http://bench:8080{path}"))
        .body(())
        .expect("request");
    for _ in 0..200_000 {
        std::hint::black_box(client.decide(&mut req).expect("routed"));
    }
}
