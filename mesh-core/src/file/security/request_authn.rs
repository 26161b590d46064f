//! `RequestAuthentication` (security.istio.io/v1).

use crate::error::{FieldPath, InvalidConfig};
use crate::file::yaml::Obj;
use crate::model::{PolicyScope, RequestAuthentication};

/// Translates the spec of a `RequestAuthentication`.
pub(crate) fn translate(
    scope: PolicyScope,
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<RequestAuthentication, InvalidConfig> {
    let _ = (spec, errors, warnings, scope);
    Err(InvalidConfig::new(
        FieldPath::root(),
        "kind RequestAuthentication is not supported yet",
    ))
}
