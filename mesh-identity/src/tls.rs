//! rustls client and server configs that authenticate SPIFFE identities.
//!
//! rustls (through webpki) verifies DNS names only, so SPIFFE needs its own
//! verifiers (reference checklist B.3.5; linkerd2-proxy moved its identity
//! checks out of the TLS backend for the same reason). Ours do the full
//! RFC 5280 path validation with webpki, against the roots of the trust
//! domain named in the peer's SPIFFE ID (B.2.5), check the leaf is a valid
//! X.509-SVID (B.2), and then match the ID against a [`PeerMatcher`]
//! (B.3.1, B.3.6). The DNS name a client dials is not checked: the SPIFFE
//! ID is the identity.
//!
//! Session resumption is off on both sides: every connection is a full
//! handshake, so every connection runs the verifiers against the current
//! bundle and shows the peer's current certificate. A resumed session would
//! carry the identity (and validity) checked when the first session was
//! made, past a rotation or the certificate's expiry (reference checklist
//! B.4.4). Mesh connections are pooled and long-lived, so the cost is small.
//!
//! The crypto provider is ring, chosen explicitly with
//! `builder_with_provider` so that no process-wide default is needed and a
//! second provider in the graph cannot make config building panic
//! (DEPENDENCIES.md, "Crypto provider").

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DistinguishedName, Error, OtherError, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{CredentialStore, SpiffeId, svid};

/// ALPN protocols offered and accepted: HTTP/2 first, then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The ring crypto provider every config here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which peer SPIFFE IDs a verifier accepts, after the chain validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMatcher {
    /// Any workload whose trust domain is in the bundle (what an Istio
    /// STRICT server accepts before authorization: any mesh identity).
    AnyTrusted,
    /// Any workload of this trust domain.
    TrustDomain(Arc<str>),
    /// Exactly one of these IDs; Istio identities are
    /// `spiffe://<td>/ns/<ns>/sa/<sa>` ([`SpiffeId::istio`]). An empty list
    /// matches nothing.
    AnyOf(Arc<[SpiffeId]>),
    /// Any service account of an Istio namespace:
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/*`.
    IstioNamespace {
        /// The trust domain.
        trust_domain: Arc<str>,
        /// The Kubernetes namespace.
        namespace: Arc<str>,
    },
}

impl PeerMatcher {
    /// Exactly `id`.
    pub fn exact(id: SpiffeId) -> Self {
        Self::AnyOf(Arc::new([id]))
    }

    /// Whether `id` is accepted.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::AnyTrusted => true,
            Self::TrustDomain(td) => id.trust_domain() == &**td,
            Self::AnyOf(ids) => ids.contains(id),
            Self::IstioNamespace {
                trust_domain,
                namespace,
            } => {
                id.trust_domain() == &**trust_domain
                    && id
                        .istio_namespace_and_account()
                        .is_some_and(|(ns, _)| ns == &**namespace)
            }
        }
    }
}

/// The peer is not the workload the matcher asked for.
#[derive(Debug)]
struct UnexpectedPeer(SpiffeId);

impl std::fmt::Display for UnexpectedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer identity {} is not accepted", self.0)
    }
}

impl std::error::Error for UnexpectedPeer {}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    let cert = match e {
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::InvalidCertValidity => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => return self::other(other),
    };
    Error::InvalidCertificate(cert)
}

/// Verifies the peer of a handshake, on either side: full path
/// validation against the roots of the trust domain the peer claims, then
/// `matcher` on its SPIFFE ID (see the module docs).
#[derive(Debug)]
struct SpiffeVerifier {
    store: Arc<CredentialStore>,
    matcher: PeerMatcher,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    /// Full verification of a peer chain; returns the peer's SPIFFE ID.
    fn verify_peer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, Error> {
        let id = svid::validate_leaf(end_entity).map_err(other)?;
        let bundle = self.store.bundle();
        // Only the roots of the trust domain the peer claims (B.2.5).
        let roots = bundle
            .roots(id.trust_domain())
            .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            roots,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        if !self.matcher.matches(&id) {
            return Err(other(UnexpectedPeer(id)));
        }
        Ok(id)
    }
}

/// The handshake-signature half of a rustls verifier, the same for every
/// verifier of the mesh: the TLS 1.2 and 1.3 `CertificateVerify`
/// signatures are checked with the provider's algorithms held in the
/// verifier's `$algorithms` field (a `WebPkiSupportedAlgorithms`). Expands
/// inside an `impl ServerCertVerifier` or `impl ClientCertVerifier` block;
/// `mesh-tower`'s DestinationRule verifiers use it too.
#[doc(hidden)]
#[macro_export]
macro_rules! mesh_identity_handshake_signatures {
    ($algorithms:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<
            ::rustls::client::danger::HandshakeSignatureValid,
            ::rustls::Error,
        > {
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, &self.$algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<
            ::rustls::client::danger::HandshakeSignatureValid,
            ::rustls::Error,
        > {
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, &self.$algorithms)
        }

        fn supported_verify_schemes(&self) -> ::std::vec::Vec<::rustls::SignatureScheme> {
            self.$algorithms.supported_schemes()
        }
    };
}

/// A client verifying its server.
impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verify_peer(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    mesh_identity_handshake_signatures!(algorithms);
}

/// A server verifying its client; a client certificate is mandatory.
impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 §4.2.4); our clients present their
        // one SVID whatever the hints say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify_peer(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    mesh_identity_handshake_signatures!(algorithms);
}

/// Serves the store's current certificate to each new handshake.
#[derive(Debug)]
struct StoreResolver(Arc<CredentialStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server config for mutual TLS: it presents the store's SVID and
/// requires a client SVID that validates against the store's bundle and
/// that `clients` accepts. ALPN: [`ALPN`]. No session resumption.
pub fn server_config(
    store: Arc<CredentialStore>,
    clients: PeerMatcher,
) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier = SpiffeVerifier {
        store: store.clone(),
        matcher: clients,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client config for mutual TLS: it presents the store's SVID and
/// accepts a server whose SVID validates against the store's bundle and
/// that `servers` accepts. ALPN: [`ALPN`]. No session resumption.
pub fn client_config(
    store: Arc<CredentialStore>,
    servers: PeerMatcher,
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = SpiffeVerifier {
        store: store.clone(),
        matcher: servers,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(StoreResolver(store)));
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The SPIFFE ID of a verified peer, from the certificates a finished
/// handshake reports (`peer_certificates()`); `None` without any.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs?.first().and_then(|leaf| svid::spiffe_id_of(leaf))
}
