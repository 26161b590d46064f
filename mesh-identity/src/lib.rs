//! Workload identity for the mesh: SPIFFE IDs, and (as the identity work
//! lands) X.509-SVID validation against trust bundles, rotating
//! credentials, rustls client and server configs that verify SPIFFE IDs
//! rather than DNS names, and the acceptor that serves mTLS and plaintext
//! on one port (Istio's PERMISSIVE mode).
//!
//! What is here today is the identity itself: [`SpiffeId`], parsed and
//! validated as the SPIFFE specification (`standards/SPIFFE-ID.md`)
//! requires, with Istio's `spiffe://<trust domain>/ns/<namespace>/sa/<service
//! account>` form built in.
//!
//! ```
//! use mesh_identity::SpiffeId;
//!
//! let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse()?;
//! assert_eq!(id.trust_domain(), "cluster.local");
//! assert_eq!(id.istio_namespace_and_account(), Some(("default", "reviews")));
//! assert!("spiffe://cluster.local/ns/../sa/x".parse::<SpiffeId>().is_err());
//! # Ok::<(), mesh_identity::InvalidSpiffeId>(())
//! ```

mod spiffe;

pub use spiffe::{InvalidSpiffeId, SpiffeId};
