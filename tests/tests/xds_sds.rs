//! SDS secrets into the identity store (issue 5): `XdsClient::watch_identity`
//! against the scripted ADS server on paused time (subscribe, ACK, NACK of
//! every invalid case with its field path, last good identity kept,
//! rotation), TLS contexts that reference the identity's secrets, and one
//! end-to-end test where the certificate a real mTLS handshake presents
//! comes from SDS and changes with a rotated secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_core::ConfigStore;
use mesh_identity::test_util::{IssuedLeaf, TestCa};
use mesh_identity::tls::PeerMatcher;
use mesh_identity::{CredentialStore, SpiffeId};
use mesh_tests::xds_script::{self, ScriptedAds, SotwStream, delta_response, response};
use mesh_xds::client::{ClientOptions, REDACTED, SdsWatch};
use mesh_xds::config::{ClientConfig, Protocol, SdsIdentity};
use mesh_xds::pb::envoy::config::cluster::v3 as cds;
use mesh_xds::pb::envoy::config::core::v3 as core;
use mesh_xds::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use mesh_xds::pb::envoy::service::discovery::v3::DiscoveryRequest;
use mesh_xds::pb::google::protobuf::Any;
use mesh_xds::{ResourceState, TypeUrl, XdsClient};
use prost::{Message, Name};

const S: TypeUrl = TypeUrl::Secret;
const C: TypeUrl = TypeUrl::Cluster;
const TD: &str = "cluster.local";
const APP: &str = "spiffe://cluster.local/ns/default/sa/app";

// === resources ===

fn inline(s: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::InlineString(s.to_owned())),
        ..Default::default()
    })
}

fn secret_any(s: &tls::Secret) -> Any {
    Any {
        type_url: S.as_str().into(),
        value: s.encode_to_vec(),
    }
}

fn cert_proto(name: &str, chain: &str, key: &str) -> tls::Secret {
    tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    }
}

/// The `tls_certificate` secret `name` carrying `leaf`.
fn cert(name: &str, leaf: &IssuedLeaf) -> Any {
    secret_any(&cert_proto(name, &leaf.cert_pem, &leaf.key_pem))
}

/// The `validation_context` secret `name` trusting `ca`.
fn roots(name: &str, ca: &TestCa) -> Any {
    secret_any(&tls::Secret {
        name: name.into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: inline(ca.root_pem()),
                ..Default::default()
            },
        )),
    })
}

// === the client ===

struct Env {
    server: Arc<ScriptedAds>,
    client: XdsClient,
}

fn start(protocol: Protocol) -> Env {
    start_with(protocol, |_| {})
}

fn start_with(protocol: Protocol, tweak: impl FnOnce(&mut ClientConfig)) -> Env {
    let server = ScriptedAds::start();
    let mut config = xds_script::config(1, protocol);
    tweak(&mut config);
    let client = XdsClient::start_with(
        config,
        ConfigStore::new(),
        ClientOptions {
            connector: Some(xds_script::connector(vec![Arc::clone(&server)])),
            decoder: None,
        },
    );
    Env { server, client }
}

impl Env {
    fn state(&self, t: TypeUrl, name: &str) -> mesh_xds::ResourceStatus {
        self.client
            .status()
            .into_iter()
            .find(|s| s.type_url == t && s.name == name)
            .unwrap_or_else(|| panic!("no status for {} {name}", t.as_str()))
    }
}

async fn expect(s: &mut SotwStream, t: TypeUrl) -> DiscoveryRequest {
    let r = s.recv().await;
    assert_eq!(r.type_url, t.as_str(), "unexpected request: {r:?}");
    r
}

fn names(r: &DiscoveryRequest) -> Vec<&str> {
    r.resource_names.iter().map(String::as_str).collect()
}

/// The SPIFFE ID and leaf DER the store presents now.
fn presented(store: &CredentialStore) -> Option<SpiffeId> {
    store.id()
}

/// Subscribes Istio's identity, serves `default` and `ROOTCA` (version 1)
/// and waits for the store to be filled.
async fn serve_identity(env: &Env, ca: &TestCa, leaf: &IssuedLeaf) -> (SdsWatch, SotwStream) {
    let w = env.client.watch_identity(SdsIdentity::istio(TD));
    let mut s = env.server.sotw_stream().await;
    let sub = expect(&mut s, S).await;
    assert_eq!(names(&sub), ["ROOTCA", "default"]);
    s.send(response(
        S,
        "1",
        "s1",
        vec![cert("default", leaf), roots("ROOTCA", ca)],
    ))
    .await;
    let ack = expect(&mut s, S).await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    w.wait_for_updates(1).await;
    (w, s)
}

