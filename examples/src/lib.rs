//! Shared parts of the runnable examples, also used by the end-to-end
//! tests and the benchmarks: the demo's backends (an axum `reviews`
//! service and a tonic `ratings` service, both on loopback) and the mesh
//! YAML that describes them.
//!
//! The flagship demo is `src/bin/demo.rs`:
//! `cargo run -p mesh-examples --bin demo`.
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
pub mod yaml;

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
