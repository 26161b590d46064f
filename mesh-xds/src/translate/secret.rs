//! `Secret` → the model. (Foundation stub: the translation lands next.)

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::resource::{DecodeContext, DecodeError, Decoded};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: Secret = super::proto(bytes, "Secret")?;
    Err(DecodeError::new(
        Some(&r.name),
        "Secret is not translated yet",
    ))
}
