//! X.509-SVID checks (spiffe/spiffe `standards/X509-SVID.md` §4, §5).
//!
//! webpki validates the path (signatures, validity, CA constraints) but
//! knows nothing about SPIFFE: these checks add what the SVID standard
//! requires of a *leaf* before its SPIFFE ID may be trusted.

use std::borrow::Cow;
use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::SpiffeId;

/// A certificate that is not a valid X.509-SVID leaf, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSvid {
    reason: Cow<'static, str>,
}

impl InvalidSvid {
    /// Why the certificate is not a valid SVID.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid X.509-SVID: {}", self.reason)
    }
}

impl std::error::Error for InvalidSvid {}

fn bad(reason: &'static str) -> InvalidSvid {
    InvalidSvid {
        reason: Cow::Borrowed(reason),
    }
}

/// Checks that `der` is a valid X.509-SVID leaf and returns its SPIFFE ID.
///
/// The rules (reference checklist B.2, from `X509-SVID.md`):
/// - exactly one URI SAN, a valid SPIFFE ID with a non-root path (§2, §4.1);
/// - basic constraints, if present, say `cA=false` (§4.1);
/// - key usage is present and critical, sets `digitalSignature` and sets
///   neither `keyCertSign` nor `cRLSign` (§4.3);
/// - extended key usage, if present, includes both `serverAuth` and
///   `clientAuth` (§4.4);
/// - with an empty subject, the SAN extension is critical (RFC 5280 §4.2.1.6).
///
/// This does not validate the chain or the validity period: the verifiers
/// do that with webpki against the bundle of the ID's trust domain.
pub fn validate_leaf(der: &[u8]) -> Result<SpiffeId, InvalidSvid> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| bad("the certificate is not valid DER"))?;
    if !rest.is_empty() {
        return Err(bad("trailing data after the certificate"));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| bad("the subject alternative name extension is malformed"))?
        .ok_or_else(|| bad("no URI SAN"))?;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or_else(|| bad("no URI SAN"))?;
    if uris.next().is_some() {
        return Err(bad("more than one URI SAN"));
    }
    if cert.subject().iter().next().is_none() && !san.critical {
        return Err(bad(
            "the subject is empty and the SAN extension is not critical",
        ));
    }
    let id = SpiffeId::parse(uri).map_err(|e| InvalidSvid {
        reason: Cow::Owned(format!("the URI SAN is not a SPIFFE ID ({})", e.reason())),
    })?;
    if !id.is_workload() {
        return Err(bad("the SPIFFE ID of a leaf must have a path"));
    }
    let constraints = cert
        .basic_constraints()
        .map_err(|_| bad("the basic constraints extension is malformed"))?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(bad("a leaf must not be a CA"));
    }
    let key_usage = cert
        .key_usage()
        .map_err(|_| bad("the key usage extension is malformed"))?
        .ok_or_else(|| bad("the key usage extension is missing"))?;
    if !key_usage.critical {
        return Err(bad("the key usage extension must be critical"));
    }
    if !key_usage.value.digital_signature() {
        return Err(bad("the key usage lacks digitalSignature"));
    }
    if key_usage.value.key_cert_sign() || key_usage.value.crl_sign() {
        return Err(bad("a leaf must not set keyCertSign or cRLSign"));
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|_| bad("the extended key usage extension is malformed"))?;
    if let Some(eku) = eku
        && !(eku.value.server_auth && eku.value.client_auth)
    {
        return Err(bad(
            "the extended key usage must include serverAuth and clientAuth",
        ));
    }
    Ok(id)
}

/// The SPIFFE ID of a certificate that already passed verification: its
/// single URI SAN. `None` when the certificate has no (single, valid) one.
pub fn spiffe_id_of(der: &[u8]) -> Option<SpiffeId> {
    validate_leaf(der).ok()
}
