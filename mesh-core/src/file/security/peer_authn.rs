//! `PeerAuthentication` (security.istio.io/v1).

use crate::error::{FieldPath, InvalidConfig};
use crate::file::yaml::Obj;
use crate::model::{PeerAuthentication, PolicyScope};

/// Translates the spec of a `PeerAuthentication`.
pub(crate) fn translate(
    scope: PolicyScope,
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<PeerAuthentication, InvalidConfig> {
    let _ = (spec, errors, warnings, scope);
    Err(InvalidConfig::new(
        FieldPath::root(),
        "kind PeerAuthentication is not supported yet",
    ))
}
