//! TLS to a cluster's endpoints, as `DestinationRule.trafficPolicy.tls`
//! says (Istio `ClientTLSSettings`; Envoy `UpstreamTlsContext`).
//!
//! One [`UpstreamTlsConfig`] per cluster config version: the rustls
//! `ClientConfig` is built once, when the runtime takes the cluster in,
//! and every new connection of every endpoint of the cluster uses it. The
//! endpoint pools are keyed by the cluster's TLS settings (they are part
//! of the endpoint's `Transport`), so a changed setting gives the
//! endpoints new pools: the next request connects with the new setting
//! and connections made under the old one are never reused (they finish
//! the requests they carry and close).
//!
//! - `SIMPLE` / `MUTUAL`: the server's chain is validated against
//!   `caCertificates` with webpki, then its name: one of `subjectAltNames`
//!   (DNS SANs as webpki matches them, wildcards included; URI SANs
//!   exactly) when set, else the SNI, as Istio's `auto_sni_san_validation`
//!   does; with `caCrl`, every certificate of the chain is checked against
//!   the lists (an unknown status or an expired list fails, as Envoy's
//!   `crl` does). `insecureSkipVerify` accepts any certificate (the handshake
//!   signature is still checked, so the server proves it holds the key
//!   of the certificate it showed).
//! - `ISTIO_MUTUAL`: `mesh_identity::tls::client_config` with the mesh's
//!   [`CredentialStore`]: the client presents the workload's current SVID
//!   (read per handshake, so rotation needs nothing here) and accepts a
//!   server whose SVID validates against the bundle and whose SPIFFE ID is
//!   one of `subjectAltNames`, else one of the destination's service
//!   accounts in the local trust domain, else any workload of the local
//!   trust domain (what Istio accepts when it knows no service account:
//!   any certificate of the mesh CA).
//!
//! ALPN offers `h2` and `http/1.1` for HTTP/1.1 clusters (hyper-util's
//! pool speaks HTTP/2 on a connection whose server chose `h2`) and only
//! `h2` for HTTP/2 and gRPC clusters, which fail a connection whose server
//! chose anything else. A TLS failure is a connect failure (503, counted
//! for outlier detection and connect backoff); it never falls back to
//! plaintext (gRFC A29, reference checklist B.3.2).

use std::fmt;
use std::sync::{Arc, OnceLock};

use mesh_core::model::{Cluster, Protocol, ServerVerification, UpstreamTls};
use mesh_identity::tls::PeerMatcher;
use mesh_identity::{CredentialStore, SpiffeId};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, ClientConfig, Error, OtherError, RootCertStore};

const H2: &[u8] = b"h2";
const HTTP1: &[u8] = b"http/1.1";

/// The TLS of one cluster config version.
pub(crate) struct UpstreamTlsConfig {
    cluster: Arc<str>,
    mode: &'static str,
    server_name: ServerName<'static>,
    require_h2: bool,
    state: State,
}

enum State {
    Ready(Arc<ClientConfig>),
    // ISTIO_MUTUAL before the store held an identity: built by the first
    // connect that finds one (the local trust domain is needed to name
    // the expected service accounts).
    Pending {
        store: Arc<CredentialStore>,
        expected: Expected,
        built: OnceLock<Arc<ClientConfig>>,
    },
    Failed(Arc<str>),
}

/// The server identities an ISTIO_MUTUAL client accepts: these IDs and
/// these (namespace, account) pairs of the local trust domain; when both
/// are empty, any workload of the local trust domain.
#[derive(Clone)]
struct Expected {
    ids: Arc<[SpiffeId]>,
    accounts: Arc<[(Arc<str>, Arc<str>)]>,
}

/// What connect errors say: `cluster "x": ISTIO_MUTUAL tls handshake with <sni>`.
impl fmt::Display for UpstreamTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {:?}: {} tls handshake with {}",
            self.cluster,
            self.mode,
            self.server_name.to_str()
        )
    }
}

impl fmt::Debug for UpstreamTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTlsConfig")
            .field("cluster", &self.cluster)
            .field("mode", &self.mode)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be secured before any byte was sent.
#[derive(Debug)]
pub(crate) struct TlsUnavailable(pub(crate) String);

