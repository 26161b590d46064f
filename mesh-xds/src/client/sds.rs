//! SDS secrets into the identity store: the workload certificate and the
//! roots, subscribed by name over the process's one ADS stream, validated
//! as an identity, and swapped into a [`CredentialStore`] that the mesh's
//! TLS configs read on every handshake.
//!
//! Istio's names are those istio-agent serves Envoy (`default`, the
//! workload's chain and key; `ROOTCA`, the roots of the trust domain):
//! [`SdsIdentity::istio`]. Proxyless gRPC gets its certificates from
//! certificate providers instead (gRFC A29); both shapes are supported and
//! neither changes the other.
//!
//! # Validation (rules A2.7, X509-SVID.md, checklist B.2, B.4)
//!
//! A secret watched as an identity's certificate must be a
//! `tls_certificate` whose leaf is a valid X.509-SVID
//! ([`mesh_identity::svid::validate_leaf`]) in the identity's trust domain,
//! and whose private key matches the leaf (B.4.2). A secret watched as its
//! validation context must be a `validation_context` whose `trusted_ca`
//! holds usable roots. Anything else NACKs that secret with the field path
//! and the reason (`default: tls_certificate.private_key: …`), per
//! resource (gRFC A46), before it is cached; the secret's last good value
//! stays cached and in use (A2.3). The translator
//! ([`crate::translate`]) has already rejected fields the store cannot
//! honour (a password, PKCS#12, a key provider, pinning or SAN matchers on
//! the roots…).
//!
//! # Publication
//!
//! Nothing is published to the store until **both** halves have a valid
//! value: until then the store has no credentials and an empty bundle, so
//! mTLS handshakes fail closed (B.4.3: no plaintext fallback). From then on
//! every accepted change of either half swaps the pair into the store in
//! one step ([`CredentialStore::set`]): new handshakes use it, established
//! connections keep what they negotiated (B.4.4). The store never loses
//! its last good identity to the control plane: a NACK, a deletion (even
//! with `fail_on_data_errors`, which drops the cached secret) or the end
//! of the stream leaves it as it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use envoy_types::pb::google::protobuf::Any;
use mesh_identity::{CredentialStore, Credentials, TrustBundle, svid};
use prost::Message;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use super::Owner;
use super::state::State;
use crate::TypeUrl;
use crate::config::SdsIdentity;
use crate::resource::{DecodeContext, DecodeError, Decoded, SecretResource, XdsResource};
use crate::status::ResourceState;

/// What replaces a private key in config dumps (CSDS, `/xds_status`), as
/// Envoy's admin config dump does for SDS secrets.
pub const REDACTED: &str = "[redacted]";

/// Counters of one identity subscription.
#[derive(Debug)]
pub struct SdsIdentityStats {
    updates: watch::Sender<u64>,
    rejections: AtomicU64,
}

impl SdsIdentityStats {
    fn new() -> Self {
        Self {
            updates: watch::Sender::new(0),
            rejections: AtomicU64::new(0),
        }
    }

    /// How many times the store was given new credentials or roots, the
    /// first time included.
    pub fn updates(&self) -> u64 {
        *self.updates.borrow()
    }

    /// How many updates of the identity's secrets were rejected (NACKed);
    /// each kept the previous identity.
    pub fn rejections(&self) -> u64 {
        self.rejections.load(Ordering::Relaxed)
    }
}

/// What the client task and the handle share for one identity.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) identity: SdsIdentity,
    store: Arc<CredentialStore>,
    stats: SdsIdentityStats,
}

/// A subscription of an [`SdsIdentity`] into a [`CredentialStore`]
/// ([`XdsClient::watch_identity`](crate::XdsClient::watch_identity)).
///
/// Dropping it unsubscribes the secrets (when no other watch names them);
/// the store keeps the last identity it was given.
pub struct SdsWatch {
    owner: Arc<Owner>,
    id: u64,
    sink: Arc<Sink>,
}

impl std::fmt::Debug for SdsWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsWatch")
            .field("identity", &self.sink.identity)
            .field("updates", &self.sink.stats.updates())
            .finish_non_exhaustive()
    }
}

impl SdsWatch {
    pub(super) fn new(owner: Arc<Owner>, identity: SdsIdentity) -> Self {
        let sink = Arc::new(Sink {
            identity,
            // Fails closed until both secrets arrived (B.4.3).
            store: Arc::new(CredentialStore::without_credentials(TrustBundle::new())),
            stats: SdsIdentityStats::new(),
        });
        let id = owner.shared.add_identity(Arc::clone(&sink));
        Self { owner, id, sink }
    }

