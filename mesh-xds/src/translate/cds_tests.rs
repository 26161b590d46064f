//! Tests of the `Cluster`, `ClusterLoadAssignment` and `Secret`
//! translators, through [`super::decode`].
//!
//! Fixtures are built the way istiod's proxyless generator builds them
//! (`pilot/pkg/networking/grpcgen/cds.go`: EDS clusters over ADS named
//! `outbound|<port>|<subset>|<fqdn>`, `ISTIO_MUTUAL` through the `default`
//! certificate-provider instance with exact SPIFFE SAN matchers; EDS from
//! `pilot/pkg/xds/endpoints`: localities with weights, `HEALTHY` endpoints).
//! One test per NACK rule of rules A2.7, A2.8 and A2.9, each asserting the
//! field path and value in the reason.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self as xc, ClusterDiscoveryType, CustomClusterType, DiscoveryType, EdsClusterConfig, LbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as XdsCluster, LoadBalancingPolicy, OutlierDetection as XdsOd,
    circuit_breakers::Thresholds, load_balancing_policy::Policy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, DataSource, HealthStatus,
    Locality as XdsLocality, Metadata, SelfConfigSource, SocketAddress, TransportSocket,
    TypedExtensionConfig, address, config_source::ConfigSourceSpecifier, data_source::Specifier,
    socket_address::PortSpecifier, transport_socket::ConfigType,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;
use envoy_types::pb::envoy::extensions::load_balancing_policies::{
    client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin,
    least_request::v3::LeastRequest, pick_first::v3::PickFirst, ring_hash::v3::RingHash,
    wrr_locality::v3::WrrLocality,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    Secret as XdsSecret, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{
    self as pbp, Any, BoolValue, UInt32Value, UInt64Value, value::Kind,
};
use mesh_core::model::{
    ConnectionLimits, Endpoint, EndpointAddress, FailurePercentageEjection, HashKey, Health,
    IstioMutualTls, Labels, LbPolicy, Locality, OutlierDetection, Protocol, ServerVerification,
    SuccessRateEjection, UpstreamTls,
};
use prost::{Message, Name};

use crate::TypeUrl;
use crate::resource::{
    ClusterEndpoints, ClusterResource, DecodeContext, Decoded, SecretResource, XdsResource,
};

const REVIEWS: &str = "outbound|8080||reviews.default.svc.cluster.local";
const REVIEWS_V1: &str = "outbound|8080|v1|reviews.default.svc.cluster.local";
const SA_REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn ctx() -> DecodeContext {
    DecodeContext {
        certificate_providers: BTreeSet::from(["default".to_owned()]),
        ..Default::default()
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn secs(seconds: i64) -> Option<pbp::Duration> {
    Some(pbp::Duration { seconds, nanos: 0 })
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        ignore_case: false,
        match_pattern: Some(MatchPattern::Exact(s.into())),
    }
}

/// grpcgen's `edsCluster`: EDS over ADS, `service_name` = the cluster name.
fn eds_cluster(name: &str) -> XdsCluster {
    XdsCluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: name.into(),
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(
                    AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// grpcgen's `buildCommonTLSContext` (istiod 1.27+: the current and the
/// deprecated certificate-provider fields together).
#[allow(deprecated)]
fn istio_common_tls(sans: &[&str]) -> CommonTlsContext {
    let inst = |cert: &str| CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    let dep = |cert: &str| common_tls_context::CertificateProviderInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    CommonTlsContext {
        tls_certificate_provider_instance: Some(inst("default")),
        tls_certificate_certificate_provider_instance: Some(dep("default")),
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        ca_certificate_provider_instance: Some(inst("ROOTCA")),
                        match_subject_alt_names: sans.iter().map(|s| exact(s)).collect(),
                        ..Default::default()
                    }),
                    validation_context_certificate_provider_instance: Some(dep("ROOTCA")),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    }
}

fn with_tls(mut c: XdsCluster, common: CommonTlsContext) -> XdsCluster {
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&UpstreamTlsContext {
            common_tls_context: Some(common),
            ..Default::default()
        }))),
    });
    c
}

fn decode_cluster(c: &XdsCluster) -> Result<Decoded, String> {
    super::decode(TypeUrl::Cluster, &any(c), &ctx()).map_err(|e| e.to_string())
}

fn cluster(c: &XdsCluster) -> (ClusterResource, Vec<String>) {
    let d = decode_cluster(c).unwrap();
    assert_eq!(d.name, c.name);
    match d.resource {
        XdsResource::Cluster(r) => (*r, d.ignored),
        other => panic!("not a cluster: {other:?}"),
    }
}

fn nack(c: &XdsCluster) -> String {
    decode_cluster(c).unwrap_err()
}

// --- clusters: what istiod sends ------------------------------------------------

