//! The data and pure logic of the mesh: the validated config model, the
//! process-wide config store, the Istio-YAML file source, route matching,
//! and the load-balancing pickers.
//!
//! Nothing here opens a socket or knows about Tower: `mesh-tower` turns
//! this config into client and server behaviour, `mesh-xds` feeds the same
//! store from a control plane. Config flows in one direction:
//!
//! ```text
//! Istio YAML ──> file::FileSource ─┐
//! xDS (mesh-xds) ──────────────────┼─> ConfigStore ──> Snapshot ──> layers
//! code (Resources) ────────────────┘    (ArcSwap)       (immutable)
//! ```
//!
//! A [`Snapshot`] is complete and validated: every route points at a
//! cluster the same snapshot holds. Readers load it with one atomic
//! operation and never lock.
//!
//! # Example
//!
//! Load Istio YAML, then ask where a request would go:
//!
//! ```
//! use mesh_core::{check_route, CheckRequest, ConfigStore, file::FileSource};
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: ServiceEntry
//! metadata: { name: reviews }
//! spec:
//!   hosts: [reviews]
//!   ports: [{ number: 9080, name: http, protocol: HTTP }]
//!   resolution: STATIC
//!   endpoints:
//!   - { address: 10.0.0.1, labels: { version: v1 } }
//!   - { address: 10.0.0.2, labels: { version: v2 } }
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: { name: reviews }
//! spec:
//!   host: reviews
//!   subsets:
//!   - { name: v1, labels: { version: v1 } }
//!   - { name: v2, labels: { version: v2 } }
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: reviews }
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - match: [{ headers: { x-canary: { exact: "true" } } }]
//!     route: [{ destination: { host: reviews, subset: v2 } }]
//!   - route:
//!     - { destination: { host: reviews, subset: v1 }, weight: 90 }
//!     - { destination: { host: reviews, subset: v2 }, weight: 10 }
//! "#;
//! let store = ConfigStore::new();
//! let translation = FileSource::parse_str("mesh.yaml", yaml)?;
//! store.publish("file:mesh.yaml".into(), translation.resources)?;
//!
//! let canary = CheckRequest::get("http://reviews:9080/")?.header("x-canary", "true")?;
//! let check = check_route(&store.snapshot(), &canary)?;
//! assert_eq!(check.destinations[0].subset.as_deref(), Some("v2"));
//!
//! let split = check_route(&store.snapshot(), &CheckRequest::get("http://reviews:9080/")?)?;
//! assert_eq!(split.destinations.len(), 2);
//! assert_eq!(split.destinations[0].share, 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod authz;
mod check;
mod error;
pub mod file;
pub mod lb;
pub mod model;
mod name;
pub mod outlier;
pub mod ratelimit;
mod request;
mod snapshot;
mod store;

pub use check::{
    CheckError, CheckRequest, CheckedDestination, InvalidCheckRequest, RouteCheck, check_route,
};
pub use error::{FieldPath, InvalidConfig};
pub use name::{ClusterName, ListenerName, RouteTableName};
pub use request::{RouteRequest, authority_port};
pub use snapshot::{NoRoute, Provenance, ResourceKind, Resources, RouteHit, Snapshot, Version};
pub use store::{
    ConfigStore, PublishError, Rejection, ResourceWatch, SourceId, SourceStatus, UpdateCounts,
};
