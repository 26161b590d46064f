//! Upstream TLS: how the client secures its connections to a cluster's
//! endpoints (Istio `DestinationRule.trafficPolicy.tls`,
//! `ClientTLSSettings`; Envoy `UpstreamTlsContext`).
//!
//! Plain data, as the rest of the model: certificate files are read when
//! the config is loaded and kept here as their PEM text, so that a changed
//! file makes a changed (unequal) setting on the next config load and the
//! client opens new connections with it. The TLS machinery (rustls) lives
//! in `mesh-tower`; the workload's own SPIFFE credentials for
//! [`UpstreamTls::IstioMutual`] are not config but the process's identity
//! (`mesh_identity::CredentialStore`).

use std::fmt;
use std::sync::Arc;

/// The TLS a cluster's connections use; a cluster without one
/// (`mode: DISABLE`, or no `tls` at all) speaks plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// `SIMPLE`: TLS, the server verified, no client certificate.
    Simple(TlsOrigination),
    /// `MUTUAL`: TLS with the client certificate and key of files.
    Mutual {
        /// Server verification and SNI.
        origination: TlsOrigination,
        /// `clientCertificate`: the chain, leaf first.
        certificate: PemFile,
        /// `privateKey`: the certificate's key.
        private_key: PemFile,
    },
    /// `ISTIO_MUTUAL`: mutual TLS with the workload's own SVID, the
    /// server's SPIFFE ID verified.
    IstioMutual(IstioMutualTls),
}

/// What `SIMPLE` and `MUTUAL` share: how the server is verified and the
/// SNI sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOrigination {
    /// How the server's certificate is checked.
    pub verify: ServerVerification,
    /// `sni`: the server name sent; `None` sends the cluster's service
    /// host (what Istio's automatic SNI sends for a request to it).
    pub sni: Option<Arc<str>>,
}

/// How a `SIMPLE` / `MUTUAL` client checks its server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerVerification {
    /// Chain validation against `caCertificates`, then the name: one of
    /// `subjectAltNames` (a DNS or URI SAN of the certificate) when set,
    /// else the SNI (Istio's `auto_sni_san_validation`).
    Verify {
        /// `caCertificates`: the roots.
        ca_certificates: PemFile,
        /// `subjectAltNames`: accepted SANs; empty checks the SNI.
        subject_alt_names: Arc<[Arc<str>]>,
        /// `caCrl`: revocation lists (PEM `X509 CRL`). With them, every
        /// certificate of the server's chain below the root must be
        /// covered by a list of its issuer and not revoked, and an
        /// expired list fails (Envoy's `crl` semantics with OpenSSL).
        ca_crl: Option<PemFile>,
    },
    /// `insecureSkipVerify: true`: any certificate is accepted (the
    /// handshake still proves the server holds its key).
    InsecureSkipVerify,
}

/// `ISTIO_MUTUAL`: which server identities are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioMutualTls {
    /// `sni`; `None` sends Istio's `outbound_.<port>_.<subset>_.<host>`.
    pub sni: Option<Arc<str>>,
    /// `subjectAltNames`: the SPIFFE IDs accepted. When empty, the
    /// service's identities are (`service_subject_alt_names` and
    /// `service_accounts`).
    pub subject_alt_names: Arc<[Arc<str>]>,
    /// The destination's `ServiceEntry.subjectAltNames`, accepted with
    /// its service accounts when `subject_alt_names` is empty (Istio adds
    /// both to the service's accounts).
    pub service_subject_alt_names: Arc<[Arc<str>]>,
    /// The service accounts the destination's endpoints run as
    /// (`ServiceEntry.endpoints[].serviceAccount`), accepted as
    /// `spiffe://<local trust domain>/ns/<namespace>/sa/<name>` when
    /// `subject_alt_names` is empty. When all three are empty, any
    /// workload of the local trust domain is accepted.
    pub service_accounts: Arc<[ServiceAccount]>,
}

/// A Kubernetes service account: the identity of the workloads running
/// as it (Istio: `spiffe://<trust domain>/ns/<namespace>/sa/<name>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAccount {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The account name.
    pub name: Arc<str>,
}

/// A PEM file as read at config load: its path (for messages) and text.
///
/// `Debug` shows the path and size only: the file may hold a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    path: Arc<str>,
    pem: Arc<[u8]>,
}

impl PemFile {
    /// A file read from `path`.
    pub fn new(path: impl Into<Arc<str>>, pem: impl Into<Arc<[u8]>>) -> Self {
        Self {
            path: path.into(),
            pem: pem.into(),
        }
    }

    /// Where the file was read from.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's contents.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemFile")
            .field("path", &self.path)
            .field("len", &self.pem.len())
            .finish()
    }
}

impl UpstreamTls {
    /// The mode's Istio name.
    pub fn mode_name(&self) -> &'static str {
        match self {
            Self::Simple(_) => "SIMPLE",
            Self::Mutual { .. } => "MUTUAL",
            Self::IstioMutual(_) => "ISTIO_MUTUAL",
        }
    }
}