// === subscription, ACK, publication ===

#[tokio::test(start_paused = true)]
async fn identity_secrets_are_subscribed_acked_and_fill_the_store() {
    let ca = TestCa::new(TD).unwrap();
    let leaf = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::StateOfTheWorld);
    let w = env.client.watch_identity(SdsIdentity::istio(TD));
    assert_eq!(
        presented(w.store()),
        None,
        "empty until both secrets arrive"
    );

    let mut s = env.server.sotw_stream().await;
    let sub = expect(&mut s, S).await;
    assert_eq!(names(&sub), ["ROOTCA", "default"]);
    assert_eq!(sub.node.as_ref().unwrap().id, "node-1");
    assert_eq!(env.state(S, "default").state, ResourceState::Requested);

    // The certificate alone is not published (both halves first).
    s.send(response(S, "1", "s1", vec![cert("default", &leaf)]))
        .await;
    let ack = expect(&mut s, S).await;
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("1", "s1")
    );
    assert!(ack.error_detail.is_none());
    assert_eq!(env.state(S, "default").state, ResourceState::Acked);
    assert_eq!(presented(w.store()), None);
    assert_eq!(w.stats().updates(), 0);

    s.send(response(
        S,
        "2",
        "s2",
        vec![cert("default", &leaf), roots("ROOTCA", &ca)],
    ))
    .await;
    let ack = expect(&mut s, S).await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("2", None));
    w.wait_for_updates(1).await;
    assert_eq!(presented(w.store()).unwrap().to_string(), APP);
    assert_eq!(w.stats().updates(), 1);
    assert_eq!(w.stats().rejections(), 0);
    let st = env.state(S, "ROOTCA");
    assert_eq!(
        (st.state, st.version.as_deref(), st.cached),
        (ResourceState::Acked, Some("2"), true)
    );

    // An unchanged push does not swap the store again (A2.6).
    s.send(response(
        S,
        "3",
        "s3",
        vec![cert("default", &leaf), roots("ROOTCA", &ca)],
    ))
    .await;
    expect(&mut s, S).await;
    assert_eq!(w.stats().updates(), 1);

    // CSDS and config dumps list the secrets, never the key.
    let raw = env.client.raw_resources();
    let (_, _, dumped) = raw
        .iter()
        .find(|(t, n, _)| *t == S && n == "default")
        .expect("the secret is dumped");
    let dumped = tls::Secret::decode(dumped.as_ref().unwrap().value.as_slice()).unwrap();
    let Some(tls::secret::Type::TlsCertificate(t)) = dumped.r#type else {
        panic!("{dumped:?}")
    };
    assert_eq!(t.private_key, inline(REDACTED));
    assert_eq!(t.certificate_chain, inline(&leaf.cert_pem));
}

#[tokio::test(start_paused = true)]
async fn rotation_swaps_the_store_and_dropping_the_watch_unsubscribes() {
    let ca = TestCa::new(TD).unwrap();
    let first = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::StateOfTheWorld);
    let (w, mut s) = serve_identity(&env, &ca, &first).await;
    let key_before = w.store().id();

    let other = "spiffe://cluster.local/ns/default/sa/rotated";
    let second = ca.leaf(other).issue().unwrap();
    s.send(response(
        S,
        "2",
        "s2",
        vec![cert("default", &second), roots("ROOTCA", &ca)],
    ))
    .await;
    let ack = expect(&mut s, S).await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("2", None));
    w.wait_for_updates(2).await;
    assert_ne!(w.store().id(), key_before);
    assert_eq!(w.store().id().unwrap().to_string(), other);

    // A new CA: the roots rotate on their own, the certificate stays.
    let ca2 = TestCa::new(TD).unwrap();
    s.send(response(
        S,
        "3",
        "s3",
        vec![cert("default", &second), roots("ROOTCA", &ca2)],
    ))
    .await;
    expect(&mut s, S).await;
    w.wait_for_updates(3).await;
    assert_eq!(w.store().id().unwrap().to_string(), other);

    let store = Arc::clone(w.store());
    drop(w);
    // Nothing else is watched: the stream closes (rule A1.12).
    s.expect_closed(std::time::Duration::from_secs(5)).await;
    assert!(
        !env.client.status().iter().any(|st| st.type_url == S),
        "the secrets leave the cache with their watch"
    );
    assert_eq!(
        store.id().unwrap().to_string(),
        other,
        "the store keeps its last identity"
    );
}

// === NACKs ===

