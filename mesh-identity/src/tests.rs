//! Tests of SVID validation, bundles, credentials and real mTLS handshakes
//! over loopback (tokio-rustls on both ends).

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::ExtendedKeyUsagePurpose;
use rustls::{CertificateError, Error};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::test_util::TestCa;
use crate::tls::{PeerMatcher, client_config, peer_identity, server_config};
use crate::{CredentialStore, Credentials, SpiffeId, TrustBundle, svid};

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn svid_error(der: &[u8]) -> String {
    svid::validate_leaf(der).unwrap_err().reason().to_owned()
}

// === X.509-SVID leaf rules (reference checklist B.2) ===

#[test]
fn a_valid_svid_yields_its_spiffe_id() {
    let ca = TestCa::new("cluster.local").unwrap();
    let leaf = ca.leaf(CLIENT).issue().unwrap();
    assert_eq!(svid::validate_leaf(&leaf.chain[0]).unwrap(), id(CLIENT));
}

#[test]
fn rejects_svids_that_break_the_leaf_rules() {
    let ca = TestCa::new("cluster.local").unwrap();
    // B2.1: exactly one URI SAN.
    let two = ca.leaf(CLIENT).with_extra_uri(SERVER).issue().unwrap();
    assert_eq!(svid_error(&two.chain[0]), "more than one URI SAN");
    // B2.2: a leaf is not a CA and does not sign certificates.
    let ca_leaf = ca.leaf(CLIENT).as_ca().issue().unwrap();
    assert_eq!(svid_error(&ca_leaf.chain[0]), "a leaf must not be a CA");
    // B2.3: a leaf's ID has a path.
    let root_id = ca.leaf("spiffe://cluster.local").issue().unwrap();
    assert_eq!(
        svid_error(&root_id.chain[0]),
        "the SPIFFE ID of a leaf must have a path"
    );
    // B2.4: EKU, when present, has both serverAuth and clientAuth.
    let server_only = ca
        .leaf(CLIENT)
        .with_eku(vec![ExtendedKeyUsagePurpose::ServerAuth])
        .issue()
        .unwrap();
    assert_eq!(
        svid_error(&server_only.chain[0]),
        "the extended key usage must include serverAuth and clientAuth"
    );
    let no_eku = ca.leaf(CLIENT).with_eku(vec![]).issue().unwrap();
    assert_eq!(svid::validate_leaf(&no_eku.chain[0]).unwrap(), id(CLIENT));
    // The URI SAN must be a SPIFFE ID.
    let https = ca.leaf("https://example.com/x").issue().unwrap();
    assert_eq!(
        svid_error(&https.chain[0]),
        "the URI SAN is not a SPIFFE ID (the scheme must be spiffe://)"
    );
    let upper = ca.leaf("spiffe://Cluster.local/x").issue().unwrap();
    assert_eq!(
        svid_error(&upper.chain[0]),
        "the URI SAN is not a SPIFFE ID (the trust domain may only hold lowercase letters, \
         digits, '.', '-' and '_')"
    );
    // The CA certificate itself is not a workload SVID.
    assert_eq!(
        svid_error(ca.root_der()),
        "the SPIFFE ID of a leaf must have a path"
    );
    assert_eq!(
        svid_error(b"not a certificate"),
        "the certificate is not valid DER"
    );
}

// === Bundles and credentials ===

#[test]
fn bundle_entries_are_validated() {
    let ca = TestCa::new("cluster.local").unwrap();
    let e = TrustBundle::new()
        .with_pem_roots("Cluster.local", ca.root_pem())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid trust bundle for \"Cluster.local\": the trust domain may only hold lowercase \
         letters, digits, '.', '-' and '_'"
    );
    let e = TrustBundle::new()
        .with_pem_roots("cluster.local", "")
        .unwrap_err();
    assert_eq!(e.reason(), "no root certificate");
    let e = TrustBundle::new()
        .with_pem_roots("cluster.local/ns", ca.root_pem())
        .unwrap_err();
    assert_eq!(e.reason(), "not a trust domain name");
    let bundle = TrustBundle::new()
        .with_pem_roots("cluster.local", ca.root_pem())
        .unwrap();
    assert_eq!(bundle.roots("cluster.local").map(<[_]>::len), Some(1));
    assert!(bundle.roots("other.local").is_none());
}

