//! `RouteConfiguration` → the model. (Foundation stub: the translation lands next.)

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;

use crate::resource::{DecodeContext, DecodeError, Decoded};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: RouteConfiguration = super::proto(bytes, "RouteConfiguration")?;
    Err(DecodeError::new(
        Some(&r.name),
        "RouteConfiguration is not translated yet",
    ))
}
