//! Envoy v3 resources → the `mesh-core` model: decoding, validation and
//! translation of one resource at a time.
//!
//! Each translator checks what gRPC's xDS client checks (gRFC A27 and the
//! gRFCs per feature), rejects a value it cannot honour (always for
//! security fields: section A2.7 of the rules reference) and records the
//! fields it ignores in [`Decoded::ignored`].

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::TypeUrl;
use crate::resource::{DecodeContext, DecodeError, Decoded};

// Deprecated Envoy fields are still read: control planes (istiod among
// them) still send them, and ignoring them would change behaviour.
#[allow(deprecated)]
mod cluster;
#[allow(deprecated)]
mod endpoint;
#[allow(deprecated)]
mod lb;
pub(crate) mod listener;
mod rbac;
mod route;
#[allow(deprecated)]
mod secret;
#[allow(deprecated)]
mod tls;
mod values;

pub use lb::ROUTE_HASH_POLICY_HEADER;

pub use route::{HttpDefaults, ISTIO_FAULT_FILTER, resolve_route_hash_keys, route_configuration};

/// Decodes, validates and translates one resource of a response for
/// `type_url`.
///
/// Fails when the `Any`'s own type differs from `type_url` (A1.7), when
/// the bytes do not decode, or when the resource is invalid; the error
/// carries the resource name whenever it could be read, so that only that
/// resource is rejected (gRFC A46).
pub fn decode(type_url: TypeUrl, any: &Any, ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    if any.type_url != type_url.as_str() {
        return Err(DecodeError::new(
            None,
            format!(
                "resource type {:?} in a response for {}",
                any.type_url,
                type_url.as_str()
            ),
        ));
    }
    match type_url {
        TypeUrl::Listener => listener::decode(&any.value, ctx),
        TypeUrl::RouteConfiguration => route::decode(&any.value, ctx),
        TypeUrl::Cluster => cluster::decode(&any.value, ctx),
        TypeUrl::ClusterLoadAssignment => endpoint::decode(&any.value, ctx),
        TypeUrl::Secret => secret::decode(&any.value, ctx),
    }
}

/// Decodes the protobuf `M` from `bytes`, naming the type in the error.
pub(crate) fn proto<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, DecodeError> {
    M::decode(bytes).map_err(|e| DecodeError::new(None, format!("{what}: undecodable: {e}")))
}

#[cfg(test)]
#[allow(deprecated)]
mod cds_tests;