#[test]
fn credentials_require_a_valid_svid_and_its_own_key() {
    let ca = TestCa::new("cluster.local").unwrap();
    let a = ca.leaf(CLIENT).issue().unwrap();
    let b = ca.leaf(SERVER).issue().unwrap();
    let creds = Credentials::from_pem(&a.cert_pem, &a.key_pem).unwrap();
    assert_eq!(creds.id(), &id(CLIENT));
    let mismatched = Credentials::from_der(a.chain.clone(), b.key).unwrap_err();
    assert!(
        mismatched
            .reason()
            .starts_with("the private key does not fit"),
        "{mismatched}"
    );
    let two = ca.leaf(CLIENT).with_extra_uri(SERVER).issue().unwrap();
    assert_eq!(
        Credentials::from_der(two.chain, two.key)
            .unwrap_err()
            .reason(),
        "invalid X.509-SVID: more than one URI SAN"
    );
    assert_eq!(
        Credentials::from_der(vec![], a.key).unwrap_err().reason(),
        "the certificate chain is empty"
    );
}

// === Handshakes over loopback ===

struct Outcome {
    /// The server side: the client's verified identity, or the error.
    server: io::Result<Option<SpiffeId>>,
    /// The client side: the server's verified identity after a round trip.
    client: io::Result<Option<SpiffeId>>,
}

async fn handshake(server: rustls::ServerConfig, client: rustls::ClientConfig) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok(peer)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("server.default.svc").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let peer = peer_identity(tls.get_ref().1.peer_certificates());
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        // TLS 1.3: a rejected client certificate shows up here, as an alert.
        tls.read_exact(&mut buf).await?;
        Ok(peer)
    }
    .await;
    Outcome {
        server: server_task.await.unwrap(),
        client,
    }
}

fn rustls_error(e: &io::Error) -> &Error {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not a rustls error: {e:?}"))
}

fn store(creds: Credentials, bundle: TrustBundle) -> Arc<CredentialStore> {
    Arc::new(CredentialStore::new(creds, bundle))
}

#[tokio::test]
async fn mutual_tls_verifies_both_spiffe_ids() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
    let client = store(ca.leaf(CLIENT).credentials().unwrap(), ca.bundle().unwrap());
    let out = handshake(
        server_config(server, PeerMatcher::AnyTrusted).unwrap(),
        client_config(client, PeerMatcher::exact(id(SERVER))).unwrap(),
    )
    .await;
    assert_eq!(out.server.unwrap(), Some(id(CLIENT)));
    assert_eq!(out.client.unwrap(), Some(id(SERVER)));
}

#[tokio::test]
async fn peers_are_matched_by_exact_id_trust_domain_and_istio_namespace() {
    let ca = TestCa::new("cluster.local").unwrap();
    let client_creds = ca.leaf(CLIENT).credentials().unwrap();
    for (matcher, accepted) in [
        (PeerMatcher::exact(id(CLIENT)), true),
        (PeerMatcher::exact(id(SERVER)), false),
        (PeerMatcher::AnyOf(Arc::new([])), false),
        (PeerMatcher::TrustDomain("cluster.local".into()), true),
        (PeerMatcher::TrustDomain("other.local".into()), false),
        (
            PeerMatcher::IstioNamespace {
                trust_domain: "cluster.local".into(),
                namespace: "default".into(),
            },
            true,
        ),
        (
            PeerMatcher::IstioNamespace {
                trust_domain: "cluster.local".into(),
                namespace: "prod".into(),
            },
            false,
        ),
    ] {
        let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
        let client = store(client_creds.clone(), ca.bundle().unwrap());
        let out = handshake(
            server_config(server, matcher.clone()).unwrap(),
            client_config(client, PeerMatcher::AnyTrusted).unwrap(),
        )
        .await;
        if accepted {
            assert_eq!(out.server.unwrap(), Some(id(CLIENT)), "{matcher:?}");
        } else {
            let e = out.server.unwrap_err();
            assert_eq!(
                rustls_error(&e).to_string(),
                format!("invalid peer certificate: Other(OtherError(UnexpectedPeer({CLIENT:?})))"),
                "{matcher:?}"
            );
            assert!(out.client.is_err(), "{matcher:?}");
        }
    }
}