#[tokio::test(start_paused = true)]
async fn every_invalid_secret_is_nacked_with_its_field_and_the_last_good_identity_stays() {
    let ca = TestCa::new(TD).unwrap();
    let good = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::StateOfTheWorld);
    let (w, mut s) = serve_identity(&env, &ca, &good).await;

    let other_key = ca.leaf(APP).issue().unwrap();
    let not_svid = ca
        .leaf(APP)
        .with_extra_uri("spiffe://cluster.local/ns/default/sa/two")
        .issue()
        .unwrap();
    let foreign_ca = TestCa::new("other.example").unwrap();
    let foreign = foreign_ca
        .leaf("spiffe://other.example/ns/default/sa/app")
        .issue()
        .unwrap();
    let mut with_password = cert_proto("default", &good.cert_pem, &good.key_pem);
    if let Some(tls::secret::Type::TlsCertificate(t)) = &mut with_password.r#type {
        t.password = inline("hunter2");
    }
    let mut from_file = cert_proto("default", &good.cert_pem, &good.key_pem);
    if let Some(tls::secret::Type::TlsCertificate(t)) = &mut from_file.r#type {
        t.private_key = Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(
                "/etc/key.pem".into(),
            )),
            ..Default::default()
        });
    }
    let pinned_roots = secret_any(&tls::Secret {
        name: "ROOTCA".into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: inline(ca.root_pem()),
                verify_certificate_spki: vec!["pin".into()],
                ..Default::default()
            },
        )),
    });
    let cases: Vec<(&str, Any, &str)> = vec![
        (
            "key of another certificate",
            secret_any(&cert_proto("default", &good.cert_pem, &other_key.key_pem)),
            "default: tls_certificate.private_key: the private key does not fit",
        ),
        (
            "leaf with two URI SANs",
            cert("default", &not_svid),
            "default: tls_certificate.certificate_chain: the leaf is not a valid X.509-SVID",
        ),
        (
            "leaf of another trust domain",
            cert("default", &foreign),
            "default: tls_certificate.certificate_chain: the leaf's SPIFFE ID spiffe://other.example/ns/default/sa/app is not in the identity's trust domain \"cluster.local\"",
        ),
        (
            "bad PEM",
            secret_any(&cert_proto("default", "not pem", &good.key_pem)),
            "default: tls_certificate.certificate_chain",
        ),
        (
            "password",
            secret_any(&with_password),
            "default: tls_certificate.password",
        ),
        (
            "key from a file",
            secret_any(&from_file),
            "default: tls_certificate.private_key",
        ),
        (
            "roots as the certificate",
            roots("default", &ca),
            "default: validation_context: the secret is the workload certificate",
        ),
        (
            "pinned roots",
            pinned_roots,
            "ROOTCA: validation_context.verify_certificate_spki",
        ),
    ];
    let mut accepted_in =
        std::collections::HashMap::from([("default", "1".to_owned()), ("ROOTCA", "1".to_owned())]);
    for (i, (what, bad, reason)) in cases.into_iter().enumerate() {
        let nonce = format!("bad-{i}");
        let version = format!("bad-{i}");
        let bad_name = if reason.starts_with("ROOTCA") {
            "ROOTCA"
        } else {
            "default"
        };
        let mut resources = vec![bad];
        // The other half, valid, in the same response: it still applies
        // (A2.2), unchanged here.
        resources.push(if bad_name == "ROOTCA" {
            cert("default", &good)
        } else {
            roots("ROOTCA", &ca)
        });
        s.send(response(S, &version, &nonce, resources)).await;
        let nack = expect(&mut s, S).await;
        let detail = nack
            .error_detail
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: not NACKed: {nack:?}"));
        assert!(
            detail.message.starts_with(reason),
            "{what}: error_detail {:?} does not start with {reason:?}",
            detail.message
        );
        assert_eq!(
            nack.version_info, "1",
            "{what}: the NACK carries the last accepted version"
        );
        assert_eq!(nack.response_nonce, nonce);
        let st = env.state(S, bad_name);
        assert_eq!(st.state, ResourceState::Nacked, "{what}");
        assert!(st.cached, "{what}: the last good secret stays cached");
        assert_eq!(
            st.version.as_deref(),
            Some(accepted_in[bad_name].as_str()),
            "{what}: the version in use is the one it was last accepted in"
        );
        // The valid other half was accepted with this response (A2.2).
        let other = if bad_name == "ROOTCA" {
            "default"
        } else {
            "ROOTCA"
        };
        accepted_in.insert(other, version.clone());
        assert_eq!(
            env.state(S, other).version.as_deref(),
            Some(version.as_str())
        );
        assert!(
            st.error
                .as_deref()
                .unwrap()
                .contains(&reason[bad_name.len() + 2..]),
            "{what}: {st:?}"
        );
        assert_eq!(w.store().id().unwrap().to_string(), APP, "{what}");
        assert_eq!(w.stats().updates(), 1, "{what}: the store was not touched");
        assert_eq!(w.stats().rejections(), i as u64 + 1, "{what}");
    }

    // A valid secret again clears the error and applies.
    let next = ca
        .leaf("spiffe://cluster.local/ns/default/sa/next")
        .issue()
        .unwrap();
    s.send(response(
        S,
        "2",
        "good-2",
        vec![cert("default", &next), roots("ROOTCA", &ca)],
    ))
    .await;
    let ack = expect(&mut s, S).await;
    assert_eq!((ack.version_info.as_str(), ack.error_detail), ("2", None));
    w.wait_for_updates(2).await;
    assert_eq!(env.state(S, "default").state, ResourceState::Acked);
    assert_eq!(
        w.store().id().unwrap().to_string(),
        "spiffe://cluster.local/ns/default/sa/next"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_is_published_until_both_halves_are_valid() {
    let ca = TestCa::new(TD).unwrap();
    let leaf = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::StateOfTheWorld);
    let w = env.client.watch_identity(SdsIdentity::istio(TD));
    let mut s = env.server.sotw_stream().await;
    expect(&mut s, S).await;
    let junk = secret_any(&tls::Secret {
        name: "ROOTCA".into(),
        r#type: Some(tls::secret::Type::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: inline(
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ),
                ..Default::default()
            },
        )),
    });
    s.send(response(S, "1", "s1", vec![cert("default", &leaf), junk]))
        .await;
    let nack = expect(&mut s, S).await;
    let msg = &nack.error_detail.as_ref().unwrap().message;
    assert!(
        msg.starts_with("ROOTCA: validation_context.trusted_ca: "),
        "{msg}"
    );
    assert_eq!(nack.version_info, "", "nothing was ever accepted");
    // The certificate applied (A2.2) but without roots nothing is published.
    assert_eq!(env.state(S, "default").state, ResourceState::Acked);
    let roots_state = env.state(S, "ROOTCA");
    assert_eq!(
        (roots_state.state, roots_state.cached),
        (ResourceState::Nacked, false)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.store().id(), None);
    assert_eq!(w.stats().updates(), 0);
    assert_eq!(w.stats().rejections(), 1);

    s.send(response(
        S,
        "2",
        "s2",
        vec![cert("default", &leaf), roots("ROOTCA", &ca)],
    ))
    .await;
    expect(&mut s, S).await;
    w.wait_for_updates(1).await;
    assert_eq!(w.store().id().unwrap().to_string(), APP);
}