#[test]
fn istio_default_cluster_translates_field_by_field() {
    let (r, ignored) = cluster(&eds_cluster(REVIEWS));
    assert_eq!(r.endpoints, ClusterEndpoints::Eds(REVIEWS.into()));
    assert_eq!(r.eds_name(), Some(REVIEWS));
    let c = r.cluster;
    assert_eq!(c.name.as_str(), REVIEWS);
    assert_eq!(
        c.service.as_deref(),
        Some("reviews.default.svc.cluster.local")
    );
    assert_eq!(c.subset, None);
    // Envoy's / gRPC's default policy, not the model's Istio default.
    assert_eq!(c.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(c.protocol, Protocol::Http2);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(
        c.limits,
        ConnectionLimits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            ..ConnectionLimits::default()
        }
    );
    assert_eq!(c.outlier_detection, None);
    assert_eq!(c.slow_start, None);
    assert_eq!(c.tls, None);
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
fn istio_subset_cluster_with_istio_mutual_expects_the_spiffe_ids() {
    let c = with_tls(eds_cluster(REVIEWS_V1), istio_common_tls(&[SA_REVIEWS]));
    let (r, ignored) = cluster(&c);
    assert_eq!(
        r.cluster.service.as_deref(),
        Some("reviews.default.svc.cluster.local")
    );
    assert_eq!(r.cluster.subset.as_deref(), Some("v1"));
    assert_eq!(r.endpoints, ClusterEndpoints::Eds(REVIEWS_V1.into()));
    assert_eq!(
        r.cluster.tls,
        Some(UpstreamTls::IstioMutual(IstioMutualTls {
            sni: None,
            subject_alt_names: [SA_REVIEWS.into()].into(),
            service_subject_alt_names: [].into(),
            service_accounts: [].into(),
        }))
    );
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
#[allow(deprecated)]
fn istio_mutual_from_older_istiod_uses_the_deprecated_fields() {
    let mut common = istio_common_tls(&[]);
    common.tls_certificate_provider_instance = None;
    if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(cv)) =
        &mut common.validation_context_type
        && let Some(v) = &mut cv.default_validation_context
    {
        v.ca_certificate_provider_instance = None;
    }
    let (r, _) = cluster(&with_tls(eds_cluster(REVIEWS), common));
    let Some(UpstreamTls::IstioMutual(m)) = r.cluster.tls else {
        panic!("not ISTIO_MUTUAL: {:?}", r.cluster.tls);
    };
    // No SAN matcher: any workload of the trust domain (gRFC A29: no SAN
    // check beyond the chain).
    assert!(m.subject_alt_names.is_empty());
}

#[test]
fn istio_ring_hash_is_a_ring_keyed_by_the_route() {
    // corexds.ApplyRingHashLoadBalancer: RING_HASH with a minimum ring size.
    let mut c = eds_cluster(REVIEWS);
    c.lb_policy = xc::LbPolicy::RingHash as i32;
    c.lb_config = Some(LbConfig::RingHashLbConfig(xc::RingHashLbConfig {
        minimum_ring_size: Some(UInt64Value { value: 2048 }),
        ..Default::default()
    }));
    let (r, _) = cluster(&c);
    assert_eq!(
        r.cluster.lb_policy,
        LbPolicy::RingHash {
            key: HashKey::Header(super::ROUTE_HASH_POLICY_HEADER.parse().unwrap()),
            minimum_ring_size: 2048,
            maximum_ring_size: 8 * 1024 * 1024,
        }
    );
}

#[test]
fn the_first_supported_load_balancing_policy_wins() {
    let typed = |name: &str, a: Any| Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(a),
        }),
    };
    let mut c = eds_cluster(REVIEWS);
    c.load_balancing_policy = Some(LoadBalancingPolicy {
        policies: vec![
            typed("pf", any(&PickFirst::default())),
            typed(
                "wrr",
                any(&WrrLocality {
                    endpoint_picking_policy: Some(LoadBalancingPolicy {
                        policies: vec![
                            typed("cswrr", any(&ClientSideWeightedRoundRobin::default())),
                            typed(
                                "lr",
                                any(&LeastRequest {
                                    choice_count: u32v(3),
                                    ..Default::default()
                                }),
                            ),
                        ],
                    }),
                }),
            ),
        ],
    });
    let (r, _) = cluster(&c);
    assert_eq!(
        r.cluster.lb_policy,
        LbPolicy::LeastRequest { choice_count: 3 }
    );

    c.load_balancing_policy = Some(LoadBalancingPolicy {
        policies: vec![typed("pf", any(&PickFirst::default()))],
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: load_balancing_policy.policies: no supported policy among [type.googleapis.com/envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst]"
        )
    );
}