#[tokio::test]
async fn a_client_from_another_trust_domain_is_rejected() {
    let ca = TestCa::new("cluster.local").unwrap();
    let other = TestCa::new("other.local").unwrap();
    let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
    let foreign = other
        .leaf("spiffe://other.local/ns/default/sa/client")
        .credentials()
        .unwrap();
    let client = store(foreign, ca.bundle().unwrap());
    let out = handshake(
        server_config(server, PeerMatcher::AnyTrusted).unwrap(),
        client_config(client, PeerMatcher::AnyTrusted).unwrap(),
    )
    .await;
    let e = out.server.unwrap_err();
    assert_eq!(
        rustls_error(&e),
        &Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert!(out.client.is_err());
}

#[tokio::test]
async fn a_ca_of_one_trust_domain_cannot_mint_ids_of_another() {
    // B2.5: the chain is validated against the roots of the trust domain
    // the peer claims, not against every root in the bundle.
    let ca = TestCa::new("cluster.local").unwrap();
    let other = TestCa::new("other.local").unwrap();
    let bundle = || {
        TrustBundle::new()
            .with_pem_roots("cluster.local", ca.root_pem())
            .unwrap()
            .with_pem_roots("other.local", other.root_pem())
            .unwrap()
    };
    let server = store(ca.leaf(SERVER).credentials().unwrap(), bundle());
    let forged = other.leaf(CLIENT).credentials().unwrap();
    let out = handshake(
        server_config(server.clone(), PeerMatcher::AnyTrusted).unwrap(),
        client_config(store(forged, bundle()), PeerMatcher::AnyTrusted).unwrap(),
    )
    .await;
    let e = out.server.unwrap_err();
    assert_eq!(
        rustls_error(&e),
        &Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    // The same CA for its own domain is fine.
    let genuine = other
        .leaf("spiffe://other.local/ns/default/sa/client")
        .credentials()
        .unwrap();
    let out = handshake(
        server_config(server, PeerMatcher::AnyTrusted).unwrap(),
        client_config(store(genuine, bundle()), PeerMatcher::AnyTrusted).unwrap(),
    )
    .await;
    assert_eq!(
        out.server.unwrap(),
        Some(id("spiffe://other.local/ns/default/sa/client"))
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_rejected() {
    let ca = TestCa::new("cluster.local").unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3_600);
    for (not_before, not_after, expired) in [
        (now - 3 * hour, now - hour, true),
        (now + hour, now + 3 * hour, false),
    ] {
        let stale = ca
            .leaf(CLIENT)
            .validity(not_before, not_after)
            .credentials()
            .unwrap();
        let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
        let out = handshake(
            server_config(server, PeerMatcher::AnyTrusted).unwrap(),
            client_config(store(stale, ca.bundle().unwrap()), PeerMatcher::AnyTrusted).unwrap(),
        )
        .await;
        let e = out.server.unwrap_err();
        let matched = matches!(
            (rustls_error(&e), expired),
            (
                Error::InvalidCertificate(CertificateError::ExpiredContext { .. }),
                true
            ) | (
                Error::InvalidCertificate(CertificateError::NotValidYetContext { .. }),
                false
            )
        );
        assert!(matched, "{e:?}");

        // The same on the client side, for a stale server certificate.
        let stale = ca
            .leaf(SERVER)
            .validity(not_before, not_after)
            .credentials()
            .unwrap();
        let client = store(ca.leaf(CLIENT).credentials().unwrap(), ca.bundle().unwrap());
        let out = handshake(
            server_config(store(stale, ca.bundle().unwrap()), PeerMatcher::AnyTrusted).unwrap(),
            client_config(client, PeerMatcher::AnyTrusted).unwrap(),
        )
        .await;
        let e = out.client.unwrap_err();
        assert!(
            matches!(
                rustls_error(&e),
                Error::InvalidCertificate(
                    CertificateError::ExpiredContext { .. }
                        | CertificateError::NotValidYetContext { .. }
                )
            ),
            "{e:?}"
        );
        assert!(out.server.is_err());
    }
}

#[tokio::test]
async fn a_client_rejects_a_server_with_an_unexpected_id() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
    let client = store(ca.leaf(CLIENT).credentials().unwrap(), ca.bundle().unwrap());
    let out = handshake(
        server_config(server, PeerMatcher::AnyTrusted).unwrap(),
        client_config(
            client,
            PeerMatcher::exact(id("spiffe://cluster.local/ns/default/sa/reviews")),
        )
        .unwrap(),
    )
    .await;
    let e = out.client.unwrap_err();
    assert_eq!(
        rustls_error(&e).to_string(),
        format!("invalid peer certificate: Other(OtherError(UnexpectedPeer({SERVER:?})))")
    );
}

#[tokio::test]
async fn a_store_without_credentials_fails_closed() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
    let anonymous = Arc::new(CredentialStore::without_credentials(ca.bundle().unwrap()));
    let out = handshake(
        server_config(server, PeerMatcher::AnyTrusted).unwrap(),
        client_config(anonymous.clone(), PeerMatcher::AnyTrusted).unwrap(),
    )
    .await;
    let e = out.server.unwrap_err();
    assert_eq!(rustls_error(&e), &Error::NoCertificatesPresented);
    assert!(out.client.is_err());
    // A server without credentials cannot complete a handshake either.
    let client = store(ca.leaf(CLIENT).credentials().unwrap(), ca.bundle().unwrap());
    let out = handshake(
        server_config(anonymous.clone(), PeerMatcher::AnyTrusted).unwrap(),
        client_config(client, PeerMatcher::AnyTrusted).unwrap(),
    )
    .await;
    assert!(out.server.is_err());
    assert!(out.client.is_err());
    // Pushing credentials makes the next handshake work.
    anonymous.set_credentials(ca.leaf(SERVER).credentials().unwrap());
    let client = store(ca.leaf(CLIENT).credentials().unwrap(), ca.bundle().unwrap());
    let out = handshake(
        server_config(anonymous, PeerMatcher::AnyTrusted).unwrap(),
        client_config(client, PeerMatcher::AnyTrusted).unwrap(),
    )
    .await;
    assert_eq!(out.client.unwrap(), Some(id(SERVER)));
}

#[tokio::test]
async fn pushed_credentials_and_bundles_apply_to_the_next_handshake() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = store(ca.leaf(SERVER).credentials().unwrap(), ca.bundle().unwrap());
    let client = store(ca.leaf(CLIENT).credentials().unwrap(), ca.bundle().unwrap());
    let server_cfg = server_config(server.clone(), PeerMatcher::AnyTrusted).unwrap();
    let client_cfg = client_config(client.clone(), PeerMatcher::AnyTrusted).unwrap();
    let out = handshake(server_cfg.clone(), client_cfg.clone()).await;
    assert_eq!(out.client.unwrap(), Some(id(SERVER)));

    // Rotate the server to a new identity: the same configs serve it.
    let rotated = "spiffe://cluster.local/ns/default/sa/server-v2";
    server.set_credentials(ca.leaf(rotated).credentials().unwrap());
    assert_eq!(server.id(), Some(id(rotated)));
    let out = handshake(server_cfg.clone(), client_cfg.clone()).await;
    assert_eq!(out.client.unwrap(), Some(id(rotated)));

    // Move the client to a new CA: the server rejects it until its bundle
    // trusts that CA too.
    let next_ca = TestCa::new("cluster.local").unwrap();
    client.set_credentials(next_ca.leaf(CLIENT).credentials().unwrap());
    client.set_bundle(
        TrustBundle::new()
            .with_der_roots(
                "cluster.local",
                &[ca.root_der().clone(), next_ca.root_der().clone()],
            )
            .unwrap(),
    );
    let out = handshake(server_cfg.clone(), client_cfg.clone()).await;
    // The new root has the old one's subject (as a CA rotation usually
    // does), so webpki finds the old root by name and its key does not
    // verify the new leaf.
    assert_eq!(
        rustls_error(&out.server.unwrap_err()),
        &Error::InvalidCertificate(CertificateError::BadSignature)
    );
    server.set_bundle(
        TrustBundle::new()
            .with_der_roots(
                "cluster.local",
                &[ca.root_der().clone(), next_ca.root_der().clone()],
            )
            .unwrap(),
    );
    let out = handshake(server_cfg, client_cfg).await;
    assert_eq!(out.server.unwrap(), Some(id(CLIENT)));
}

