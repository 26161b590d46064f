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
        if self.trust_domain.is_empty() {
            write!(f, "invalid trust bundle map: {}", self.reason)
        } else {
            write!(
                f,
                "invalid trust bundle for {:?}: {}",
                self.trust_domain, self.reason
            )
        }
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

    /// Parses a SPIFFE trust bundle map (gRFC A87; the SPIFFE "Trust
    /// Domain and Bundle" JWK set format per domain):
    ///
    /// ```json
    /// {"trust_domains": {"example.org": {"spiffe_sequence": 1,
    ///   "keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["<base64 DER>"]}]}}}
    /// ```
    ///
    /// As A87 subsets it (reference checklist B.2.6): per domain only
    /// `keys` and `spiffe_sequence` are read; per key `kty`, `use` and the
    /// first `x5c` element. Keys whose `use` is not `x509-svid` (JWT-SVID
    /// keys) are skipped. Any bad entry rejects the whole map, as gRPC
    /// ignores the whole bundle on an entry error. An empty map is valid
    /// and trusts nothing; so is a domain with no X.509 key (go-spiffe's
    /// parser, which grpc-go uses, accepts both).
    pub fn from_spiffe_bundle_map(json: &str) -> Result<Self, InvalidBundle> {
        use base64::Engine as _;
        use serde_json::Value;

        let top = |reason: String| invalid("", reason);
        let doc: Value = serde_json::from_str(json).map_err(|e| top(format!("not JSON: {e}")))?;
        let domains = doc
            .get("trust_domains")
            .and_then(Value::as_object)
            .ok_or_else(|| top("\"trust_domains\" must be an object".to_owned()))?;
        let mut bundle = Self::new();
        for (td, entry) in domains {
            let bad = |reason: String| invalid(td, reason);
            let id = SpiffeId::parse(&format!("spiffe://{td}"))
                .map_err(|e| bad(e.reason().to_owned()))?;
            if id.is_workload() {
                return Err(bad("not a trust domain name".to_owned()));
            }
            if let Some(seq) = entry.get("spiffe_sequence")
                && !seq.is_u64()
            {
                return Err(bad(
                    "\"spiffe_sequence\" must be a non-negative integer".to_owned()
                ));
            }
            let keys = entry
                .get("keys")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("\"keys\" must be an array".to_owned()))?;
            let mut anchors = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                if key.get("kty").and_then(Value::as_str).is_none() {
                    return Err(bad(format!("keys[{i}].kty must be a string")));
                }
                match key.get("use").and_then(Value::as_str) {
                    Some("x509-svid") => {}
                    Some(_) => continue,
                    None => return Err(bad(format!("keys[{i}].use must be a string"))),
                }
                let first = key
                    .get("x5c")
                    .and_then(Value::as_array)
                    .and_then(|x5c| x5c.first())
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(format!(
                            "keys[{i}].x5c must be a non-empty array of base64 certificates"
                        ))
                    })?;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(first)
                    .map_err(|e| bad(format!("keys[{i}].x5c[0] is not base64: {e}")))?;
                let der = CertificateDer::from(der);
                let anchor = webpki::anchor_from_trusted_cert(&der)
                    .map_err(|e| bad(format!("keys[{i}].x5c[0]: {e}")))?
                    .to_owned();
                anchors.push(anchor);
            }
            bundle.domains.insert(td.as_str().into(), anchors.into());
        }
        Ok(bundle)
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
