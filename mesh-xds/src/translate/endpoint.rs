//! `ClusterLoadAssignment` → the model. (Foundation stub: the translation lands next.)

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use crate::resource::{DecodeContext, DecodeError, Decoded};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: ClusterLoadAssignment = super::proto(bytes, "ClusterLoadAssignment")?;
    Err(DecodeError::new(
        Some(&r.cluster_name),
        "ClusterLoadAssignment is not translated yet",
    ))
}