    /// The secrets watched.
    pub fn identity(&self) -> &SdsIdentity {
        &self.sink.identity
    }

    /// The store the secrets feed: give it to the mesh
    /// (`MeshBuilder::with_credentials`) or build TLS configs from it
    /// ([`mesh_identity::tls`]). It has no credentials until both secrets
    /// arrived valid.
    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.sink.store
    }

    /// The counters.
    pub fn stats(&self) -> &SdsIdentityStats {
        &self.sink.stats
    }

    /// Waits until the store was updated at least `n` times (`1`: the
    /// first identity is in place).
    pub async fn wait_for_updates(&self, n: u64) {
        let mut rx = self.sink.stats.updates.subscribe();
        // The sender lives in `self`: the wait cannot fail while borrowed.
        let _ = rx.wait_for(|u| *u >= n).await;
    }
}

impl Drop for SdsWatch {
    fn drop(&mut self) {
        self.owner.shared.remove_identity(self.id);
    }
}

// === validation ===

/// The identity checks of a decoded `Secret` (see the module docs), for
/// every watched identity that names it. Other types pass unchanged.
pub(crate) fn check(
    ctx: &DecodeContext,
    t: TypeUrl,
    decoded: Decoded,
) -> Result<Decoded, DecodeError> {
    if t != TypeUrl::Secret {
        return Ok(decoded);
    }
    let XdsResource::Secret(secret) = &decoded.resource else {
        return Ok(decoded);
    };
    let name = decoded.name.as_str();
    let err =
        |path: &str, reason: String| DecodeError::new(Some(name), format!("{path}: {reason}"));
    for identity in &ctx.sds_identities {
        if identity.certificate == name {
            match secret {
                SecretResource::TlsCertificate {
                    certificate_chain,
                    private_key,
                } => {
                    credentials(identity, certificate_chain, private_key)
                        .map_err(|(path, reason)| err(path, reason))?;
                }
                SecretResource::ValidationContext { .. } => {
                    return Err(err(
                        "validation_context",
                        format!(
                            "the secret is the workload certificate of the identity in {:?}: a tls_certificate is required",
                            identity.trust_domain
                        ),
                    ));
                }
            }
        }
        if identity.validation == name {
            match secret {
                SecretResource::ValidationContext { trusted_ca } => {
                    bundle(identity, trusted_ca).map_err(|(path, reason)| err(path, reason))?;
                }
                SecretResource::TlsCertificate { .. } => {
                    return Err(err(
                        "tls_certificate",
                        format!(
                            "the secret is the roots of the trust domain {:?}: a validation_context is required",
                            identity.trust_domain
                        ),
                    ));
                }
            }
        }
    }
    Ok(decoded)
}

