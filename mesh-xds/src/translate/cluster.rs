//! `Cluster` → the model. (Foundation stub: the translation lands next.)

use envoy_types::pb::envoy::config::cluster::v3::Cluster;

use crate::resource::{DecodeContext, DecodeError, Decoded};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: Cluster = super::proto(bytes, "Cluster")?;
    Err(DecodeError::new(
        Some(&r.name),
        "Cluster is not translated yet",
    ))
}