#[tokio::test(start_paused = true)]
async fn secrets_never_sent_time_out_and_the_store_stays_empty() {
    let env = start(Protocol::StateOfTheWorld);
    let w = env.client.watch_identity(SdsIdentity::istio(TD));
    let mut s = env.server.sotw_stream().await;
    expect(&mut s, S).await;
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(env.state(S, "default").state, ResourceState::Requested);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["default", "ROOTCA"] {
        let st = env.state(S, name);
        assert_eq!(
            (st.state, st.cached),
            (ResourceState::DoesNotExist, false),
            "{name}"
        );
    }
    assert_eq!(w.store().id(), None, "no identity: handshakes fail closed");
    assert_eq!(w.stats().updates(), 0);
}

#[tokio::test(start_paused = true)]
async fn delta_streams_carry_the_secrets_too() {
    let ca = TestCa::new(TD).unwrap();
    let first = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::Delta);
    let w = env.client.watch_identity(SdsIdentity::istio(TD));
    let mut s = env.server.delta_stream().await;
    let sub = s.recv().await;
    assert_eq!(sub.type_url, S.as_str());
    let mut subscribed = sub.resource_names_subscribe.clone();
    subscribed.sort();
    assert_eq!(subscribed, ["ROOTCA", "default"]);
    s.send(delta_response(
        S,
        "d1",
        vec![
            ("default", "c1", cert("default", &first)),
            ("ROOTCA", "r1", roots("ROOTCA", &ca)),
        ],
        &[],
    ))
    .await;
    let ack = s.recv().await;
    assert!(ack.error_detail.is_none(), "{ack:?}");
    w.wait_for_updates(1).await;
    assert_eq!(w.store().id().unwrap().to_string(), APP);

    // Rotation of the certificate only.
    let second = ca
        .leaf("spiffe://cluster.local/ns/default/sa/b")
        .issue()
        .unwrap();
    s.send(delta_response(
        S,
        "d2",
        vec![("default", "c2", cert("default", &second))],
        &[],
    ))
    .await;
    assert!(s.recv().await.error_detail.is_none());
    w.wait_for_updates(2).await;
    assert_eq!(
        w.store().id().unwrap().to_string(),
        "spiffe://cluster.local/ns/default/sa/b"
    );

    // A removal keeps the last good identity (gRFC A88 default).
    s.send(delta_response(S, "d3", vec![], &["default"])).await;
    assert!(s.recv().await.error_detail.is_none());
    assert_eq!(env.state(S, "default").state, ResourceState::DoesNotExist);
    assert_eq!(
        w.store().id().unwrap().to_string(),
        "spiffe://cluster.local/ns/default/sa/b"
    );
}

