//! `AuthorizationPolicy` (security.istio.io/v1).

use crate::error::{FieldPath, InvalidConfig};
use crate::file::yaml::Obj;
use crate::model::{AuthorizationPolicy, PolicyScope};

/// Translates the spec of a `AuthorizationPolicy`.
pub(crate) fn translate(
    scope: PolicyScope,
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<AuthorizationPolicy, InvalidConfig> {
    let _ = (spec, errors, warnings, scope);
    Err(InvalidConfig::new(
        FieldPath::root(),
        "kind AuthorizationPolicy is not supported yet",
    ))
}
