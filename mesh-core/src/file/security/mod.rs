//! `security.istio.io` resources: `PeerAuthentication`,
//! `RequestAuthentication` and `AuthorizationPolicy`, each translated by
//! its own module into the model's
//! [`security`](crate::model::security) types.
//!
//! Every translator takes the policy's scope (name, namespace, selector,
//! already read from `metadata` and `spec.selector`) and the rest of the
//! spec, and reports errors and warnings with their field paths.

mod authz;
mod peer_authn;
mod request_authn;

use super::yaml::Obj;
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{Labels, PolicyScope, SecurityPolicies};

/// The `apiVersion`s accepted for security resources.
pub(crate) const SECURITY_VERSIONS: &[&str] =
    &["security.istio.io/v1", "security.istio.io/v1beta1"];

/// The kinds of `security.istio.io` this translation reads.
pub(crate) const SECURITY_KINDS: &[&str] = &[
    "PeerAuthentication",
    "RequestAuthentication",
    "AuthorizationPolicy",
];

/// Translates one security resource into `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn translate(
    kind: &str,
    name: &str,
    namespace: &str,
    metadata: Option<Obj<'_>>,
    spec: Obj<'_>,
    out: &mut SecurityPolicies,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) {
    let scope = match scope(name, namespace, &spec) {
        Ok(s) => s,
        Err(e) => return errors.push(e),
    };
    let result = match kind {
        "PeerAuthentication" => {
            peer_authn::translate(scope, spec, &out.peer_authentications, errors, warnings)
                .map(|p| out.peer_authentications.push(p))
        }
        "RequestAuthentication" => request_authn::translate(scope, spec, errors, warnings)
            .map(|p| out.request_authentications.push(p)),
        _ => authz::translate(scope, metadata, spec, errors, warnings)
            .map(|p| out.authorization_policies.push(p)),
    };
    if let Err(e) = result {
        errors.push(e);
    }
}

/// The policy's scope: `spec.selector.matchLabels` (Istio's
/// `WorkloadSelector`; `targetRef(s)` are for gateways and waypoints and
/// are rejected by the callers' field checks).
fn scope(name: &str, namespace: &str, spec: &Obj<'_>) -> Result<PolicyScope, InvalidConfig> {
    let scope = PolicyScope::new(name, namespace);
    let path = FieldPath::root().field("selector");
    let Some(selector) = spec.obj("selector", &path)? else {
        return Ok(scope);
    };
    selector.only_fields(&["matchLabels"])?;
    let labels = selector.str_map("matchLabels")?;
    Ok(scope.with_selector(Labels::new(labels)))
}