#[test]
fn circuit_breakers_outlier_detection_and_protocol_options_translate() {
    let mut c = eds_cluster(REVIEWS);
    c.connect_timeout = secs(2);
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![
            Thresholds {
                priority: 1,
                max_requests: u32v(1),
                ..Default::default()
            },
            Thresholds {
                max_connections: u32v(10),
                max_pending_requests: u32v(20),
                max_requests: u32v(30),
                max_retries: u32v(4),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    c.outlier_detection = Some(XdsOd {
        consecutive_5xx: u32v(7),
        enforcing_consecutive_gateway_failure: u32v(100),
        interval: secs(1),
        base_ejection_time: secs(400),
        max_ejection_percent: u32v(50),
        enforcing_success_rate: u32v(0),
        enforcing_failure_percentage: u32v(80),
        failure_percentage_threshold: u32v(60),
        ..Default::default()
    });
    c.common_lb_config = Some(xc::CommonLbConfig {
        healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 0.0 }),
        ..Default::default()
    });
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(
            envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                idle_timeout: secs(60),
                max_requests_per_connection: u32v(100),
                ..Default::default()
            },
        ),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Default::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    c.typed_extension_protocol_options = HashMap::from([(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        any(&options),
    )]);
    let (r, ignored) = cluster(&c);
    let c = r.cluster;
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.protocol, Protocol::Http1);
    assert_eq!(
        c.limits,
        ConnectionLimits {
            max_connections: 10,
            max_pending_requests: 20,
            max_requests: 30,
            max_retries: 4,
            max_requests_per_connection: Some(100),
            idle_timeout: Duration::from_secs(60),
            max_concurrent_streams: None,
        }
    );
    assert_eq!(
        c.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: Some(7),
            consecutive_gateway_errors: Some(5),
            consecutive_local_origin_failures: Some(5),
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(400),
            max_ejection_time: Duration::from_secs(400),
            max_ejection_percent: 50,
            min_health_percent: 0,
            success_rate: None,
            failure_percentage: Some(FailurePercentageEjection {
                threshold: 60,
                enforcement_percentage: 80,
                minimum_hosts: 5,
                request_volume: 50,
            }),
        })
    );
    assert_eq!(
        ignored,
        vec!["circuit_breakers.thresholds[0] (priority HIGH: the model has one priority)"]
    );
}

#[test]
fn outlier_detection_defaults_are_envoys_and_grpcs() {
    let mut c = eds_cluster(REVIEWS);
    c.outlier_detection = Some(XdsOd::default());
    let (r, _) = cluster(&c);
    assert_eq!(
        r.cluster.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            consecutive_local_origin_failures: Some(5),
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            min_health_percent: 50,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: None,
        })
    );
}

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn lb_endpoint(ip: &str, weight: Option<u32>) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(XdsEndpoint {
            address: socket(ip, 8080),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        load_balancing_weight: weight.and_then(u32v),
        ..Default::default()
    }
}

fn locality(
    zone: &str,
    weight: Option<u32>,
    priority: u32,
    eps: Vec<LbEndpoint>,
) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(XdsLocality {
            region: "us-east1".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        }),
        lb_endpoints: eps,
        load_balancing_weight: weight.and_then(u32v),
        priority,
        ..Default::default()
    }
}

#[test]
fn static_and_logical_dns_clusters_carry_their_endpoints() {
    let mut c = XdsCluster {
        name: "static".into(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "static".into(),
            endpoints: vec![locality(
                "a",
                None,
                0,
                vec![lb_endpoint("10.0.0.1", Some(3))],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    let (r, _) = cluster(&c);
    let ClusterEndpoints::Inline(eps) = &r.endpoints else {
        panic!("not inline: {:?}", r.endpoints);
    };
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].address,
        EndpointAddress::Socket("10.0.0.1:8080".parse().unwrap())
    );
    assert_eq!(eps[0].weight, 3);
    assert_eq!(r.cluster.service, None);

    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32));
    c.load_assignment.as_mut().unwrap().endpoints[0].lb_endpoints[0] =
        lb_endpoint("api.example.com", None);
    let (r, _) = cluster(&c);
    assert_eq!(
        r.endpoints,
        ClusterEndpoints::Inline(vec![Endpoint {
            address: EndpointAddress::Dns {
                host: "api.example.com".into(),
                port: 8080
            },
            weight: 1,
            health: Health::Healthy,
            labels: Labels::default(),
            locality: Locality {
                region: "us-east1".into(),
                zone: "a".into(),
                sub_zone: "".into()
            },
            priority: 0,
        }])
    );
}

