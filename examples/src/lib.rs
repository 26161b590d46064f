//! Shared parts of the runnable examples, also used by the end-to-end
//! tests and the benchmarks: the demo's backends (an axum `reviews`
//! service and a tonic `ratings` service, both on loopback) and the mesh
//! YAML that describes them.
//!
//! The flagship demo is `src/bin/demo.rs`:
//! `cargo run -p mesh-examples --bin demo`. The security example,
//! `src/bin/secure.rs` (`cargo run -p mesh-examples --bin secure`), runs
//! [`secure::run`]: mutual TLS with SPIFFE identities from a test CA,
//! STRICT PeerAuthentication and an AuthorizationPolicy, all on loopback.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use mesh_examples::{backends, yaml};
//!
//! let v1 = backends::Reviews::start("v1").await?;
//! let v2 = backends::Reviews::start("v2").await?;
//! let text = yaml::reviews(&[(&v1, "v1"), (&v2, "v2")], &yaml::Split::Weights(&[("v1", 90), ("v2", 10)]));
//! # let _ = text;
//! # Ok(()) }
//! ```

pub mod backends;
pub mod scripted;
pub mod secure;
pub mod yaml;

use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_tower::Mesh;

/// A mesh whose whole config is `yaml` (Istio kinds), published once as
/// the source `file:mesh.yaml`. Must be called within a Tokio runtime.
///
/// # Panics
///
/// When the YAML is invalid: this is for tests, benches and examples whose
/// config is part of the program.
pub fn mesh_from_yaml(yaml: &str) -> Mesh {
    let store = ConfigStore::new();
    publish_yaml(&store, yaml);
    Mesh::new(store)
}

/// Replaces the `file:mesh.yaml` source of `store` with `yaml` and returns
/// the new version.
///
/// # Panics
///
/// When the YAML is invalid or the store rejects it.
pub fn publish_yaml(store: &ConfigStore, yaml: &str) -> mesh_core::Version {
    let translation = match FileSource::parse_str("mesh.yaml", yaml) {
        Ok(t) => t,
        Err(e) => panic!("invalid config:\n{e}"),
    };
    match store.publish("file:mesh.yaml".into(), translation.resources) {
        Ok(v) => v,
        Err(e) => panic!("config rejected: {e}"),
    }
}

/// The generated `ratings` gRPC client and server.
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod proto {
    tonic::include_proto!("ratings");
}
