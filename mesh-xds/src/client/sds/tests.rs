#![allow(clippy::unwrap_used, clippy::expect_used)]

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, TlsCertificate,
};
use mesh_identity::test_util::TestCa;

use super::*;

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(s.to_owned())),
        ..Default::default()
    })
}

fn cert_secret(name: &str, chain: &str, key: &str) -> Any {
    let s = Secret {
        name: name.into(),
        r#type: Some(Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    };
    Any {
        type_url: TypeUrl::Secret.as_str().into(),
        value: s.encode_to_vec(),
    }
}

fn roots_secret(name: &str, ca: &str) -> Any {
    let s = Secret {
        name: name.into(),
        r#type: Some(Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(ca),
            ..Default::default()
        })),
    };
    Any {
        type_url: TypeUrl::Secret.as_str().into(),
        value: s.encode_to_vec(),
    }
}

fn ctx() -> DecodeContext {
    DecodeContext {
        sds_identities: [SdsIdentity::istio("cluster.local")].into(),
        ..Default::default()
    }
}

/// Decodes with the real translator, then the identity checks.
fn decode(any: &Any) -> Result<Decoded, String> {
    let ctx = ctx();
    crate::translate::decode(TypeUrl::Secret, any, &ctx)
        .and_then(|d| check(&ctx, TypeUrl::Secret, d))
        .map_err(|e| e.to_string())
}

const ID: &str = "spiffe://cluster.local/ns/default/sa/app";

#[test]
fn a_valid_svid_and_roots_pass() {
    let ca = TestCa::new("cluster.local").unwrap();
    let leaf = ca.leaf(ID).issue().unwrap();
    decode(&cert_secret("default", &leaf.cert_pem, &leaf.key_pem)).unwrap();
    decode(&roots_secret("ROOTCA", ca.root_pem())).unwrap();
}

#[test]
fn a_leaf_that_is_not_an_svid_is_rejected_with_its_field() {
    let ca = TestCa::new("cluster.local").unwrap();
    let two_uris = ca
        .leaf(ID)
        .with_extra_uri("spiffe://cluster.local/ns/default/sa/other")
        .issue()
        .unwrap();
    let e = decode(&cert_secret(
        "default",
        &two_uris.cert_pem,
        &two_uris.key_pem,
    ))
    .unwrap_err();
    assert!(
        e.starts_with(
            "default: tls_certificate.certificate_chain: the leaf is not a valid X.509-SVID:"
        ),
        "{e}"
    );
    let as_ca = ca.leaf(ID).as_ca().issue().unwrap();
    let e = decode(&cert_secret("default", &as_ca.cert_pem, &as_ca.key_pem)).unwrap_err();
    assert!(e.contains("not a valid X.509-SVID"), "{e}");
}

#[test]
fn a_key_of_another_certificate_is_rejected() {
    let ca = TestCa::new("cluster.local").unwrap();
    let a = ca.leaf(ID).issue().unwrap();
    let b = ca.leaf(ID).issue().unwrap();
    let e = decode(&cert_secret("default", &a.cert_pem, &b.key_pem)).unwrap_err();
    assert!(
        e.starts_with("default: tls_certificate.private_key: the private key does not fit"),
        "{e}"
    );
}

#[test]
fn a_leaf_of_another_trust_domain_is_rejected() {
    let ca = TestCa::new("other.example").unwrap();
    let leaf = ca.leaf("spiffe://other.example/ns/a/sa/b").issue().unwrap();
    let e = decode(&cert_secret("default", &leaf.cert_pem, &leaf.key_pem)).unwrap_err();
    assert_eq!(
        e,
        "default: tls_certificate.certificate_chain: the leaf's SPIFFE ID spiffe://other.example/ns/a/sa/b is not in the identity's trust domain \"cluster.local\""
    );
}

#[test]
fn a_secret_of_the_wrong_kind_is_rejected() {
    let ca = TestCa::new("cluster.local").unwrap();
    let leaf = ca.leaf(ID).issue().unwrap();
    let e = decode(&roots_secret("default", ca.root_pem())).unwrap_err();
    assert!(
        e.starts_with("default: validation_context: the secret is the workload certificate"),
        "{e}"
    );
    let e = decode(&cert_secret("ROOTCA", &leaf.cert_pem, &leaf.key_pem)).unwrap_err();
    assert!(
        e.starts_with("ROOTCA: tls_certificate: the secret is the roots"),
        "{e}"
    );
}

#[test]
fn unusable_roots_are_rejected() {
    // A PEM block that is not a certificate webpki can anchor.
    let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let e = decode(&roots_secret("ROOTCA", junk)).unwrap_err();
    assert!(
        e.starts_with("ROOTCA: validation_context.trusted_ca: "),
        "{e}"
    );
}

#[test]
fn secrets_no_identity_names_pass_unchecked() {
    let ca = TestCa::new("other.example").unwrap();
    let leaf = ca.leaf("spiffe://other.example/ns/a/sa/b").issue().unwrap();
    decode(&cert_secret("unrelated", &leaf.cert_pem, &leaf.key_pem)).unwrap();
}

#[test]
fn config_dumps_redact_the_private_key() {
    let ca = TestCa::new("cluster.local").unwrap();
    let leaf = ca.leaf(ID).issue().unwrap();
    let raw = Arc::new(cert_secret("default", &leaf.cert_pem, &leaf.key_pem));
    let dumped = redacted(&raw);
    let s = Secret::decode(dumped.value.as_slice()).unwrap();
    let Some(Type::TlsCertificate(t)) = s.r#type else {
        panic!("not a certificate: {s:?}")
    };
    assert_eq!(t.private_key, inline(REDACTED));
    assert_eq!(t.certificate_chain, inline(&leaf.cert_pem));
    let text = String::from_utf8_lossy(&dumped.value);
    assert!(!text.contains("PRIVATE KEY"), "the key leaked: {text}");
    // Roots carry nothing secret and are dumped as received.
    let roots = Arc::new(roots_secret("ROOTCA", ca.root_pem()));
    assert_eq!(*redacted(&roots), *roots);
}
