//! A `PeerAuthentication` (security.istio.io/v1).

use super::PolicyScope;

/// A `PeerAuthentication` (security.istio.io/v1).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerAuthentication {
    /// Where the policy applies.
    pub scope: PolicyScope,
}