#[tokio::test(start_paused = true)]
async fn fail_on_data_errors_drops_the_secret_but_not_the_identity() {
    let ca = TestCa::new(TD).unwrap();
    let leaf = ca.leaf(APP).issue().unwrap();
    let env = start_with(Protocol::StateOfTheWorld, |c| {
        c.servers[0].features.fail_on_data_errors = true;
    });
    let (w, mut s) = serve_identity(&env, &ca, &leaf).await;
    let not_svid = ca.leaf(APP).as_ca().issue().unwrap();
    s.send(response(
        S,
        "2",
        "s2",
        vec![cert("default", &not_svid), roots("ROOTCA", &ca)],
    ))
    .await;
    assert!(expect(&mut s, S).await.error_detail.is_some());
    let st = env.state(S, "default");
    assert_eq!((st.state, st.cached), (ResourceState::Nacked, false));
    // The process keeps serving with its last good identity (B.4.3).
    assert_eq!(w.store().id().unwrap().to_string(), APP);
    assert_eq!(w.stats().updates(), 1);
}

// === TLS contexts referencing the identity ===

fn sds_ref(name: &str) -> tls::SdsSecretConfig {
    tls::SdsSecretConfig {
        name: name.into(),
        sds_config: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                core::AggregatedConfigSource {},
            )),
            resource_api_version: core::ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

#[allow(deprecated)] // match_subject_alt_names: what istiod still sends.
/// An EDS cluster whose upstream TLS references the SDS secrets `cert` and
/// `roots` and accepts the server `san`.
fn sds_cluster(name: &str, cert: &str, roots: &str, san: &str) -> Any {
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds_ref(cert)],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            match_subject_alt_names: vec![
                                mesh_xds::pb::envoy::r#type::matcher::v3::StringMatcher {
                                    match_pattern: Some(
                                        mesh_xds::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::Exact(
                                            san.into(),
                                        ),
                                    ),
                                    ..Default::default()
                                },
                            ],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds_ref(roots)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                    core::AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: String::new(),
        }),
        transport_socket: Some(core::TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(core::transport_socket::ConfigType::TypedConfig(Any {
                type_url: tls::UpstreamTlsContext::type_url(),
                value: ctx.encode_to_vec(),
            })),
        }),
        ..Default::default()
    };
    Any {
        type_url: C.as_str().into(),
        value: c.encode_to_vec(),
    }
}

fn decode_cluster(any: &Any, identities: &[SdsIdentity]) -> Result<mesh_xds::Decoded, String> {
    let ctx = mesh_xds::DecodeContext {
        sds_identities: identities.iter().cloned().collect(),
        ..Default::default()
    };
    mesh_xds::translate::decode(C, any, &ctx).map_err(|e| e.to_string())
}

#[test]
fn upstream_tls_referencing_the_identity_secrets_is_mesh_tls() {
    let server = "spiffe://cluster.local/ns/default/sa/server";
    let any = sds_cluster("c", "default", "ROOTCA", server);
    let d = decode_cluster(&any, &[SdsIdentity::istio(TD)]).unwrap();
    let mesh_xds::XdsResource::Cluster(c) = d.resource else {
        panic!("{d:?}")
    };
    let Some(mesh_core::model::UpstreamTls::IstioMutual(m)) = &c.cluster.tls else {
        panic!("not mesh TLS: {:?}", c.cluster.tls)
    };
    assert_eq!(&*m.subject_alt_names, [Arc::<str>::from(server)]);
}

#[test]
fn upstream_tls_referencing_other_secrets_is_rejected() {
    let server = "spiffe://cluster.local/ns/default/sa/server";
    let base = "c: transport_socket.typed_config.common_tls_context";
    // No identity watched: the reference cannot be resolved (A2.7).
    let e = decode_cluster(&sds_cluster("c", "default", "ROOTCA", server), &[]).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{base}.tls_certificate_sds_secret_configs[0].name: SDS secret \"default\" is not"
        )),
        "{e}"
    );
    // Another certificate name.
    let e = decode_cluster(
        &sds_cluster("c", "vault-cert", "ROOTCA", server),
        &[SdsIdentity::istio(TD)],
    )
    .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{base}.tls_certificate_sds_secret_configs[0].name: SDS secret \"vault-cert\" is not"
        )),
        "{e}"
    );
    // Roots of another identity than the certificate's.
    let e = decode_cluster(
        &sds_cluster("c", "default", "other-roots", server),
        &[
            SdsIdentity::istio(TD),
            SdsIdentity::new("other-cert", "other-roots", TD),
        ],
    )
    .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{base}.combined_validation_context.validation_context_sds_secret_config.name:"
        )),
        "{e}"
    );
}