// === SPIFFE bundle maps (gRFC A87, checklist B.2.6) ===

fn x5c(ca: &TestCa) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(ca.root_der())
}

#[test]
fn parses_a_spiffe_bundle_map() {
    let a = TestCa::new("cluster.local").unwrap();
    let b = TestCa::new("other.local").unwrap();
    let json = format!(
        r#"{{"trust_domains": {{
            "cluster.local": {{"spiffe_sequence": 7, "keys": [
                {{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}},
                {{"kty": "EC", "use": "jwt-svid", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"}}
            ]}},
            "other.local": {{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}]}},
            "empty.local": {{"keys": []}}
        }}}}"#,
        x5c(&a),
        x5c(&b)
    );
    let bundle = TrustBundle::from_spiffe_bundle_map(&json).unwrap();
    assert_eq!(bundle.roots("cluster.local").map(<[_]>::len), Some(1));
    assert_eq!(bundle.roots("other.local").map(<[_]>::len), Some(1));
    assert_eq!(bundle.roots("empty.local").map(<[_]>::len), Some(0));
    let empty = TrustBundle::from_spiffe_bundle_map(r#"{"trust_domains": {}}"#).unwrap();
    assert_eq!(
        empty.trust_domains().count(),
        0,
        "an empty map trusts nothing"
    );
}

