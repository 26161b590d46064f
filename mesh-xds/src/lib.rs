//! The xDS side of the mesh: an ADS client that subscribes once per
//! process (State-of-the-World and incremental), validates what istiod or
//! any ADS server sends, translates `Listener`, `RouteConfiguration`,
//! `Cluster`, `ClusterLoadAssignment` and `Secret` resources into the
//! `mesh-core` model and publishes them to the process's
//! [`ConfigStore`](mesh_core::ConfigStore); per-resource status for CSDS;
//! gRPC's bootstrap format; and an ADS server that serves a `mesh-core`
//! snapshot, so a mesh YAML file can be the control plane of Envoy and of
//! other processes.
//!
//! `mesh-xds` never depends on `mesh-tower`: the layers see only the model.
//!
//! The vocabulary both halves share is the xDS v3 type URL and how it maps
//! to the model's resource kinds:
//!
//! ```
//! use mesh_core::ResourceKind;
//! use mesh_xds::TypeUrl;
//!
//! let t = TypeUrl::parse("type.googleapis.com/envoy.config.cluster.v3.Cluster").unwrap();
//! assert_eq!(t, TypeUrl::Cluster);
//! assert_eq!(t.resource_kind(), Some(ResourceKind::Cluster));
//! assert_eq!(TypeUrl::of(ResourceKind::EndpointSet), TypeUrl::ClusterLoadAssignment);
//! ```

pub mod bootstrap;
pub mod client;
pub mod config;
pub mod csds;
pub mod encode;
pub mod resource;
pub mod server;
pub mod status;
pub mod translate;
mod type_url;

pub use bootstrap::{Bootstrap, InvalidBootstrap};
pub use client::{SdsWatch, Watch, XdsClient, XdsClientMetrics};
pub use config::{ClientConfig, SdsIdentity};
pub use resource::{DecodeContext, DecodeError, Decoded, XdsResource};
pub use status::{ResourceState, ResourceStatus};
pub use type_url::TypeUrl;

/// The Envoy v3 protobuf types (re-exported from `envoy-types`), for code
/// that builds resources, such as tests and control planes.
pub use envoy_types::pb;
