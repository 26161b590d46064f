//! Trust bundles: the roots each trust domain's SVIDs chain to.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use crate::SpiffeId;

/// Roots per trust domain (reference checklist B.2.5, gRFC A87 steps 1-3).
///
/// A peer's chain is validated only against the roots of the trust domain
/// named in the peer's own SPIFFE ID, so a CA trusted for `a.example`
/// cannot mint identities for `b.example`. A peer from a trust domain that
/// has no entry is rejected. An empty bundle is valid and trusts nothing.
#[derive(Clone, Default)]
pub struct TrustBundle {
    domains: HashMap<Arc<str>, Arc<[TrustAnchor<'static>]>>,
}

/// A trust bundle entry that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidBundle {
    trust_domain: String,
    reason: String,
}

impl InvalidBundle {
    /// The trust domain whose entry is bad.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Why the entry is bad.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid trust bundle for {:?}: {}",
            self.trust_domain, self.reason
        )
    }
}

impl std::error::Error for InvalidBundle {}

impl TrustBundle {
    /// An empty bundle, which trusts nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the roots of `trust_domain` from PEM `CERTIFICATE` blocks,
    /// replacing any earlier roots of that domain. At least one root is
    /// required; any unparsable block rejects the whole entry (as gRPC
    /// ignores a whole bundle on an entry error, B.2.6).
    pub fn with_pem_roots(self, trust_domain: &str, pem: &str) -> Result<Self, InvalidBundle> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(trust_domain, format!("unreadable PEM: {e}")))?;
        self.with_der_roots(trust_domain, &roots)
    }

    /// Sets the roots of `trust_domain` from DER certificates, replacing
    /// any earlier roots of that domain.
    pub fn with_der_roots(
        mut self,
        trust_domain: &str,
        roots: &[CertificateDer<'_>],
    ) -> Result<Self, InvalidBundle> {
        let id = SpiffeId::parse(&format!("spiffe://{trust_domain}"))
            .map_err(|e| invalid(trust_domain, e.reason().to_owned()))?;
        if id.is_workload() {
            return Err(invalid(trust_domain, "not a trust domain name".to_owned()));
        }
        if roots.is_empty() {
            return Err(invalid(trust_domain, "no root certificate".to_owned()));
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(i, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| invalid(trust_domain, format!("root {i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.domains.insert(trust_domain.into(), anchors.into());
        Ok(self)
    }

    /// The roots of `trust_domain`, if the bundle has an entry for it.
    pub fn roots(&self, trust_domain: &str) -> Option<&[TrustAnchor<'static>]> {
        self.domains.get(trust_domain).map(|a| &**a)
    }

    /// The trust domains the bundle has roots for.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains.keys().map(|k| &**k)
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (td, anchors) in &self.domains {
            map.entry(td, &format_args!("{} roots", anchors.len()));
        }
        map.finish()
    }
}

fn invalid(trust_domain: &str, reason: String) -> InvalidBundle {
    InvalidBundle {
        trust_domain: trust_domain.to_owned(),
        reason,
    }
}