#[test]
fn inline_pem_tls_is_simple_or_mutual() {
    let ds = |s: &str| {
        Some(DataSource {
            specifier: Some(Specifier::InlineString(s.into())),
            watched_directory: None,
        })
    };
    let mut common = CommonTlsContext {
        validation_context_type: Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: ds(CERT),
                    match_subject_alt_names: vec![exact("api.example.com")],
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    let (r, _) = cluster(&with_tls(eds_cluster("api"), common.clone()));
    let Some(UpstreamTls::Simple(o)) = &r.cluster.tls else {
        panic!("not SIMPLE: {:?}", r.cluster.tls);
    };
    let ServerVerification::Verify {
        ca_certificates,
        subject_alt_names,
        ca_crl,
    } = &o.verify
    else {
        panic!("no verification");
    };
    assert_eq!(ca_certificates.pem(), CERT.as_bytes());
    assert_eq!(
        ca_certificates.path(),
        "xds:api:transport_socket.typed_config.common_tls_context.validation_context.trusted_ca"
    );
    assert_eq!(&**subject_alt_names, &["api.example.com".into()]);
    assert_eq!(*ca_crl, None);

    common.tls_certificates = vec![TlsCertificate {
        certificate_chain: ds(CERT),
        private_key: ds(KEY),
        ..Default::default()
    }];
    let (r, _) = cluster(&with_tls(eds_cluster("api"), common));
    let Some(UpstreamTls::Mutual {
        certificate,
        private_key,
        ..
    }) = &r.cluster.tls
    else {
        panic!("not MUTUAL: {:?}", r.cluster.tls);
    };
    assert_eq!(certificate.pem(), CERT.as_bytes());
    assert_eq!(private_key.pem(), KEY.as_bytes());
}

// --- rules A2.7: security fields that cannot be honoured are NACKed --------------

const VC: &str = "transport_socket.typed_config.common_tls_context.combined_validation_context.default_validation_context";

fn with_validation(f: impl FnOnce(&mut CertificateValidationContext)) -> XdsCluster {
    let mut common = istio_common_tls(&[SA_REVIEWS]);
    if let Some(common_tls_context::ValidationContextType::CombinedValidationContext(cv)) =
        &mut common.validation_context_type
        && let Some(v) = &mut cv.default_validation_context
    {
        f(v);
    }
    with_tls(eds_cluster(REVIEWS), common)
}

#[test]
fn a2_7_verify_certificate_spki_is_nacked() {
    let c = with_validation(|v| v.verify_certificate_spki = vec!["abc".into()]);
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: {VC}.verify_certificate_spki: cannot be honoured (rules A2.7)")
    );
}

#[test]
fn a2_7_verify_certificate_hash_is_nacked() {
    let c = with_validation(|v| v.verify_certificate_hash = vec!["00ff".into()]);
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: {VC}.verify_certificate_hash: cannot be honoured (rules A2.7)")
    );
}

#[test]
fn a2_7_crl_is_nacked_with_provider_roots() {
    let c = with_validation(|v| {
        v.crl = Some(DataSource {
            specifier: Some(Specifier::InlineString("crl".into())),
            watched_directory: None,
        })
    });
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: {VC}.crl: not supported with certificate-provider roots (rules A2.7)")
    );
}

#[test]
fn a2_7_custom_validator_config_is_nacked() {
    let c = with_validation(|v| {
        v.custom_validator_config = Some(TypedExtensionConfig {
            name: "envoy.tls.cert_validator.spiffe".into(),
            typed_config: None,
        })
    });
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: {VC}.custom_validator_config: cannot be honoured (rules A2.7)")
    );
}

#[test]
fn a2_7_require_signed_certificate_timestamp_is_nacked() {
    let c = with_validation(|v| {
        v.require_signed_certificate_timestamp = Some(BoolValue { value: true })
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: {VC}.require_signed_certificate_timestamp: cannot be honoured (rules A2.7)"
        )
    );
}

#[test]
fn a2_7_transport_socket_matches_are_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.transport_socket_matches = vec![xc::TransportSocketMatch {
        name: "tlsMode-istio".into(),
        ..Default::default()
    }];
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: transport_socket_matches: per-endpoint transport sockets cannot be honoured (rules A2.7)"
        )
    );
}

#[test]
fn a2_7_an_unknown_certificate_provider_instance_is_nacked() {
    let c = with_tls(eds_cluster(REVIEWS), istio_common_tls(&[]));
    let err = super::decode(TypeUrl::Cluster, &any(&c), &DecodeContext::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: {VC}.ca_certificate_provider_instance: unknown certificate provider instance \"default\" (the bootstrap has []; gRFC A29)"
        )
    );
}

#[test]
fn a2_7_san_matchers_other_than_exact_are_nacked() {
    let c = with_validation(|v| {
        v.match_subject_alt_names = vec![StringMatcher {
            ignore_case: false,
            match_pattern: Some(MatchPattern::Prefix("spiffe://cluster.local/".into())),
        }]
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: {VC}.match_subject_alt_names[0].prefix: \"spiffe://cluster.local/\": only exact SAN matchers can be honoured (the model compares SANs by equality)"
        )
    );
    // A DNS name cannot be checked against a SPIFFE identity.
    let c = with_validation(|v| v.match_subject_alt_names = vec![exact("reviews.default")]);
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: {VC}.match_subject_alt_names[0].exact: \"reviews.default\": mesh TLS verifies the server's SPIFFE ID (a URI SAN spiffe://…); other SANs cannot be checked"
        )
    );
}

#[test]
fn a2_7_tls_params_are_nacked() {
    let mut common = istio_common_tls(&[]);
    common.tls_params = Some(TlsParameters {
        cipher_suites: vec!["ECDHE-RSA-AES128-GCM-SHA256".into()],
        ..Default::default()
    });
    let c = with_tls(eds_cluster(REVIEWS), common);
    assert!(
        nack(&c).starts_with(&format!(
            "{REVIEWS}: transport_socket.typed_config.common_tls_context.tls_params: not supported"
        )),
        "{}",
        nack(&c)
    );
}

