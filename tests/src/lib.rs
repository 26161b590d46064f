//! Support for the end-to-end tests: a mesh from YAML text, requests
//! through it, and the statistics the tests check counts with.
//!
//! The tests themselves are in `tests/`: real loopback sockets, real
//! files, the real client and server stacks; no mocks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_tower::{Mesh, MeshClient};
use tower::ServiceExt;

pub mod fault_proxy;
pub mod peers;
pub mod xds_harness;
pub mod xds_script;

pub use mesh_examples::mesh_from_yaml;

/// Replaces the config of a mesh made by [`mesh_from_yaml`] and waits
/// until its clients route by it.
pub async fn republish(mesh: &Mesh, yaml: &str) {
    let v = mesh_examples::publish_yaml(mesh.store(), yaml);
    mesh.applied(v).await;
}

/// What one request produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response from the given version (`x-version`), with its status.
    Version(String, u16),
    /// A mesh error.
    Error(String),
}

/// Sends `GET url` with `headers` and reads the whole response.
pub async fn get(client: &MeshClient, url: &str, headers: &[(&str, &str)]) -> Outcome {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("valid request");
    match client.clone().oneshot(req).await {
        Ok(res) => {
            let status = res.status().as_u16();
            let version = res
                .headers()
                .get(mesh_examples::backends::VERSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            match res.into_body().collect().await {
                Ok(_) => Outcome::Version(version, status),
                Err(e) => Outcome::Error(format!("body: {e}")),
            }
        }
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// Sends `n` requests from `concurrency` tasks and counts the versions
/// that answered (errors count under `"error: <message>"`).
pub async fn count_versions(
    client: &MeshClient,
    url: &str,
    n: u64,
    concurrency: u64,
) -> HashMap<String, u64> {
    let counts: Arc<std::sync::Mutex<HashMap<String, u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, counts, next, url) = (
            client.clone(),
            Arc::clone(&counts),
            Arc::clone(&next),
            url.to_owned(),
        );
        tasks.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let key = match get(&client, &url, &[]).await {
                    Outcome::Version(v, 200) => v,
                    Outcome::Version(v, s) => format!("{v} status {s}"),
                    Outcome::Error(e) => format!("error: {e}"),
                };
                *counts.lock().expect("not poisoned").entry(key).or_default() += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}

    counts.lock().expect("not poisoned").clone()
}

/// Whether `k` successes in `n` trials are within `sigmas` standard
/// deviations of the binomial expectation for probability `p`.
pub fn within_sigmas(k: u64, n: u64, p: f64, sigmas: f64) -> bool {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - n as f64 * p).abs() <= sigmas * sd
}

/// Installs a test log subscriber once (`RUST_LOG` to see more).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
