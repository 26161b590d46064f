//! Sequential requests over loopback HTTP/2 through the plain hyper-util
//! client or the mesh client, for profilers: `e2e_loop plain|mesh [n]`.

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
use tower::ServiceExt;

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
            let yaml =
                mesh_examples::yaml::service_entry("bench", 8080, "HTTP2", &[(server, "v1")]);
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
}