impl UpstreamTlsConfig {
    /// The TLS of `cluster`, `None` for plaintext. Problems that only show
    /// now (a key that does not fit its certificate, no workload identity
    /// for ISTIO_MUTUAL) make a config whose every connect fails with the
    /// reason, logged here once.
    pub(crate) fn build(
        cluster: &Cluster,
        credentials: Option<&Arc<CredentialStore>>,
    ) -> Option<Arc<Self>> {
        let tls = cluster.tls.as_ref()?;
        let name = cluster.name.as_str();
        let require_h2 = cluster.protocol == Protocol::Http2;
        let alpn = alpn(require_h2);
        let sni = match tls {
            UpstreamTls::Simple(o) | UpstreamTls::Mutual { origination: o, .. } => o
                .sni
                .clone()
                .or_else(|| cluster.service.clone())
                .unwrap_or_else(|| name.into()),
            UpstreamTls::IstioMutual(m) => m.sni.clone().unwrap_or_else(|| istio_sni(cluster)),
        };
        let (server_name, state) = match ServerName::try_from(&*sni) {
            Ok(n) => (
                n.to_owned(),
                State::build(tls, credentials, alpn).unwrap_or_else(State::Failed),
            ),
            Err(_) => (
                // Never sent: every connect fails first.
                ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
                State::Failed(format!("invalid server name {sni:?}; set tls.sni").into()),
            ),
        };
        if let State::Failed(reason) = &state {
            tracing::warn!(cluster = %name, mode = tls.mode_name(), %reason, "upstream tls unusable; requests to the cluster fail");
        }
        if let UpstreamTls::Simple(o) | UpstreamTls::Mutual { origination: o, .. } = tls
            && o.verify == ServerVerification::InsecureSkipVerify
        {
            tracing::warn!(cluster = %name, "insecureSkipVerify: the server's certificate is not verified");
        }
        Some(Arc::new(Self {
            cluster: name.into(),
            mode: tls.mode_name(),
            server_name,
            require_h2,
            state,
        }))
    }

    /// The rustls config for a new connection.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, TlsUnavailable> {
        let unavailable = |reason: &str| {
            TlsUnavailable(format!(
                "cluster {:?}: {} tls: {reason}",
                self.cluster, self.mode
            ))
        };
        match &self.state {
            State::Ready(c) => Ok(Arc::clone(c)),
            State::Failed(reason) => Err(unavailable(reason)),
            State::Pending {
                store,
                expected,
                built,
            } => {
                if let Some(c) = built.get() {
                    return Ok(Arc::clone(c));
                }
                let c = istio_config(store, expected, alpn(self.require_h2))
                    .map_err(|r| unavailable(&r))?;
                Ok(Arc::clone(built.get_or_init(|| c)))
            }
        }
    }

    /// The SNI sent.
    pub(crate) fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Whether ALPN `protocol` (`None`: the server chose none) fits.
    pub(crate) fn accepts_alpn(&self, protocol: Option<&[u8]>) -> bool {
        // A server that does not do ALPN still speaks what the cluster is
        // declared to speak (HTTP/2 with prior knowledge, as Envoy does
        // for an `http2_protocol_options` cluster).
        match protocol {
            None => true,
            Some(p) if p == H2 => true,
            Some(p) => p == HTTP1 && !self.require_h2,
        }
    }
}

/// ALPN: `h2` only for HTTP/2 clusters, else `h2` then `http/1.1`.
fn alpn(require_h2: bool) -> Vec<Vec<u8>> {
    if require_h2 {
        vec![H2.to_vec()]
    } else {
        vec![H2.to_vec(), HTTP1.to_vec()]
    }
}

/// Istio's SNI for ISTIO_MUTUAL, `outbound_.<port>_.<subset>_.<host>`
/// (`BuildDNSSrvSubsetKey`): the cluster name `outbound|<port>|<subset>|<host>`
/// with each `|` written `_.`. A cluster not named that way sends its
/// service host, or its name.
fn istio_sni(cluster: &Cluster) -> Arc<str> {
    let name = cluster.name.as_str();
    if name.starts_with("outbound|") && name.matches('|').count() == 3 {
        return name.replace('|', "_.").into();
    }
    cluster.service.clone().unwrap_or_else(|| name.into())
}

