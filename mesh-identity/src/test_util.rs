//! A small test CA that issues workload SVIDs (feature `test-util`).
//!
//! For tests and examples only: keys are generated in memory (ECDSA P-256
//! through rcgen and ring) and nothing is persisted. The CA is a
//! self-signed root whose own SPIFFE ID is the bare trust domain
//! (`X509-SVID.md` §4.1: a signing certificate's ID has no path).

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{Credentials, InvalidBundle, InvalidCredentials, TrustBundle};

/// What went wrong issuing a test certificate.
#[derive(Debug)]
pub struct TestCaError(String);

impl fmt::Display for TestCaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "test CA: {}", self.0)
    }
}

impl std::error::Error for TestCaError {}

impl From<rcgen::Error> for TestCaError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<InvalidCredentials> for TestCaError {
    fn from(e: InvalidCredentials) -> Self {
        Self(e.to_string())
    }
}

impl From<InvalidBundle> for TestCaError {
    fn from(e: InvalidBundle) -> Self {
        Self(e.to_string())
    }
}

/// A root CA for one trust domain.
pub struct TestCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
    root_pem: String,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new root for `trust_domain`, valid from a day ago for ten years.
    pub fn new(trust_domain: &str) -> Result<Self, TestCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {trust_domain}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            root: cert.der().clone(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// A bundle that trusts this CA for its trust domain.
    pub fn bundle(&self) -> Result<TrustBundle, TestCaError> {
        Ok(TrustBundle::new()
            .with_der_roots(&self.trust_domain, std::slice::from_ref(&self.root))?)
    }

    /// Starts a leaf with the given URI SAN (normally a SPIFFE ID), valid
    /// from an hour ago for a day; the builder changes any of that.
    pub fn leaf(&self, uri: &str) -> LeafBuilder<'_> {
        let now = SystemTime::now();
        LeafBuilder {
            ca: self,
            uris: vec![uri.to_owned()],
            dns_names: Vec::new(),
            not_before: now - Duration::from_secs(3_600),
            not_after: now + Duration::from_secs(86_400),
            is_ca: false,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            eku: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// A leaf certificate being issued by a [`TestCa`].
#[derive(Debug)]
pub struct LeafBuilder<'a> {
    ca: &'a TestCa,
    uris: Vec<String>,
    dns_names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    is_ca: bool,
    key_usages: Vec<KeyUsagePurpose>,
    eku: Vec<ExtendedKeyUsagePurpose>,
}

/// An issued leaf: chain (leaf, no root) and key, in DER and PEM.
#[derive(Debug)]
pub struct IssuedLeaf {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's PKCS#8 private key.
    pub key: PrivateKeyDer<'static>,
    /// The chain as PEM.
    pub cert_pem: String,
    /// The key as PEM.
    pub key_pem: String,
}

impl LeafBuilder<'_> {
    /// Sets the validity period.
    pub fn validity(mut self, not_before: SystemTime, not_after: SystemTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Adds another URI SAN (an invalid SVID has more than one).
    pub fn with_extra_uri(mut self, uri: &str) -> Self {
        self.uris.push(uri.to_owned());
        self
    }

    /// Adds a DNS SAN (an SVID may carry DNS SANs besides its one URI
    /// SAN; plain webpki verification, as in the comparison bench, needs one).
    pub fn with_dns_name(mut self, name: &str) -> Self {
        self.dns_names.push(name.to_owned());
        self
    }

    /// Makes the leaf a CA (invalid for an SVID leaf).
    pub fn as_ca(mut self) -> Self {
        self.is_ca = true;
        self.key_usages.push(KeyUsagePurpose::KeyCertSign);
        self
    }

    /// Sets the extended key usages (default: serverAuth and clientAuth).
    pub fn with_eku(mut self, eku: Vec<ExtendedKeyUsagePurpose>) -> Self {
        self.eku = eku;
        self
    }

    /// Issues the certificate.
    pub fn issue(self) -> Result<IssuedLeaf, TestCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test workload");
        params.subject_alt_names = self
            .uris
            .iter()
            .map(|u| Ok(SanType::URI(u.as_str().try_into()?)))
            .chain(
                self.dns_names
                    .iter()
                    .map(|d| Ok(SanType::DnsName(d.as_str().try_into()?))),
            )
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = if self.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = self.key_usages;
        params.extended_key_usages = self.eku;
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.ca.issuer)?;
        Ok(IssuedLeaf {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues the certificate as [`Credentials`] (which must be a valid SVID).
    pub fn credentials(self) -> Result<Credentials, TestCaError> {
        let leaf = self.issue()?;
        Ok(Credentials::from_der(leaf.chain, leaf.key)?)
    }
}
