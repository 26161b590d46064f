//! Side-by-side load over loopback HTTP/2: the mesh client against a plain
//! hyper-util client, to the same plain hyper server, in the same run.
//!
//! The server runs on one thread and the client on another, one core each
//! on a 2-core machine. Rounds alternate between the two clients so drift
//! affects both; the median round is reported. Targets (issue 2): mesh
//! throughput at least 95% of plain, p99 within 10%.
//!
//! `MESH_BENCH_SECS` sets the length of each measured run (default 3).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_benches::{Report, closed_loop, fixed_rate, spawn_h2_server};
use tower::ServiceExt;

fn median(mut reports: Vec<Report>) -> Report {
    reports.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    reports.swap_remove(reports.len() / 2)
}

fn row(name: &str, r: &Report) {
    println!(
        "{name:<28} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>6}",
        r.throughput, r.latency_us[0], r.latency_us[1], r.latency_us[2], r.latency_us[3], r.errors
    );
}

fn main() {
    let secs: u64 = std::env::var("MESH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let d = Duration::from_secs(secs);
    let server = spawn_h2_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let plain: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let plain_url: http::Uri = format!("http://{server}/").parse().expect("uri");
        let send_plain = move || {
            let (plain, url) = (plain.clone(), plain_url.clone());
            async move {
                let req = http::Request::get(url)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                match plain.request(req).await {
                    Ok(res) => res.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        };

        let yaml = mesh_examples::yaml::service_entry("bench", 8080, "HTTP2", &[(server, "v1")]);
        let mesh = mesh_examples::mesh_from_yaml(&yaml);
        let client = mesh.client();
        let mesh_url: http::Uri = "http://bench:8080/".parse().expect("uri");
        // Both clients build their request the same way from a parsed URI.
        let send_mesh = move || {
            let (client, url) = (client.clone(), mesh_url.clone());
            async move {
                let req = http::Request::get(url)
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                match client.oneshot(req).await {
                    Ok(res) => res.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        };

        // Warm up connections and allocator caches.
        closed_loop(16, Duration::from_millis(500), send_plain.clone()).await;
        closed_loop(16, Duration::from_millis(500), send_mesh.clone()).await;

        println!("loopback HTTP/2, server and client on one core each, {secs}s per run");
        println!(
            "{:<28} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6}",
            "client", "req/s", "p50 us", "p90 us", "p99 us", "p99.9", "errors"
        );
        let (mut plain_runs, mut mesh_runs) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            plain_runs.push(closed_loop(64, d, send_plain.clone()).await);
            mesh_runs.push(closed_loop(64, d, send_mesh.clone()).await);
        }
        let (p, m) = (median(plain_runs), median(mesh_runs));
        row("plain hyper-util (64 conc)", &p);
        row("mesh client (64 conc)", &m);

        let p_rate = fixed_rate(2000, d, send_plain.clone()).await;
        let m_rate = fixed_rate(2000, d, send_mesh.clone()).await;
        row("plain hyper-util (2000/s)", &p_rate);
        row("mesh client (2000/s)", &m_rate);

        let tput = m.throughput / p.throughput * 100.0;
        let p99 = m.latency_us[2] as f64 / p.latency_us[2].max(1) as f64 * 100.0 - 100.0;
        let p99_rate = m_rate.latency_us[2] as f64 - p_rate.latency_us[2] as f64;
        println!("\nmesh/plain throughput: {tput:.1}% (target >= 95%)");
        println!("mesh vs plain p99 at 64 concurrent: {p99:+.1}% (target within 10%)");
        println!("mesh vs plain p99 at 2000/s: {p99_rate:+.0} us");
    });
}