// --- rules A2.9: CDS validation ---------------------------------------------------

#[test]
fn a2_9_an_unsupported_lb_policy_is_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.lb_policy = xc::LbPolicy::ClusterProvided as i32;
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: lb_policy: CLUSTER_PROVIDED is not supported (gRFC A27)")
    );
    c.lb_policy = xc::LbPolicy::LoadBalancingPolicyConfig as i32;
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: lb_policy: LOAD_BALANCING_POLICY_CONFIG without load_balancing_policy")
    );
}

#[test]
fn a2_9_a_ring_hash_function_other_than_xx_hash_is_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.lb_policy = xc::LbPolicy::RingHash as i32;
    c.lb_config = Some(LbConfig::RingHashLbConfig(xc::RingHashLbConfig {
        hash_function: xc::ring_hash_lb_config::HashFunction::MurmurHash2 as i32,
        ..Default::default()
    }));
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: lb_config.ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported: only XX_HASH (gRFC A42)"
        )
    );
    // The typed extension too, and ring sizes.
    c.lb_config = None;
    c.load_balancing_policy = Some(LoadBalancingPolicy {
        policies: vec![Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: "rh".into(),
                typed_config: Some(any(&RingHash {
                    minimum_ring_size: Some(UInt64Value { value: 10 }),
                    maximum_ring_size: Some(UInt64Value { value: 5 }),
                    ..Default::default()
                })),
            }),
        }],
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: load_balancing_policy.policies[0].typed_extension_config.typed_config.minimum_ring_size: 10 is above maximum_ring_size 5 (gRFC A42)"
        )
    );
}

#[test]
fn a2_9_least_request_choice_count_below_2_is_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.lb_policy = xc::LbPolicy::LeastRequest as i32;
    c.lb_config = Some(LbConfig::LeastRequestLbConfig(xc::LeastRequestLbConfig {
        choice_count: u32v(1),
        ..Default::default()
    }));
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: lb_config.least_request_lb_config.choice_count: 1 is below 2 (gRFC A48)"
        )
    );
}

#[test]
fn a2_9_an_eds_config_source_other_than_ads_or_self_is_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.eds_cluster_config.as_mut().unwrap().eds_config = Some(ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(Default::default())),
        ..Default::default()
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: eds_cluster_config.eds_config: api_config_source: only ads or self are supported (rules A2.9)"
        )
    );
    // `self` is fine.
    c.eds_cluster_config.as_mut().unwrap().eds_config = Some(ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Self_(SelfConfigSource::default())),
        ..Default::default()
    });
    assert!(decode_cluster(&c).is_ok());
}

#[test]
fn a2_9_an_aggregate_cluster_with_empty_clusters_is_nacked() {
    let mut c = eds_cluster("agg");
    c.cluster_discovery_type = Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
        name: "envoy.clusters.aggregate".into(),
        typed_config: Some(any(&AggregateConfig { clusters: vec![] })),
    }));
    assert_eq!(
        nack(&c),
        "agg: cluster_type.typed_config.clusters: empty: an aggregate cluster needs at least one cluster (rules A2.9)"
    );
    // A non-empty one is still unsupported by the model, and says so.
    c.cluster_discovery_type = Some(ClusterDiscoveryType::ClusterType(CustomClusterType {
        name: "envoy.clusters.aggregate".into(),
        typed_config: Some(any(&AggregateConfig {
            clusters: vec!["a".into(), "b".into()],
        })),
    }));
    assert_eq!(
        nack(&c),
        "agg: cluster_type: aggregate cluster of [a, b] is not supported: the model has no cluster of clusters (gRFC A37)"
    );
}

#[test]
fn a2_9_logical_dns_without_exactly_one_endpoint_is_nacked() {
    let c = XdsCluster {
        name: "dns".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::LogicalDns as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "dns".into(),
            endpoints: vec![locality(
                "a",
                None,
                0,
                vec![
                    lb_endpoint("a.example.com", None),
                    lb_endpoint("b.example.com", None),
                ],
            )],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        nack(&c),
        "dns: load_assignment.endpoints: a LOGICAL_DNS cluster needs exactly one locality with one endpoint, not 1 localities with [2] endpoints (rules A2.9)"
    );
}

#[test]
fn a2_9_outlier_detection_percentages_above_100_are_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.outlier_detection = Some(XdsOd {
        max_ejection_percent: u32v(101),
        ..Default::default()
    });
    assert_eq!(
        nack(&c),
        format!("{REVIEWS}: outlier_detection.max_ejection_percent: 101 is above 100 percent")
    );
    c.outlier_detection = Some(XdsOd {
        failure_percentage_threshold: u32v(150),
        ..Default::default()
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: outlier_detection.failure_percentage_threshold: 150 is above 100 percent"
        )
    );
}

#[test]
fn a2_9_outlier_detection_negative_durations_are_nacked() {
    let mut c = eds_cluster(REVIEWS);
    c.outlier_detection = Some(XdsOd {
        base_ejection_time: secs(-1),
        ..Default::default()
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: outlier_detection.base_ejection_time: invalid duration -1s 0ns: must be non-negative with nanos below 1e9"
        )
    );
}

