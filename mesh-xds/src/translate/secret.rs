//! SDS `Secret` → [`SecretResource`]: PEM text for the identity store.
//!
//! Only inline data is accepted (`inline_bytes`, `inline_string`):
//! `filename` and `environment_variable` data sources are rejected, so an
//! ADS server can never make the process read its local files or
//! environment (key material on disk belongs to the bootstrap's
//! `file_watcher` certificate provider, gRFC A29). A secret whose other
//! fields would change how certificates are used or checked (a key
//! provider, a password, PKCS#12, SAN matchers or pinning on a validation
//! context…) is rejected rather than half-applied: the identity store
//! takes a chain and key, or roots, nothing more.

use std::sync::Arc;

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;

use super::values::{Doc, inline_text, join, require_pem};
use crate::resource::{DecodeContext, DecodeError, Decoded, SecretResource, XdsResource};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: Secret = super::proto(bytes, "Secret")?;
    if r.name.is_empty() {
        return Err(DecodeError::new(None, "Secret: name is empty"));
    }
    let mut doc = Doc::new(&r.name);
    let resource = secret(&mut doc, &r)?;
    let ignored = doc.ignored;
    Ok(Decoded {
        name: r.name.clone(),
        resource: XdsResource::Secret(resource),
        ignored,
    })
}

fn secret(doc: &mut Doc<'_>, r: &Secret) -> Result<SecretResource, DecodeError> {
    let unsupported = "not supported: the identity store takes PEM chain and key only";
    match &r.r#type {
        Some(Type::TlsCertificate(t)) => {
            let path = "tls_certificate";
            let (chain, key) = super::tls::inline_certificate(doc, path, t, unsupported)?;
            let chain_path = join(path, "certificate_chain");
            let key_path = join(path, "private_key");
            require_pem(doc, &chain_path, &chain, "CERTIFICATE")?;
            require_pem(doc, &key_path, &key, "PRIVATE KEY")?;
            Ok(SecretResource::TlsCertificate {
                certificate_chain: Arc::from(chain),
                private_key: Arc::from(key),
            })
        }
        Some(Type::ValidationContext(v)) => {
            let path = "validation_context";
            let a27 = "cannot be honoured: the identity store takes the roots only (rules A2.7)";
            for (set, field) in [
                (
                    v.ca_certificate_provider_instance.is_some(),
                    "ca_certificate_provider_instance",
                ),
                (v.system_root_certs.is_some(), "system_root_certs"),
                (v.watched_directory.is_some(), "watched_directory"),
                (
                    !v.verify_certificate_spki.is_empty(),
                    "verify_certificate_spki",
                ),
                (
                    !v.verify_certificate_hash.is_empty(),
                    "verify_certificate_hash",
                ),
                (
                    !v.match_typed_subject_alt_names.is_empty(),
                    "match_typed_subject_alt_names",
                ),
                (
                    !v.match_subject_alt_names.is_empty(),
                    "match_subject_alt_names",
                ),
                (
                    v.require_signed_certificate_timestamp
                        .as_ref()
                        .is_some_and(|b| b.value),
                    "require_signed_certificate_timestamp",
                ),
                (v.crl.is_some(), "crl"),
                (v.allow_expired_certificate, "allow_expired_certificate"),
                (v.trust_chain_verification != 0, "trust_chain_verification"),
                (
                    v.custom_validator_config.is_some(),
                    "custom_validator_config",
                ),
                (v.max_verify_depth.is_some(), "max_verify_depth"),
            ] {
                doc.reject_if(set, &join(path, field), a27)?;
            }
            let ca_path = join(path, "trusted_ca");
            let ca = inline_text(
                doc,
                &ca_path,
                v.trusted_ca
                    .as_ref()
                    .ok_or_else(|| doc.err(&ca_path, "unset"))?,
            )?;
            require_pem(doc, &ca_path, &ca, "CERTIFICATE")?;
            Ok(SecretResource::ValidationContext {
                trusted_ca: Arc::from(ca),
            })
        }
        Some(Type::SessionTicketKeys(_)) => Err(doc.err(
            "session_ticket_keys",
            "not supported (a client and a server of the mesh do not share ticket keys)",
        )),
        Some(Type::GenericSecret(_)) => Err(doc.err("generic_secret", "not supported")),
        None => Err(doc.err("type", "unset")),
    }
}
