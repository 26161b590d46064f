//! Workload identity for the mesh: SPIFFE IDs, X.509-SVID validation
//! against per-trust-domain bundles, credentials that rotate with no
//! restart, and rustls client and server configs that verify SPIFFE IDs
//! rather than DNS names.
//!
//! - [`SpiffeId`]: parsed and validated as the SPIFFE specification
//!   (`standards/SPIFFE-ID.md`) requires, with Istio's
//!   `spiffe://<trust domain>/ns/<namespace>/sa/<service account>` form.
//! - [`svid::validate_leaf`]: the X.509-SVID leaf rules.
//! - [`TrustBundle`]: roots per trust domain.
//! - [`Credentials`] and [`CredentialStore`]: the workload's SVID and key,
//!   swapped atomically; new handshakes read the current ones.
//! - [`FileWatcher`]: gRPC's `file_watcher` certificate provider: reloads
//!   certificate, key and roots from files into a [`CredentialStore`].
//! - [`tls::server_config`] / [`tls::client_config`]: mutual TLS with
//!   SPIFFE verifiers and a [`tls::PeerMatcher`]; ring provider.
//! - `test_util` (feature `test-util`): a test CA issuing SVIDs.
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

mod bundle;
mod credentials;
mod file_watcher;
mod spiffe;
pub mod svid;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod tls;

#[cfg(test)]
mod tests;

pub use bundle::{InvalidBundle, TrustBundle};
pub use credentials::{CredentialStore, Credentials, InvalidCredentials};
pub use file_watcher::{FileWatcher, FileWatcherConfig, FileWatcherError, FileWatcherStats};
pub use spiffe::{InvalidSpiffeId, SpiffeId};