// --- endpoints -------------------------------------------------------------------

fn decode_cla(cla: &ClusterLoadAssignment) -> Result<Decoded, String> {
    super::decode(TypeUrl::ClusterLoadAssignment, &any(cla), &ctx()).map_err(|e| e.to_string())
}

fn eps(cla: &ClusterLoadAssignment) -> (Vec<Endpoint>, Vec<String>) {
    let d = decode_cla(cla).unwrap();
    match d.resource {
        XdsResource::Endpoints(e) => (e.endpoints, d.ignored),
        other => panic!("not endpoints: {other:?}"),
    }
}

fn cla(localities: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: REVIEWS.into(),
        endpoints: localities,
        ..Default::default()
    }
}

#[test]
fn istio_eds_translates_localities_priorities_health_and_labels() {
    // istiod: locality weight = the sum of its endpoints' weights.
    let mut v1 = lb_endpoint("10.1.0.1", Some(1));
    v1.metadata = Some(Metadata {
        filter_metadata: HashMap::from([(
            "envoy.lb".to_owned(),
            pbp::Struct {
                fields: HashMap::from([(
                    "version".to_owned(),
                    pbp::Value {
                        kind: Some(Kind::StringValue("v1".into())),
                    },
                )]),
            },
        )]),
        ..Default::default()
    });
    let mut draining = lb_endpoint("10.1.0.2", Some(1));
    draining.health_status = HealthStatus::Draining as i32;
    let mut degraded = lb_endpoint("10.2.0.1", None);
    degraded.health_status = HealthStatus::Degraded as i32;
    let (e, ignored) = eps(&cla(vec![
        locality("a", Some(2), 0, vec![v1, draining]),
        locality("b", Some(1), 1, vec![degraded]),
    ]));
    let addr = |s: &str| EndpointAddress::Socket(s.parse::<SocketAddr>().unwrap());
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].address, addr("10.1.0.1:8080"));
    assert_eq!(e[0].labels, Labels::new([("version", "v1")]));
    assert_eq!(e[0].health, Health::Healthy);
    assert_eq!(e[0].locality.zone.as_ref(), "a");
    assert_eq!(e[0].priority, 0);
    assert_eq!(e[0].weight, 1);
    assert_eq!(e[1].health, Health::Draining);
    assert_eq!(e[2].health, Health::Unhealthy);
    assert_eq!(e[2].priority, 1);
    assert_eq!(e[2].locality.region.as_ref(), "us-east1");
    assert!(ignored.is_empty(), "{ignored:?}");
}

#[test]
fn locality_weights_are_folded_into_endpoint_weights() {
    // Locality a (weight 3) has two endpoints of weight 1 and 2; locality b
    // (weight 1) one of weight 5. Shares: a: 3/4 × (1/3, 2/3), b: 1/4.
    let (e, _) = eps(&cla(vec![
        locality(
            "a",
            Some(3),
            0,
            vec![
                lb_endpoint("10.0.0.1", Some(1)),
                lb_endpoint("10.0.0.2", Some(2)),
            ],
        ),
        locality("b", Some(1), 0, vec![lb_endpoint("10.0.0.3", Some(5))]),
    ]));
    let w: Vec<u32> = e.iter().map(|e| e.weight).collect();
    assert_eq!(w, vec![1, 2, 1]);
    // Without locality weights, endpoint weights are kept (Envoy).
    let (e, _) = eps(&cla(vec![
        locality(
            "a",
            None,
            0,
            vec![
                lb_endpoint("10.0.0.1", Some(1)),
                lb_endpoint("10.0.0.2", Some(2)),
            ],
        ),
        locality("b", None, 0, vec![lb_endpoint("10.0.0.3", Some(5))]),
    ]));
    let w: Vec<u32> = e.iter().map(|e| e.weight).collect();
    assert_eq!(w, vec![1, 2, 5]);
    // A locality without weight among weighted ones is skipped (gRPC).
    let (e, ignored) = eps(&cla(vec![
        locality("a", Some(1), 0, vec![lb_endpoint("10.0.0.1", None)]),
        locality("b", None, 0, vec![lb_endpoint("10.0.0.3", None)]),
    ]));
    assert_eq!(e.len(), 1);
    assert_eq!(
        ignored,
        vec![
            "endpoints[1] (no load_balancing_weight while other localities have one: skipped, gRFC A27)"
        ]
    );
}

#[test]
fn drop_overloads_are_recorded_as_ignored() {
    let mut c = cla(vec![locality(
        "a",
        None,
        0,
        vec![lb_endpoint("10.0.0.1", None)],
    )]);
    c.policy = Some(envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::Policy {
        drop_overloads: vec![
            envoy_types::pb::envoy::config::endpoint::v3::cluster_load_assignment::policy::DropOverload {
                category: "throttle".into(),
                drop_percentage: None,
            },
        ],
        ..Default::default()
    });
    let (e, ignored) = eps(&c);
    assert_eq!(e.len(), 1);
    assert_eq!(
        ignored,
        vec!["policy.drop_overloads[0] (category \"throttle\": drops are not applied)"]
    );
}

