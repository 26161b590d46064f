//! The behaviour of the mesh: Tower layers for clients and servers,
//! configured live from a `mesh-core` [`ConfigStore`](mesh_core::ConfigStore).
//!
//! A process creates one [`Mesh`] from its config store and makes every
//! client and server from it:
//!
//! - [`MeshClient`] is a `tower::Service<http::Request<B>>` that routes
//!   each request by the live config (route → shaping → fault → rate
//!   limit → timeout → retry → circuit breaker → balance, Envoy's order),
//!   usable with hyper-style code and as the transport of tonic clients;
//! - [`MeshServerLayer`] goes on an axum `Router` or a tonic `Server`, with
//!   [`Mesh::server_rate_limit`] inside it for inbound local rate limits.
//!
//! Each policy is also a layer of its own ([`route::RouteLayer`],
//! [`shaping::ShapingLayer`], [`fault::FaultLayer`],
//! [`ratelimit::RateLimitLayer`], [`timeout::TimeoutLayer`],
//! [`balance::Balance`], ...) in tower's layout. The
//! layers read per-request policy from the [`route::RouteDecision`] that
//! the route layer puts into the request's extensions, so an edit of the
//! config applies from the next request on, without restarting anything
//! and without dropping connections or per-endpoint state.
//!
//! # Example
//!
//! A service that calls `reviews` through the mesh, configured by an Istio
//! YAML file that is watched for changes, and serves its own axum router
//! behind the server layer:
//!
//! ```no_run
//! use mesh_core::{ConfigStore, file::FileSource};
//! use mesh_tower::Mesh;
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = ConfigStore::new();
//! let _watch = FileSource::new("mesh.yaml").watch(store.clone())?;
//! let mesh = Mesh::new(store);
//!
//! // Outbound: routed, split and balanced by the VirtualService and
//! // DestinationRule of `reviews`.
//! let client = mesh.client();
//! let req = http::Request::get("http://reviews:9080/reviews/1")
//!     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
//! let res = client.clone().oneshot(req).await?;
//! println!("{}", res.status());
//!
//! // Inbound: request ids and per-route counts.
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .layer(mesh.server_layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! A tonic client takes a client bound to its target as its channel, since
//! tonic requests carry no authority:
//! `RatingsClient::new(mesh.client_for("http://ratings:50051")?)` (the
//! `mesh-examples` crate has the whole program).
//!
//! # Guarantees
//!
//! - Config is read with one atomic load per request; counters are atomics;
//!   no lock is taken on the request path.
//! - Every background task is owned: the [`Mesh`]'s runtime task ends with
//!   the last handle.
//! - Time comes from `tokio::time`, so tests can pause it.

pub mod access_log;
pub mod admin;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
mod client;
pub mod deadline;
mod endpoint;
mod error;
pub mod fault;
mod local_reply;
mod mesh;
pub mod metrics;
pub mod ratelimit;
pub mod retry;
pub mod route;
mod runtime;
pub mod serve;
pub mod server;
pub mod shaping;
pub mod timeout;
pub mod trace;
#[cfg(feature = "xds")]
pub mod xds;

pub use body::{BoxBody, ResponseBody};
pub use client::{Decision, InvalidTarget, MeshClient, ResponseFuture, Target};
pub use endpoint::ConnectError;
pub use error::{BoxError, Elapsed, Error, TimeoutReason};
pub use mesh::{ClusterStats, EndpointStatus, Mesh, MeshBuilder, Node};
#[cfg(feature = "xds")]
pub use serve::xds::{ServingState, serve_xds};
pub use serve::{ConnectionSecurity, SecurityMode, ServeConfig, TransportMode, serve};
pub use server::{MeshServerLayer, ServerStats};