impl State {
    fn build(
        tls: &UpstreamTls,
        credentials: Option<&Arc<CredentialStore>>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Self, Arc<str>> {
        match tls {
            UpstreamTls::Simple(o) => {
                let config = builder(&o.verify)?.with_no_client_auth();
                Ok(Self::Ready(finish(config, alpn)))
            }
            UpstreamTls::Mutual {
                origination,
                certificate,
                private_key,
            } => {
                let chain = CertificateDer::pem_slice_iter(certificate.pem())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("clientCertificate {:?}: {e}", certificate.path()))?;
                let key = PrivateKeyDer::from_pem_slice(private_key.pem())
                    .map_err(|e| format!("privateKey {:?}: {e}", private_key.path()))?;
                let config = builder(&origination.verify)?
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| {
                        format!(
                            "clientCertificate {:?} and privateKey {:?}: {e}",
                            certificate.path(),
                            private_key.path()
                        )
                    })?;
                Ok(Self::Ready(finish(config, alpn)))
            }
            UpstreamTls::IstioMutual(m) => {
                let store = credentials.ok_or(
                    "no workload identity is configured: ISTIO_MUTUAL needs a mesh built with credentials (Mesh::builder(..).with_credentials(..))",
                )?;
                let ids = |sans: &[Arc<str>], what: &str| {
                    sans.iter()
                        .map(|s| {
                            s.parse::<SpiffeId>()
                                .map_err(|e| format!("{what} {s:?}: {e}"))
                        })
                        .collect::<Result<Arc<[_]>, _>>()
                };
                let expected = if !m.subject_alt_names.is_empty() {
                    Expected {
                        ids: ids(&m.subject_alt_names, "subjectAltNames")?,
                        accounts: Arc::from([]),
                    }
                } else {
                    // An entry that is not a SPIFFE ID fails the cluster
                    // rather than being dropped: dropping every entry would
                    // widen the check to the whole trust domain.
                    Expected {
                        ids: ids(&m.service_subject_alt_names, "ServiceEntry subjectAltNames")?,
                        accounts: m
                            .service_accounts
                            .iter()
                            .map(|a| (a.namespace.clone(), a.name.clone()))
                            .collect(),
                    }
                };
                let built = OnceLock::new();
                // Built now when the store already holds an identity.
                if let Ok(c) = istio_config(store, &expected, alpn) {
                    let _ = built.set(c);
                }
                Ok(Self::Pending {
                    store: Arc::clone(store),
                    expected,
                    built,
                })
            }
        }
    }
}

/// The ISTIO_MUTUAL config; fails while the store has no identity.
fn istio_config(
    store: &Arc<CredentialStore>,
    expected: &Expected,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, String> {
    let matcher = if expected.accounts.is_empty() && !expected.ids.is_empty() {
        PeerMatcher::AnyOf(Arc::clone(&expected.ids))
    } else {
        let id = store
            .id()
            .ok_or("no workload identity yet: the mesh's credential store holds no certificate")?;
        let td = id.trust_domain();
        if expected.accounts.is_empty() {
            PeerMatcher::TrustDomain(td.into())
        } else {
            let mut ids = expected.ids.to_vec();
            for (ns, sa) in expected.accounts.iter() {
                ids.push(
                    SpiffeId::istio(td, ns, sa)
                        .map_err(|e| format!("service account identity: {e}"))?,
                );
            }
            PeerMatcher::AnyOf(ids.into())
        }
    };
    let mut config =
        mesh_identity::tls::client_config(Arc::clone(store), matcher).map_err(|e| e.to_string())?;
    config.alpn_protocols = alpn;
    Ok(Arc::new(config))
}

type WantsClientCert = rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>;

/// A client config builder that verifies servers as `verify` says.
fn builder(verify: &ServerVerification) -> Result<WantsClientCert, String> {
    let provider = mesh_identity::tls::provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        ServerVerification::InsecureSkipVerify => Arc::new(SkipVerify { algorithms }),
        ServerVerification::Verify {
            ca_certificates,
            subject_alt_names,
            ca_crl,
        } => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca_certificates.pem()) {
                let cert =
                    cert.map_err(|e| format!("caCertificates {:?}: {e}", ca_certificates.path()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("caCertificates {:?}: {e}", ca_certificates.path()))?;
            }
            let roots = Arc::new(roots);
            let crls = match ca_crl {
                Some(file) => CertificateRevocationListDer::pem_slice_iter(file.pem())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("caCrl {:?}: {e}", file.path()))?,
                None => Vec::new(),
            };
            if subject_alt_names.is_empty() {
                let mut verifier = WebPkiServerVerifier::builder_with_provider(roots, provider);
                if !crls.is_empty() {
                    verifier = verifier.with_crls(crls).enforce_revocation_expiration();
                }
                verifier.build().map_err(|e| {
                    format!("caCertificates {:?} / caCrl: {e}", ca_certificates.path())
                })?
            } else {
                let crls = crls
                    .iter()
                    .map(|der| {
                        webpki::OwnedCertRevocationList::from_der(der)
                            .map(webpki::CertRevocationList::from)
                            .map_err(|e| format!("caCrl: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                Arc::new(SanVerifier {
                    roots,
                    sans: Arc::clone(subject_alt_names),
                    crls,
                    algorithms,
                })
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

fn finish(mut config: ClientConfig, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// A failed handshake in words: rustls shows a verifier's own error
/// (`CertificateError::Other`) with `Debug`, which says little.
pub(crate) fn describe(e: &std::io::Error) -> String {
    let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>());
    match rustls_error {
        Some(Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) => {
            format!("invalid peer certificate: {inner}")
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// The server's certificate has none of the expected SANs.
#[derive(Debug)]
struct UnexpectedSan;

impl fmt::Display for UnexpectedSan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server certificate matches none of subjectAltNames")
    }
}

impl std::error::Error for UnexpectedSan {}

/// Chain validation against the roots, then one of `sans` as a DNS SAN
/// (webpki's matching, wildcards included) or a URI SAN (exact).
#[derive(Debug)]
struct SanVerifier {
    roots: Arc<RootCertStore>,
    sans: Arc<[Arc<str>]>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

fn webpki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    Error::InvalidCertificate(match e {
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertRevoked => CertificateError::Revoked,
        E::UnknownRevocationStatus => CertificateError::UnknownRevocationStatus,
        E::CrlExpired { time, next_update } => {
            CertificateError::ExpiredRevocationListContext { time, next_update }
        }
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        // As rustls' own verifier does with CRLs: the whole chain, an
        // unknown status denied, an expired list refused.
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = match webpki::RevocationOptionsBuilder::new(&crls) {
            Ok(b) => Some(
                b.with_depth(webpki::RevocationCheckDepth::Chain)
                    .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                    .with_expiration_policy(webpki::ExpirationPolicy::Enforce)
                    .build(),
            ),
            // No lists configured.
            Err(_) => None,
        };
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            revocation,
            None,
        )
        .map_err(webpki_error)?;
        let dns_match = |san: &str| {
            ServerName::try_from(san)
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        };
        let uris = uri_sans(end_entity);
        if self
            .sans
            .iter()
            .any(|san| uris.iter().any(|u| u == &**san) || (!san.contains(':') && dns_match(san)))
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(UnexpectedSan)),
            )))
        }
    }

    mesh_identity::mesh_identity_handshake_signatures!(algorithms);
}