#[test]
fn a2_8_an_explicitly_zero_endpoint_weight_is_nacked() {
    let err = decode_cla(&cla(vec![locality(
        "a",
        None,
        0,
        vec![lb_endpoint("10.0.0.1", Some(0))],
    )]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints[0].lb_endpoints[0].load_balancing_weight: 0: an explicit endpoint weight must be at least 1 (rules A2.8)"
        )
    );
}

#[test]
fn a2_8_endpoint_weights_above_u32_max_are_nacked() {
    let err = decode_cla(&cla(vec![locality(
        "a",
        None,
        0,
        vec![
            lb_endpoint("10.0.0.1", Some(u32::MAX)),
            lb_endpoint("10.0.0.2", Some(1)),
        ],
    )]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints[0].lb_endpoints: endpoint weights sum to more than 4294967295 (rules A2.8)"
        )
    );
}

#[test]
fn a2_8_a_duplicate_endpoint_address_is_nacked() {
    let err = decode_cla(&cla(vec![
        locality("a", None, 0, vec![lb_endpoint("10.0.0.1", None)]),
        locality("b", None, 0, vec![lb_endpoint("10.0.0.1", None)]),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints[1].lb_endpoints[0].endpoint.address: duplicate address 10.0.0.1:8080 (also endpoints[0].lb_endpoints[0]; rules A2.8)"
        )
    );
}

#[test]
fn a2_8_a_locality_without_id_is_nacked() {
    let mut l = locality("a", None, 0, vec![lb_endpoint("10.0.0.1", None)]);
    l.locality = None;
    let err = decode_cla(&cla(vec![l])).unwrap_err();
    assert_eq!(
        err,
        format!("{REVIEWS}: endpoints[0].locality: unset: a locality needs an ID (rules A2.8)")
    );
}

#[test]
fn a2_8_locality_weights_above_u32_max_are_nacked() {
    let err = decode_cla(&cla(vec![
        locality("a", Some(u32::MAX), 0, vec![lb_endpoint("10.0.0.1", None)]),
        locality("b", Some(1), 0, vec![lb_endpoint("10.0.0.2", None)]),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints: locality weights of priority 0 sum to more than 4294967295 (rules A2.8)"
        )
    );
    // An explicit zero locality weight too.
    let err = decode_cla(&cla(vec![locality(
        "a",
        Some(0),
        0,
        vec![lb_endpoint("10.0.0.1", None)],
    )]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints[0].load_balancing_weight: 0: an explicit locality weight must be at least 1"
        )
    );
}

#[test]
fn a2_8_a_duplicate_locality_in_one_priority_is_nacked() {
    let err = decode_cla(&cla(vec![
        locality("a", Some(1), 0, vec![lb_endpoint("10.0.0.1", None)]),
        locality("a", Some(1), 0, vec![lb_endpoint("10.0.0.2", None)]),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints[1].locality: duplicate locality us-east1/a/ in priority 0 (also endpoints[0]; rules A2.8)"
        )
    );
    // The same locality in two priorities is fine.
    assert!(
        decode_cla(&cla(vec![
            locality("a", Some(1), 0, vec![lb_endpoint("10.0.0.1", None)]),
            locality("a", Some(1), 1, vec![lb_endpoint("10.0.0.2", None)]),
        ]))
        .is_ok()
    );
}

#[test]
fn a2_8_non_contiguous_priorities_are_nacked() {
    let err = decode_cla(&cla(vec![
        locality("a", Some(1), 0, vec![lb_endpoint("10.0.0.1", None)]),
        locality("b", Some(1), 2, vec![lb_endpoint("10.0.0.2", None)]),
    ]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints: priorities are not contiguous: 1 is missing below 2 (rules A2.8)"
        )
    );
}

#[test]
fn eds_addresses_must_be_ips() {
    let err = decode_cla(&cla(vec![locality(
        "a",
        None,
        0,
        vec![lb_endpoint("reviews", None)],
    )]))
    .unwrap_err();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: \"reviews\" is not an IP address"
        )
    );
}

// --- secrets ---------------------------------------------------------------------

fn decode_secret(s: &XdsSecret) -> Result<SecretResource, String> {
    let d = super::decode(TypeUrl::Secret, &any(s), &ctx()).map_err(|e| e.to_string())?;
    match d.resource {
        XdsResource::Secret(s) => Ok(s),
        other => panic!("not a secret: {other:?}"),
    }
}

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(s.as_bytes().to_vec())),
        watched_directory: None,
    })
}

#[test]
fn secrets_carry_inline_pem() {
    let s = XdsSecret {
        name: "default".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(CERT),
            private_key: inline(KEY),
            ..Default::default()
        })),
    };
    assert_eq!(
        decode_secret(&s).unwrap(),
        SecretResource::TlsCertificate {
            certificate_chain: CERT.into(),
            private_key: KEY.into(),
        }
    );
    let s = XdsSecret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(CERT),
                ..Default::default()
            },
        )),
    };
    assert_eq!(
        decode_secret(&s).unwrap(),
        SecretResource::ValidationContext {
            trusted_ca: CERT.into()
        }
    );
}