/// The credentials of a `tls_certificate` secret, or the field path and
/// the reason they cannot be used.
fn credentials(
    identity: &SdsIdentity,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Credentials, (&'static str, String)> {
    const CHAIN: &str = "tls_certificate.certificate_chain";
    const KEY: &str = "tls_certificate.private_key";
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (CHAIN, format!("unreadable PEM: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| (CHAIN, "no CERTIFICATE block".to_owned()))?;
    let id = svid::validate_leaf(leaf)
        .map_err(|e| (CHAIN, format!("the leaf is not a valid X.509-SVID: {e}")))?;
    if id.trust_domain() != identity.trust_domain {
        return Err((
            CHAIN,
            format!(
                "the leaf's SPIFFE ID {id} is not in the identity's trust domain {:?}",
                identity.trust_domain
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| (KEY, format!("unreadable PEM: {e}")))?;
    // The leaf was checked above: what remains is the key (B.4.2).
    Credentials::from_der(chain, key).map_err(|e| (KEY, e.reason().to_owned()))
}

/// The trust bundle of a `validation_context` secret, or the field path
/// and the reason it cannot be used.
fn bundle(identity: &SdsIdentity, pem: &str) -> Result<TrustBundle, (&'static str, String)> {
    TrustBundle::new()
        .with_pem_roots(&identity.trust_domain, pem)
        .map_err(|e| ("validation_context.trusted_ca", e.to_string()))
}

// === publication ===

/// The task's side of one identity: what it last gave the store.
#[derive(Debug)]
pub(crate) struct Publisher {
    id: u64,
    sink: Arc<Sink>,
    /// The PEM last swapped in: chain, key, roots.
    last: Option<[Arc<str>; 3]>,
    /// The error time of each secret's last rejection already counted.
    seen: [Option<SystemTime>; 2],
}

/// Brings the task's publishers in line with the handles' sinks; returns
/// the identities now watched.
pub(crate) fn sync(
    publishers: &mut Vec<Publisher>,
    sinks: &[(u64, Arc<Sink>)],
) -> std::collections::BTreeSet<SdsIdentity> {
    publishers.retain(|p| sinks.iter().any(|(id, _)| *id == p.id));
    for (id, sink) in sinks {
        if !publishers.iter().any(|p| p.id == *id) {
            publishers.push(Publisher {
                id: *id,
                sink: Arc::clone(sink),
                last: None,
                seen: [None, None],
            });
        }
    }
    sinks.iter().map(|(_, s)| s.identity.clone()).collect()
}

/// Counts new rejections and swaps changed identities into their stores.
pub(crate) fn publish(state: &State, publishers: &mut [Publisher]) {
    for p in publishers {
        let identity = &p.sink.identity;
        for (i, name) in [&identity.certificate, &identity.validation]
            .into_iter()
            .enumerate()
        {
            if let Some(e) = state.entry(TypeUrl::Secret, name)
                && e.state == ResourceState::Nacked
                && e.error_at.is_some()
                && e.error_at != p.seen[i]
            {
                p.seen[i] = e.error_at;
                p.sink.stats.rejections.fetch_add(1, Ordering::Relaxed);
            }
        }
        let cert = match state.value(TypeUrl::Secret, &identity.certificate) {
            Some(XdsResource::Secret(SecretResource::TlsCertificate {
                certificate_chain,
                private_key,
            })) => Some((certificate_chain, private_key)),
            _ => None,
        };
        let roots = match state.value(TypeUrl::Secret, &identity.validation) {
            Some(XdsResource::Secret(SecretResource::ValidationContext { trusted_ca })) => {
                Some(trusted_ca)
            }
            _ => None,
        };
        // Both halves first (see the module docs).
        let (Some((chain, key)), Some(ca)) = (cert, roots) else {
            continue;
        };
        let current = [Arc::clone(chain), Arc::clone(key), Arc::clone(ca)];
        if p.last.as_ref() == Some(&current) {
            continue;
        }
        // Checked when accepted; the identity (its trust domain) is the
        // one those checks used, as a watch's identity never changes.
        let built =
            credentials(identity, chain, key).and_then(|c| bundle(identity, ca).map(|b| (c, b)));
        match built {
            Ok((credentials, bundle)) => {
                tracing::info!(
                    id = %credentials.id(),
                    certificate = %identity.certificate,
                    validation = %identity.validation,
                    "workload identity from SDS updated"
                );
                p.sink.store.set(credentials, bundle);
                p.sink.stats.updates.send_modify(|u| *u += 1);
            }
            Err((path, reason)) => {
                // Only reachable if a secret was cached for another
                // identity with the same name; keep the last good one.
                tracing::warn!(
                    certificate = %identity.certificate,
                    validation = %identity.validation,
                    "SDS identity not updated: {path}: {reason}"
                );
                p.sink.stats.rejections.fetch_add(1, Ordering::Relaxed);
            }
        }
        p.last = Some(current);
    }
}

// === config dumps ===

/// `raw` with any private key replaced by [`REDACTED`]: a config dump
/// never shows key material.
pub(crate) fn redacted(raw: &Arc<Any>) -> Arc<Any> {
    let Ok(mut secret) = Secret::decode(raw.value.as_slice()) else {
        return Arc::clone(raw);
    };
    let Some(Type::TlsCertificate(t)) = &mut secret.r#type else {
        return Arc::clone(raw);
    };
    let redact = |ds: &mut Option<DataSource>| {
        if ds.is_some() {
            *ds = Some(DataSource {
                specifier: Some(Specifier::InlineString(REDACTED.to_owned())),
                ..Default::default()
            });
        }
    };
    redact(&mut t.private_key);
    redact(&mut t.password);
    redact(&mut t.pkcs12);
    Arc::new(Any {
        type_url: raw.type_url.clone(),
        value: secret.encode_to_vec(),
    })
}

#[cfg(test)]
// tests: see tests/tests/xds_sds.rs (scripted server) and below.
mod tests;
