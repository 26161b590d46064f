//! A `RequestAuthentication` (security.istio.io/v1).

use super::PolicyScope;

/// A `RequestAuthentication` (security.istio.io/v1).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestAuthentication {
    /// Where the policy applies.
    pub scope: PolicyScope,
}