// === end to end: a real mTLS handshake ===

/// A rustls server with its own identity that reports the leaf each client
/// presents.
async fn recording_server(
    ca: &TestCa,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<Vec<u8>>) {
    use tokio::io::AsyncWriteExt;
    let creds = ca
        .leaf("spiffe://cluster.local/ns/default/sa/server")
        .credentials()
        .unwrap();
    let store = Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()));
    let config = mesh_identity::tls::server_config(store, PeerMatcher::AnyTrusted).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default();
            let _ = tls.write_all(b"ok").await;
            let _ = tls.shutdown().await;
            if tx.send(leaf).await.is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

/// One mutual TLS handshake to `addr` with the client identity in `store`.
async fn handshake(addr: std::net::SocketAddr, store: &Arc<CredentialStore>) {
    use tokio::io::AsyncReadExt;
    let server: SpiffeId = "spiffe://cluster.local/ns/default/sa/server"
        .parse()
        .unwrap();
    let config =
        mesh_identity::tls::client_config(Arc::clone(store), PeerMatcher::exact(server)).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("server.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"ok");
}

#[tokio::test]
async fn a_real_handshake_presents_the_sds_certificate_and_the_rotated_one_next() {
    let ca = TestCa::new(TD).unwrap();
    let (addr, mut presented) = recording_server(&ca).await;
    let first = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::StateOfTheWorld);
    let (w, mut s) = serve_identity(&env, &ca, &first).await;

    handshake(addr, w.store()).await;
    let leaf1 = presented.recv().await.unwrap();
    assert_eq!(
        leaf1,
        first.chain[0].to_vec(),
        "the SDS certificate was presented"
    );

    let rotated = ca
        .leaf("spiffe://cluster.local/ns/default/sa/app")
        .issue()
        .unwrap();
    s.send(response(
        S,
        "2",
        "s2",
        vec![cert("default", &rotated), roots("ROOTCA", &ca)],
    ))
    .await;
    assert!(expect(&mut s, S).await.error_detail.is_none());
    w.wait_for_updates(2).await;

    handshake(addr, w.store()).await;
    let leaf2 = presented.recv().await.unwrap();
    assert_ne!(
        leaf2, leaf1,
        "the next handshake presents another certificate"
    );
    assert_eq!(
        leaf2,
        rotated.chain[0].to_vec(),
        "the rotated SDS certificate"
    );

    // A rejected update changes nothing on the wire either.
    let bad = ca.leaf(APP).as_ca().issue().unwrap();
    s.send(response(S, "3", "s3", vec![cert("default", &bad)]))
        .await;
    assert!(expect(&mut s, S).await.error_detail.is_some());
    handshake(addr, w.store()).await;
    assert_eq!(presented.recv().await.unwrap(), leaf2);
}

#[tokio::test(start_paused = true)]
async fn a_cluster_naming_the_watched_identity_is_acked_and_another_is_nacked() {
    use mesh_tests::xds_script::{endpoints, listener, route};
    let ca = TestCa::new(TD).unwrap();
    let leaf = ca.leaf(APP).issue().unwrap();
    let env = start(Protocol::StateOfTheWorld);
    let (w, mut s) = serve_identity(&env, &ca, &leaf).await;
    let _l = env.client.watch_listener("svc:80");
    let server = "spiffe://cluster.local/ns/default/sa/server";
    expect(&mut s, TypeUrl::Listener).await;
    s.send(response(
        TypeUrl::Listener,
        "1",
        "l1",
        vec![listener("svc:80", "rt")],
    ))
    .await;
    expect(&mut s, TypeUrl::Listener).await;
    expect(&mut s, TypeUrl::RouteConfiguration).await;
    s.send(response(
        TypeUrl::RouteConfiguration,
        "1",
        "r1",
        vec![route("rt", &["good", "bad"])],
    ))
    .await;
    expect(&mut s, TypeUrl::RouteConfiguration).await;
    let sub = expect(&mut s, C).await;
    assert_eq!(names(&sub), ["bad", "good"]);
    s.send(response(
        C,
        "1",
        "c1",
        vec![
            sds_cluster("good", "default", "ROOTCA", server),
            sds_cluster("bad", "vault", "ROOTCA", server),
        ],
    ))
    .await;
    let nack = expect(&mut s, C).await;
    let msg = &nack.error_detail.as_ref().expect("NACK").message;
    assert!(
        msg.starts_with(
            "bad: transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: SDS secret \"vault\" is not the certificate of an identity"
        ),
        "{msg}"
    );
    assert_eq!(env.state(C, "good").state, ResourceState::Acked);
    assert_eq!(env.state(C, "bad").state, ResourceState::Nacked);
    let eds = expect(&mut s, TypeUrl::ClusterLoadAssignment).await;
    assert_eq!(names(&eds), ["good"]);
    s.send(response(
        TypeUrl::ClusterLoadAssignment,
        "1",
        "e1",
        vec![endpoints("good", &["10.0.0.1:80"])],
    ))
    .await;
    expect(&mut s, TypeUrl::ClusterLoadAssignment).await;
    drop(w);
}