/// The URI SANs of a certificate (already chain-validated).
fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// `insecureSkipVerify`: any certificate; the handshake signature is still
/// verified.
#[derive(Debug)]
struct SkipVerify {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    mesh_identity::mesh_identity_handshake_signatures!(algorithms);
}

#[cfg(test)]
mod tests {
    use mesh_core::model::{IstioMutualTls, UpstreamTls};

    use super::*;

    fn istio_cluster(name: &str, protocol: Protocol) -> Cluster {
        let mut c = Cluster::new(name).with_protocol(protocol);
        c.service = Some("reviews.default.svc.cluster.local".into());
        c.tls = Some(UpstreamTls::IstioMutual(IstioMutualTls {
            sni: None,
            subject_alt_names: Arc::from([]),
            service_subject_alt_names: Arc::from([]),
            service_accounts: Arc::from([]),
        }));
        c
    }

    #[test]
    fn istio_mutual_sni_is_the_cluster_name_in_istio_form() {
        let c = istio_cluster(
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            Protocol::Http1,
        );
        assert_eq!(
            &*istio_sni(&c),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
        let c = istio_cluster(
            "outbound|9080||reviews.default.svc.cluster.local",
            Protocol::Http1,
        );
        let tls = UpstreamTlsConfig::build(&c, None).unwrap();
        assert_eq!(
            tls.server_name().to_str(),
            "outbound_.9080_._.reviews.default.svc.cluster.local"
        );
        // Another naming scheme (xDS) sends the service host.
        let c = istio_cluster("reviews-v1", Protocol::Http1);
        assert_eq!(&*istio_sni(&c), "reviews.default.svc.cluster.local");
    }

    #[test]
    fn istio_mutual_without_credentials_never_yields_a_config() {
        let c = istio_cluster("outbound|9080||reviews", Protocol::Http2);
        let tls = UpstreamTlsConfig::build(&c, None).unwrap();
        let err = tls.client_config().unwrap_err();
        assert_eq!(
            err.0,
            "cluster \"outbound|9080||reviews\": ISTIO_MUTUAL tls: no workload identity is configured: ISTIO_MUTUAL needs a mesh built with credentials (Mesh::builder(..).with_credentials(..))"
        );
        assert!(UpstreamTlsConfig::build(&Cluster::new("plain"), None).is_none());
    }

    #[test]
    fn http2_clusters_accept_only_h2() {
        let h2 = UpstreamTlsConfig::build(&istio_cluster("a", Protocol::Http2), None).unwrap();
        let h1 = UpstreamTlsConfig::build(&istio_cluster("a", Protocol::Http1), None).unwrap();
        assert!(h2.accepts_alpn(Some(b"h2")));
        assert!(h2.accepts_alpn(None));
        assert!(!h2.accepts_alpn(Some(b"http/1.1")));
        assert!(h1.accepts_alpn(Some(b"http/1.1")));
        assert!(h1.accepts_alpn(Some(b"h2")));
        assert!(!h1.accepts_alpn(Some(b"spdy/3")));
        assert_eq!(alpn(true), [b"h2".to_vec()]);
        assert_eq!(alpn(false), [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }
}
