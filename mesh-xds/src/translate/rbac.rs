//! The RBAC HTTP filter (`envoy.extensions.filters.http.rbac.v3.RBAC`) →
//! [`AuthorizationPolicy`] values.

use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbacpb;
use mesh_core::model::AuthorizationPolicy;

use super::route::{Res, join};

/// The authorization policies equivalent to one RBAC filter of the server
/// listener on `port`. An RBAC config the model cannot express exactly
/// rejects the listener: a policy is never weakened.
pub(super) fn translate(cfg: &rbacpb::Rbac, p: &str, _port: u16) -> Res<Vec<AuthorizationPolicy>> {
    if cfg.rules.is_none() && cfg.matcher.is_none() {
        // Envoy: without rules the filter enforces nothing.
        return Ok(Vec::new());
    }
    Err(format!(
        "{}: RBAC rules are not translated yet",
        join(p, "rules")
    ))
}
