//! Sequential requests over loopback HTTP/2 through the plain hyper-util
//! client, the mesh client, or the mesh client with every resilience
//! policy on, for profilers: `e2e_loop plain|mesh|full|mesh+<yaml file> [n]`. Prints the
//! heap allocations per request (client and server share the process,
//! so compare modes rather than reading one number alone).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "mesh".into());
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let server = mesh_benches::spawn_h2_server();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let region = Region::new(GLOBAL);
    let label = mode.clone();
    rt.block_on(async move {
        if mode == "plain" {
            let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
            let url: http::Uri = format!("http://{server}/").parse().expect("uri");
            for _ in 0..n {
                let req = http::Request::get(url.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("req");
                let res = client.request(req).await.expect("response");
                res.into_body().collect().await.expect("body");
            }
        } else {
            let mut yaml =
                mesh_examples::yaml::service_entry("bench", 8080, "HTTP2", &[(server, "v1")]);
            if mode == "full" {
                yaml.push_str(mesh_benches::EVERY_POLICY);
            } else if let Some(extra) = mode.strip_prefix("mesh+") {
                // Extra policy documents from a file, to attribute costs.
                yaml.push_str(&std::fs::read_to_string(extra).expect("policy file"));
            }
            let client = mesh_examples::mesh_from_yaml(&yaml).client();
            let url: http::Uri = "http://bench:8080/".parse().expect("uri");
            for _ in 0..n {
                let req = http::Request::get(url.clone())
                    .body(Empty::<Bytes>::new())
                    .expect("req");
                let res = client.clone().oneshot(req).await.expect("response");
                res.into_body().collect().await.expect("body");
            }
        }
    });
    let change = region.change();
    println!(
        "{label}: {:.1} allocations per request (client and server)",
        change.allocations as f64 / n as f64
    );
}
