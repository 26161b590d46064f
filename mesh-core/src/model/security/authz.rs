//! An `AuthorizationPolicy` (security.istio.io/v1).

use super::PolicyScope;

/// An `AuthorizationPolicy` (security.istio.io/v1).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizationPolicy {
    /// Where the policy applies.
    pub scope: PolicyScope,
}
