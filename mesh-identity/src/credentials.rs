//! A workload's own credentials, and the store new handshakes read them from.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::provider;
use crate::{SpiffeId, TrustBundle, svid};

/// A certificate chain (an X.509-SVID leaf first) and its private key.
#[derive(Clone)]
pub struct Credentials {
    id: SpiffeId,
    key: Arc<CertifiedKey>,
}

/// Credentials that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCredentials {
    reason: String,
}

impl InvalidCredentials {
    /// Why the credentials cannot be used.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid credentials: {}", self.reason)
    }
}

impl std::error::Error for InvalidCredentials {}

fn invalid(reason: impl Into<String>) -> InvalidCredentials {
    InvalidCredentials {
        reason: reason.into(),
    }
}

impl Credentials {
    /// Builds credentials from a DER chain (leaf first) and private key.
    ///
    /// The leaf must be a valid X.509-SVID ([`svid::validate_leaf`]) and the
    /// key must match it (reference checklist B.4.2: never serve a mismatched
    /// pair). The validity period is not checked here: an expired leaf is
    /// refused by the peer, which is what a test of expiry needs.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, InvalidCredentials> {
        let leaf = chain
            .first()
            .ok_or_else(|| invalid("the certificate chain is empty"))?;
        let id = svid::validate_leaf(leaf).map_err(|e| invalid(e.to_string()))?;
        let key = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| invalid(format!("the private key does not fit: {e}")))?;
        // `from_der` accepts keys whose public half it cannot derive; a
        // workload key must be checkable.
        key.keys_match()
            .map_err(|e| invalid(format!("the private key does not fit: {e}")))?;
        Ok(Self {
            id,
            key: Arc::new(key),
        })
    }

    /// Builds credentials from PEM: `CERTIFICATE` blocks (leaf first) and
    /// one private key block (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, InvalidCredentials> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("unreadable certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| invalid(format!("unreadable private key PEM: {e}")))?;
        Self::from_der(chain, key)
    }

    /// The workload's SPIFFE ID (the leaf's URI SAN).
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain and signing key in rustls' form.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("chain_len", &self.key.cert.len())
            .finish_non_exhaustive()
    }
}

/// What a handshake reads: the workload's credentials and the trust bundle.
#[derive(Debug)]
pub(crate) struct Material {
    pub(crate) credentials: Option<Credentials>,
    pub(crate) bundle: Arc<TrustBundle>,
}

/// The credentials and trust bundle that new handshakes use.
///
/// Readers (the certificate resolvers and verifiers inside the rustls
/// configs from [`crate::tls`]) load an `ArcSwap` snapshot per handshake,
/// with no lock; writers ([`CredentialStore::set_credentials`],
/// [`CredentialStore::set_bundle`]) swap in a new snapshot, which the next
/// handshake sees while established connections keep what they negotiated
/// (reference checklist B.4.4, B.4.6). This is the push API a rotation
/// source (a file watcher, SDS) feeds.
///
/// A store made with [`CredentialStore::without_credentials`] fails closed:
/// a server has no certificate to offer and a client none to present, so
/// mTLS handshakes fail until credentials are set (B.4.3: a failed first
/// load never falls back to plaintext).
#[derive(Debug)]
pub struct CredentialStore {
    material: ArcSwap<Material>,
}

impl CredentialStore {
    /// A store holding `credentials` and `bundle`.
    pub fn new(credentials: Credentials, bundle: TrustBundle) -> Self {
        Self::with(Some(credentials), bundle)
    }

    /// A store with only a trust bundle: it can verify peers but has no
    /// identity of its own yet.
    pub fn without_credentials(bundle: TrustBundle) -> Self {
        Self::with(None, bundle)
    }

    fn with(credentials: Option<Credentials>, bundle: TrustBundle) -> Self {
        Self {
            material: ArcSwap::from_pointee(Material {
                credentials,
                bundle: Arc::new(bundle),
            }),
        }
    }

    /// Replaces the workload's credentials; new handshakes use them.
    pub fn set_credentials(&self, credentials: Credentials) {
        self.material.rcu(|m| Material {
            credentials: Some(credentials.clone()),
            bundle: m.bundle.clone(),
        });
    }

    /// Replaces the trust bundle; new handshakes verify peers against it.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        let bundle = Arc::new(bundle);
        self.material.rcu(|m| Material {
            credentials: m.credentials.clone(),
            bundle: bundle.clone(),
        });
    }

    /// Replaces the credentials and the trust bundle together, so that no
    /// handshake sees the new certificate with the old bundle or the
    /// reverse (a rotation that changes both, as a file watcher's does).
    pub fn set(&self, credentials: Credentials, bundle: TrustBundle) {
        self.material.store(Arc::new(Material {
            credentials: Some(credentials),
            bundle: Arc::new(bundle),
        }));
    }

    /// The workload's current SPIFFE ID, if it has credentials.
    pub fn id(&self) -> Option<SpiffeId> {
        self.material
            .load()
            .credentials
            .as_ref()
            .map(|c| c.id().clone())
    }

    pub(crate) fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.material
            .load()
            .credentials
            .as_ref()
            .map(|c| c.key.clone())
    }

    pub(crate) fn bundle(&self) -> Arc<TrustBundle> {
        self.material.load().bundle.clone()
    }
}