#[test]
fn secrets_from_files_or_with_checks_are_nacked() {
    let s = XdsSecret {
        name: "default".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(CERT),
            private_key: Some(DataSource {
                specifier: Some(Specifier::Filename("/etc/certs/key.pem".into())),
                watched_directory: None,
            }),
            ..Default::default()
        })),
    };
    assert_eq!(
        decode_secret(&s).unwrap_err(),
        "default: tls_certificate.private_key.filename: \"/etc/certs/key.pem\": file data sources are not read from xDS (use a file_watcher certificate provider in the bootstrap)"
    );
    let s = XdsSecret {
        name: "ROOTCA".into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(CERT),
                verify_certificate_spki: vec!["abc".into()],
                ..Default::default()
            },
        )),
    };
    assert_eq!(
        decode_secret(&s).unwrap_err(),
        "ROOTCA: validation_context.verify_certificate_spki: cannot be honoured: the identity store takes the roots only (rules A2.7)"
    );
    let s = XdsSecret {
        name: "bad".into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline("not pem"),
            private_key: inline(KEY),
            ..Default::default()
        })),
    };
    assert_eq!(
        decode_secret(&s).unwrap_err(),
        "bad: tls_certificate.certificate_chain: no PEM block ending in \"CERTIFICATE\""
    );
}

// --- rules A2.1: unsupported fields are ignored and recorded ----------------------

#[test]
fn a2_1_fields_without_model_support_are_recorded_as_ignored() {
    let mut c = eds_cluster(REVIEWS);
    c.health_checks = vec![Default::default()];
    c.lb_subset_config = Some(Default::default());
    c.common_lb_config = Some(xc::CommonLbConfig {
        update_merge_window: secs(1),
        ..Default::default()
    });
    let (r, ignored) = cluster(&c);
    assert_eq!(r.cluster.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(
        ignored,
        vec![
            "common_lb_config.update_merge_window",
            "health_checks",
            "lb_subset_config",
        ]
    );
}

#[test]
fn a2_7_a_certificate_from_another_instance_than_the_roots_is_nacked() {
    let mut common = istio_common_tls(&[]);
    common.tls_certificate_provider_instance = Some(CertificateProviderPluginInstance {
        instance_name: "other".into(),
        certificate_name: "default".into(),
    });
    #[allow(deprecated)]
    {
        common.tls_certificate_certificate_provider_instance = None;
    }
    let c = with_tls(eds_cluster(REVIEWS), common);
    let ctx = DecodeContext {
        certificate_providers: BTreeSet::from(["default".to_owned(), "other".to_owned()]),
        ..Default::default()
    };
    let err = super::decode(TypeUrl::Cluster, &any(&c), &ctx)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{REVIEWS}: transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance: instance \"other\" differs from the roots' instance \"default\": the process has one workload identity"
        )
    );
}

#[test]
fn a2_7_case_insensitive_and_empty_san_matchers_are_nacked() {
    let c = with_validation(|v| {
        v.match_subject_alt_names = vec![StringMatcher {
            ignore_case: true,
            match_pattern: Some(MatchPattern::Exact(SA_REVIEWS.into())),
        }]
    });
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: {VC}.match_subject_alt_names[0].ignore_case: case-insensitive SAN matching cannot be honoured (SANs are compared exactly)"
        )
    );
    let c = with_validation(|v| v.match_subject_alt_names = vec![exact("")]);
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: {VC}.match_subject_alt_names[0].exact: empty: an empty SAN never matches (gRFC A29)"
        )
    );
}

#[test]
fn a2_7_sds_secret_references_are_nacked() {
    let mut common = istio_common_tls(&[]);
    common.tls_certificate_sds_secret_configs = vec![Default::default()];
    let c = with_tls(eds_cluster(REVIEWS), common);
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name: empty"
        )
    );
    // A named secret over ADS cannot be combined with the provider's
    // certificate (SDS references in full: tests/tests/xds_sds.rs).
    let mut common = istio_common_tls(&[]);
    common.tls_certificate_sds_secret_configs = vec![
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig {
            name: "default".into(),
            sds_config: Some(envoy_types::pb::envoy::config::core::v3::ConfigSource {
                config_source_specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
        },
    ];
    let c = with_tls(eds_cluster(REVIEWS), common);
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0]: set together with transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance: the process has one workload identity"
        )
    );
}

#[test]
fn a_tls_context_without_roots_is_nacked() {
    let c = with_tls(eds_cluster(REVIEWS), CommonTlsContext::default());
    assert_eq!(
        nack(&c),
        format!(
            "{REVIEWS}: transport_socket.typed_config.common_tls_context: no root certificates: set a validation context with ca_certificate_provider_instance or trusted_ca (gRFC A29)"
        )
    );
}
