//! `Listener` → the model. (Foundation stub: the translation lands next.)

use envoy_types::pb::envoy::config::listener::v3::Listener;

use crate::resource::{DecodeContext, DecodeError, Decoded};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: Listener = super::proto(bytes, "Listener")?;
    Err(DecodeError::new(
        Some(&r.name),
        "Listener is not translated yet",
    ))
}