// === end to end through the mesh: xDS cascade + SDS identity + STRICT server ===

/// A STRICT mesh server presenting the server identity, answering with the
/// SPIFFE ID of the client that called.
async fn strict_backend(ca: &TestCa) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use axum::Extension;
    use mesh_tower::serve::{ConnectionSecurity, ServeConfig, TransportMode, serve};
    let creds = ca
        .leaf("spiffe://cluster.local/ns/default/sa/server")
        .credentials()
        .unwrap();
    let store = Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()));
    let config = mesh_identity::tls::server_config(store, PeerMatcher::AnyTrusted).unwrap();
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(
            |Extension(security): Extension<ConnectionSecurity>| async move {
                security.peer().map_or("none".to_owned(), |p| p.to_string())
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(
        listener,
        ServeConfig::new(TransportMode::Strict(Arc::new(config))),
        app,
    ));
    (addr, task)
}

async fn call(client: &mesh_tower::MeshClient) -> (u16, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = http::Request::get("/hello")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    match client.clone().oneshot(req).await {
        Ok(res) => {
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => (e.http_status().as_u16(), e.to_string()),
    }
}

#[tokio::test]
async fn a_mesh_client_calls_with_its_sds_identity_and_a_new_connection_uses_the_rotated_one() {
    use mesh_tests::xds_script::{endpoints, listener, route};
    let ca = TestCa::new(TD).unwrap();
    let (first_addr, _a) = strict_backend(&ca).await;
    let (second_addr, _b) = strict_backend(&ca).await;
    let server = ScriptedAds::start();
    let store = ConfigStore::new();
    let client = XdsClient::start_with(
        xds_script::config(1, Protocol::StateOfTheWorld),
        store.clone(),
        ClientOptions {
            connector: Some(xds_script::connector(vec![Arc::clone(&server)])),
            decoder: None,
        },
    );
    let identity = client.watch_identity(SdsIdentity::istio(TD));
    let mesh = mesh_tower::Mesh::builder(store)
        .with_xds(client.clone())
        .with_credentials(Arc::clone(identity.store()))
        .build();
    let svc = mesh.client_for("xds:///svc:80").unwrap();

    // The cascade; the cluster's TLS names the SDS identity (ISTIO_MUTUAL).
    let mut s = server.sotw_stream().await;
    // Each response only once its type is subscribed (A1.8).
    let mut seen: Vec<String> = Vec::new();
    async fn subscribed(s: &mut SotwStream, seen: &mut Vec<String>, t: TypeUrl) {
        while !seen.iter().any(|u| u == t.as_str()) {
            seen.push(s.recv().await.type_url);
        }
    }
    subscribed(&mut s, &mut seen, TypeUrl::Listener).await;
    s.send(response(
        TypeUrl::Listener,
        "1",
        "l1",
        vec![listener("svc:80", "rt")],
    ))
    .await;
    subscribed(&mut s, &mut seen, TypeUrl::RouteConfiguration).await;
    s.send(response(
        TypeUrl::RouteConfiguration,
        "1",
        "r1",
        vec![route("rt", &["backend"])],
    ))
    .await;
    subscribed(&mut s, &mut seen, C).await;
    s.send(response(
        C,
        "1",
        "c1",
        vec![sds_cluster(
            "backend",
            "default",
            "ROOTCA",
            "spiffe://cluster.local/ns/default/sa/server",
        )],
    ))
    .await;
    let first_ep = first_addr.to_string();
    subscribed(&mut s, &mut seen, TypeUrl::ClusterLoadAssignment).await;
    s.send(response(
        TypeUrl::ClusterLoadAssignment,
        "1",
        "e1",
        vec![endpoints("backend", &[first_ep.as_str()])],
    ))
    .await;
    // Wait until the config is published (the client ACKs after publishing).
    let published = || {
        mesh.store().load().listener("svc:80").is_some()
            && mesh
                .store()
                .load()
                .endpoints("backend")
                .is_some_and(|e| !e.endpoints().is_empty())
    };
    for _ in 0..500 {
        if published() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(published(), "the cascade was not published");

    subscribed(&mut s, &mut seen, S).await;
    // No identity yet: mTLS fails closed, never plaintext.
    let (status, body) = call(&svc).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("ISTIO_MUTUAL tls handshake with backend"),
        "a TLS failure (no roots, no certificate yet), not an xDS one: {body}"
    );

    let first = ca.leaf(APP).issue().unwrap();
    s.send(response(
        S,
        "1",
        "s1",
        vec![cert("default", &first), roots("ROOTCA", &ca)],
    ))
    .await;
    identity.wait_for_updates(1).await;
    assert_eq!(call(&svc).await, (200, APP.to_owned()));

    // Rotate the identity; established connections keep theirs (B.4.4), a
    // new connection (a new endpoint) presents the rotated certificate.
    let rotated_id = "spiffe://cluster.local/ns/default/sa/rotated";
    let rotated = ca.leaf(rotated_id).issue().unwrap();
    s.send(response(
        S,
        "2",
        "s2",
        vec![cert("default", &rotated), roots("ROOTCA", &ca)],
    ))
    .await;
    identity.wait_for_updates(2).await;
    let second_ep = second_addr.to_string();
    s.send(response(
        TypeUrl::ClusterLoadAssignment,
        "2",
        "e2",
        vec![endpoints("backend", &[second_ep.as_str()])],
    ))
    .await;
    let mut peer = String::new();
    for _ in 0..200 {
        let (status, body) = call(&svc).await;
        assert_eq!(status, 200, "{body}");
        peer = body;
        if peer == rotated_id {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        peer, rotated_id,
        "the new connection presents the rotated SDS certificate"
    );
}

// === over a real ADS stream: the crate's own server serves the secrets ===

async fn identity_from_a_real_ads_server(protocol: Protocol) {
    use mesh_xds::server::AdsServer;
    let ca = TestCa::new(TD).unwrap();
    let server = AdsServer::new(&ConfigStore::new());
    let first = ca.leaf(APP).issue().unwrap();
    let secret = |any: Any| tls::Secret::decode(any.value.as_slice()).unwrap();
    server.set_secrets([
        secret(cert("default", &first)),
        secret(roots("ROOTCA", &ca)),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let mut config = ClientConfig::new(addr.to_string(), "sds-e2e");
    config.servers[0].protocol = protocol;
    let client = XdsClient::start(config, ConfigStore::new());
    let w = client.watch_identity(SdsIdentity::istio(TD));
    let limit = Duration::from_secs(10);
    tokio::time::timeout(limit, w.wait_for_updates(1))
        .await
        .unwrap();
    assert_eq!(w.store().id().unwrap().to_string(), APP);

    // A rotation on the server reaches the store over the open stream.
    let rotated = "spiffe://cluster.local/ns/default/sa/rotated";
    let second = ca.leaf(rotated).issue().unwrap();
    server.set_secrets([
        secret(cert("default", &second)),
        secret(roots("ROOTCA", &ca)),
    ]);
    tokio::time::timeout(limit, w.wait_for_updates(2))
        .await
        .unwrap();
    assert_eq!(w.store().id().unwrap().to_string(), rotated);
    assert_eq!(server.nack_count(), 0);

    // An invalid secret is NACKed to the server; the identity stays.
    let not_svid = ca.leaf(rotated).as_ca().issue().unwrap();
    server.set_secrets([
        secret(cert("default", &not_svid)),
        secret(roots("ROOTCA", &ca)),
    ]);
    tokio::time::timeout(limit, async {
        while server.nack_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let nack = server.nacks().pop().unwrap();
    assert_eq!(nack.type_url, S.as_str());
    assert!(
        nack.message.starts_with(
            "default: tls_certificate.certificate_chain: the leaf is not a valid X.509-SVID"
        ),
        "{}",
        nack.message
    );
    assert_eq!(w.store().id().unwrap().to_string(), rotated);
    assert_eq!(w.stats().updates(), 2);

    client.shutdown().await;
    let _ = stop.send(());
    let _ = serving.await;
}

#[tokio::test]
async fn the_ads_server_serves_secrets_over_sotw() {
    identity_from_a_real_ads_server(Protocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn the_ads_server_serves_secrets_over_delta() {
    identity_from_a_real_ads_server(Protocol::Delta).await;
}