#[test]
fn a_bad_bundle_map_entry_rejects_the_whole_map() {
    let ca = TestCa::new("cluster.local").unwrap();
    let good = format!(
        r#"{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}"#,
        x5c(&ca)
    );
    for (json, message) in [
        (
            "[",
            "invalid trust bundle map: not JSON: EOF while parsing a list at line 1 column 1",
        ),
        (
            "{}",
            "invalid trust bundle map: \"trust_domains\" must be an object",
        ),
        (
            r#"{"trust_domains": {"Bad.Domain": {"keys": []}}}"#,
            "invalid trust bundle for \"Bad.Domain\": the trust domain may only hold lowercase \
             letters, digits, '.', '-' and '_'",
        ),
        (
            r#"{"trust_domains": {"td": {}}}"#,
            "invalid trust bundle for \"td\": \"keys\" must be an array",
        ),
        (
            r#"{"trust_domains": {"td": {"spiffe_sequence": -1, "keys": []}}}"#,
            "invalid trust bundle for \"td\": \"spiffe_sequence\" must be a non-negative integer",
        ),
        (
            r#"{"trust_domains": {"td": {"keys": [{"kty": "EC", "use": "x509-svid", "x5c": []}]}}}"#,
            "invalid trust bundle for \"td\": keys[0].x5c must be a non-empty array of base64 \
             certificates",
        ),
        (
            r#"{"trust_domains": {"td": {"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["!!"]}]}}}"#,
            "invalid trust bundle for \"td\": keys[0].x5c[0] is not base64: Invalid symbol 33, \
             offset 0.",
        ),
        (
            r#"{"trust_domains": {"td": {"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["AAAA"]}]}}}"#,
            "invalid trust bundle for \"td\": keys[0].x5c[0]: TrailingData(SignedData)",
        ),
        (
            r#"{"trust_domains": {"td": {"keys": [{"use": "x509-svid", "x5c": []}]}}}"#,
            "invalid trust bundle for \"td\": keys[0].kty must be a string",
        ),
    ] {
        assert_eq!(
            TrustBundle::from_spiffe_bundle_map(json)
                .unwrap_err()
                .to_string(),
            message,
            "{json}"
        );
    }
    // One bad domain next to a good one still rejects the map.
    let json =
        format!(r#"{{"trust_domains": {{"cluster.local": {{"keys": [{good}]}}, "td": {{}}}}}}"#);
    assert!(TrustBundle::from_spiffe_bundle_map(&json).is_err());
}

#[tokio::test]
async fn a_bundle_map_validates_peers_per_trust_domain() {
    let ca = TestCa::new("cluster.local").unwrap();
    let other = TestCa::new("other.local").unwrap();
    let json = format!(
        r#"{{"trust_domains": {{
            "cluster.local": {{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}]}},
            "other.local": {{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}]}}
        }}}}"#,
        x5c(&ca),
        x5c(&other)
    );
    let bundle = || TrustBundle::from_spiffe_bundle_map(&json).unwrap();
    let server = store(ca.leaf(SERVER).credentials().unwrap(), bundle());
    let foreign_id = "spiffe://other.local/ns/default/sa/client";
    let client = store(other.leaf(foreign_id).credentials().unwrap(), bundle());
    let out = handshake(
        server_config(server, PeerMatcher::AnyTrusted).unwrap(),
        client_config(client, PeerMatcher::exact(id(SERVER))).unwrap(),
    )
    .await;
    assert_eq!(out.server.unwrap(), Some(id(foreign_id)));
    assert_eq!(out.client.unwrap(), Some(id(SERVER)));
}
