//! `Listener` translation: istiod's proxyless API and inbound listeners
//! asserted field by field, and one test per rejection rule of A2.10 /
//! A2.7.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as faultpb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbacpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcmpb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlspb;
use envoy_types::pb::google::protobuf::{self, Any, BoolValue};
use mesh_core::model::security::{MtlsMode, PolicyScope};
use mesh_core::model::{
    AbortStatus, FaultAbort, FaultPolicy, Fraction, ListenerKind, RouteAction, ServerPolicy,
};
use prost::Message;

use super::*;
use crate::TypeUrl;
use crate::translate::route::tests::{any, config, istio_retry};

const FQDN_PORT: &str = "reviews.default.svc.cluster.local:9080";
pub(crate) const INBOUND: &str = "xds.istio.io/grpc/lds/inbound/0.0.0.0:8080";

pub(crate) fn filter(name: &str, type_url: &str, m: &impl Message) -> hcmpb::HttpFilter {
    hcmpb::HttpFilter {
        name: name.into(),
        config_type: Some(hcmpb::http_filter::ConfigType::TypedConfig(any(
            type_url, m,
        ))),
        ..Default::default()
    }
}

pub(crate) fn router() -> hcmpb::HttpFilter {
    filter(
        "envoy.filters.http.router",
        ROUTER_TYPE,
        &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
    )
}

fn fault_filter(f: &faultpb::HttpFault) -> hcmpb::HttpFilter {
    filter("envoy.filters.http.fault", route::FAULT_TYPE, f)
}

fn ads_rds(name: &str) -> hcmpb::http_connection_manager::RouteSpecifier {
    hcmpb::http_connection_manager::RouteSpecifier::Rds(hcmpb::Rds {
        config_source: Some(core::ConfigSource {
            config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                Default::default(),
            )),
            ..Default::default()
        }),
        route_config_name: name.into(),
    })
}

/// istiod's outbound listener (`buildOutboundListeners`): the fault and
/// router filters, RDS over ADS named like the listener.
fn istio_api_listener(hcm: hcmpb::HttpConnectionManager) -> lpb::Listener {
    lpb::Listener {
        name: FQDN_PORT.into(),
        address: Some(socket("10.96.0.7", 9080)),
        api_listener: Some(lpb::ApiListener {
            api_listener: Some(any(HCM_TYPE, &hcm)),
        }),
        ..Default::default()
    }
}

fn istio_hcm() -> hcmpb::HttpConnectionManager {
    hcmpb::HttpConnectionManager {
        http_filters: vec![fault_filter(&faultpb::HttpFault::default()), router()],
        route_specifier: Some(ads_rds(FQDN_PORT)),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: ip.into(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

pub(crate) fn ctx() -> DecodeContext {
    DecodeContext {
        certificate_providers: BTreeSet::from(["default".to_owned()]),
        ..Default::default()
    }
}

pub(crate) fn decode_l(l: &lpb::Listener) -> Result<Decoded, DecodeError> {
    super::super::decode(
        TypeUrl::Listener,
        &any(TypeUrl::Listener.as_str(), l),
        &ctx(),
    )
}

pub(crate) fn resource(l: &lpb::Listener) -> (ListenerResource, Vec<String>) {
    let d = decode_l(l).unwrap();
    assert_eq!(d.name, l.name);
    match d.resource {
        XdsResource::Listener(r) => (r, d.ignored),
        other => panic!("not a listener: {other:?}"),
    }
}

pub(crate) fn reason(l: &lpb::Listener) -> String {
    let e = decode_l(l).unwrap_err();
    assert_eq!(e.name.as_deref(), Some(l.name.as_str()), "{e}");
    e.reason
}

#[test]
fn istio_api_listener_with_rds_translates_field_by_field() {
    let (r, ignored) = resource(&istio_api_listener(istio_hcm()));
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(r.listener.name.as_str(), FQDN_PORT);
    assert_eq!(r.listener.port, 9080);
    assert_eq!(
        r.listener.kind,
        ListenerKind::Client {
            route_table: FQDN_PORT.into()
        }
    );
    assert!(!r.listener.claims_port(), "API listeners share ports");
    assert_eq!(r.inline_route, None);
    assert_eq!(r.rds_name(), Some(FQDN_PORT));
    assert!(r.security.is_empty());
    assert!(
        r.http.is_default(),
        "istiod's chain needs no re-translation"
    );
}

#[test]
fn api_listener_port_comes_from_the_name() {
    assert_eq!(port_from_name("svc.ns.svc.cluster.local:8080"), Some(8080));
    assert_eq!(port_from_name("[::1]:53"), Some(53));
    assert_eq!(port_from_name("svc"), None);
    assert_eq!(port_from_name("::1"), None);
    let mut l = istio_api_listener(istio_hcm());
    l.name = "reviews".into();
    assert_eq!(resource(&l).0.listener.port, 0);
}

#[test]
fn inline_route_config_gets_the_listener_defaults() {
    let mut hcm = istio_hcm();
    hcm.http_filters[0] = fault_filter(&faultpb::HttpFault {
        abort: Some(faultpb::FaultAbort {
            percentage: Some(envoy_types::pb::envoy::r#type::v3::FractionalPercent {
                numerator: 10,
                denominator: 0,
            }),
            error_type: Some(faultpb::fault_abort::ErrorType::HttpStatus(503)),
            ..Default::default()
        }),
        ..Default::default()
    });
    hcm.common_http_protocol_options = Some(core::HttpProtocolOptions {
        max_stream_duration: Some(protobuf::Duration {
            seconds: 3,
            nanos: 0,
        }),
        ..Default::default()
    });
    let mut rc = config(vec![rpb::Route {
        r#match: Some(rpb::RouteMatch {
            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(rpb::route::Action::Route(rpb::RouteAction {
            cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster("c".into())),
            retry_policy: Some(istio_retry()),
            ..Default::default()
        })),
        ..Default::default()
    }]);
    rc.name = "ignored-inline-name".into();
    hcm.route_specifier = Some(hcmpb::http_connection_manager::RouteSpecifier::RouteConfig(
        rc,
    ));
    let (r, _) = resource(&istio_api_listener(hcm));
    let expected_fault = FaultPolicy {
        delay: None,
        abort: Some(FaultAbort {
            status: AbortStatus::Http(503),
            fraction: Fraction::from_ppm(100_000),
        }),
    };
    assert_eq!(r.http.max_stream_duration, Some(Duration::from_secs(3)));
    assert_eq!(
        r.http.fault_filter.as_ref().map(|(n, f)| (&**n, *f)),
        Some(("envoy.filters.http.fault", expected_fault))
    );
    assert_eq!(r.rds_name(), None);
    let t = r.inline_route.expect("inline table");
    assert_eq!(t.name().as_str(), FQDN_PORT, "named after the listener");
    assert_eq!(
        r.listener.route_table().map(|n| n.as_str()),
        Some(FQDN_PORT)
    );
    let RouteAction::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
        panic!()
    };
    assert_eq!(f.timeout, Some(Duration::from_secs(3)));
    assert_eq!(f.fault, Some(expected_fault));
}

// --- A2.10: HCM and filter validation ---------------------------------------

#[test]
fn nack_empty_http_filters() {
    let mut hcm = istio_hcm();
    hcm.http_filters.clear();
    assert_eq!(
        reason(&istio_api_listener(hcm)),
        "api_listener.api_listener.http_filters: empty (the router filter is required)"
    );
}

#[test]
fn nack_router_not_last() {
    let mut hcm = istio_hcm();
    hcm.http_filters.reverse();
    assert_eq!(
        reason(&istio_api_listener(hcm)),
        "api_listener.api_listener.http_filters[0]: the terminal filter \"envoy.filters.http.router\" is not last"
    );
}

#[test]
fn nack_last_filter_not_terminal() {
    let mut hcm = istio_hcm();
    hcm.http_filters.pop();
    assert_eq!(
        reason(&istio_api_listener(hcm)),
        "api_listener.api_listener.http_filters[0]: the last filter \"envoy.filters.http.fault\" (type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault) is not a terminal filter"
    );
}

#[test]
fn nack_duplicate_filter_names() {
    let mut hcm = istio_hcm();
    hcm.http_filters
        .insert(0, fault_filter(&faultpb::HttpFault::default()));
    assert_eq!(
        reason(&istio_api_listener(hcm)),
        "api_listener.api_listener.http_filters[1].name: duplicate filter name \"envoy.filters.http.fault\""
    );
}

#[test]
fn nack_unknown_filter_type_unless_optional() {
    let mut hcm = istio_hcm();
    let unknown = hcmpb::HttpFilter {
        name: "acme".into(),
        config_type: Some(hcmpb::http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/acme.Filter".into(),
            value: Vec::new(),
        })),
        ..Default::default()
    };
    hcm.http_filters.insert(0, unknown.clone());
    assert_eq!(
        reason(&istio_api_listener(hcm.clone())),
        "api_listener.api_listener.http_filters[0].typed_config: unsupported filter type \"type.googleapis.com/acme.Filter\" (not optional)"
    );
    hcm.http_filters[0].is_optional = true;
    let (_, ignored) = resource(&istio_api_listener(hcm));
    assert_eq!(ignored, ["api_listener.api_listener.http_filters[0]"]);
}

#[test]
fn nack_rbac_on_a_client_listener() {
    let mut hcm = istio_hcm();
    hcm.http_filters.insert(
        0,
        filter(
            "envoy.filters.http.rbac",
            RBAC_TYPE,
            &rbacpb::Rbac::default(),
        ),
    );
    assert_eq!(
        reason(&istio_api_listener(hcm)),
        "api_listener.api_listener.http_filters[0]: the RBAC filter \"envoy.filters.http.rbac\" is a server-side filter and cannot run on a client listener"
    );
}

#[test]
fn nack_rds_config_source_other_than_ads_or_self() {
    let mut hcm = istio_hcm();
    hcm.route_specifier = Some(hcmpb::http_connection_manager::RouteSpecifier::Rds(
        hcmpb::Rds {
            config_source: Some(core::ConfigSource {
                config_source_specifier: Some(
                    core::config_source::ConfigSourceSpecifier::ApiConfigSource(Default::default()),
                ),
                ..Default::default()
            }),
            route_config_name: "r".into(),
        },
    ));
    assert_eq!(
        reason(&istio_api_listener(hcm)),
        "api_listener.api_listener.rds.config_source: only ads or self is supported"
    );
}

#[test]
fn nack_api_listener_that_is_not_an_hcm() {
    let mut l = istio_api_listener(istio_hcm());
    l.api_listener = Some(lpb::ApiListener {
        api_listener: Some(Any {
            type_url: "type.googleapis.com/acme.Proxy".into(),
            value: Vec::new(),
        }),
    });
    assert_eq!(
        reason(&l),
        "api_listener.api_listener: type \"type.googleapis.com/acme.Proxy\" is not an HttpConnectionManager"
    );
}

// --- server listeners --------------------------------------------------------

/// istiod's `buildCommonTLSContext` shape for proxyless servers: the
/// workload certificate and the roots from the bootstrap's `default`
/// certificate provider.
pub(crate) fn istio_downstream_tls() -> tlspb::DownstreamTlsContext {
    let instance = |cert: &str| tlspb::CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    tlspb::DownstreamTlsContext {
        common_tls_context: Some(tlspb::CommonTlsContext {
            tls_certificate_provider_instance: Some(instance("default")),
            validation_context_type: Some(
                tlspb::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tlspb::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tlspb::CertificateValidationContext {
                            ca_certificate_provider_instance: Some(instance("ROOTCA")),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// istiod's inbound listener (`buildInboundListeners`): one filter chain
/// without a match, the TLS context when mTLS is on, an HCM with the RBAC
/// filters then the router, and the inline non-forwarding route.
pub(crate) fn istio_inbound(
    tls: Option<tlspb::DownstreamTlsContext>,
    rbac: Vec<hcmpb::HttpFilter>,
) -> lpb::Listener {
    let mut filters = rbac;
    filters.push(router());
    let hcm = hcmpb::HttpConnectionManager {
        http_filters: filters,
        route_specifier: Some(hcmpb::http_connection_manager::RouteSpecifier::RouteConfig(
            rpb::RouteConfiguration {
                name: "inbound".into(),
                virtual_hosts: vec![rpb::VirtualHost {
                    domains: vec!["*".into()],
                    routes: vec![rpb::Route {
                        r#match: Some(rpb::RouteMatch {
                            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(rpb::route::Action::NonForwardingAction(Default::default())),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    lpb::Listener {
        name: INBOUND.into(),
        address: Some(socket("0.0.0.0", 8080)),
        filter_chains: vec![lpb::FilterChain {
            name: "inbound-mtls".into(),
            filters: vec![lpb::Filter {
                name: "inbound-hcmmtls".into(),
                config_type: Some(lpb::filter::ConfigType::TypedConfig(any(HCM_TYPE, &hcm))),
            }],
            transport_socket: tls.map(|t| core::TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
                    DOWNSTREAM_TLS_TYPE,
                    &t,
                ))),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn istio_inbound_mtls_listener_is_strict_on_its_port() {
    let (r, ignored) = resource(&istio_inbound(Some(istio_downstream_tls()), vec![]));
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(r.listener.name.as_str(), INBOUND);
    assert_eq!(r.listener.port, 8080);
    assert_eq!(
        r.listener.kind,
        ListenerKind::Server(ServerPolicy::default())
    );
    assert_eq!(r.rds_name(), None);
    assert_eq!(r.inline_route, None);
    let [pa] = r.security.peer_authentications.as_slice() else {
        panic!("one PeerAuthentication: {:?}", r.security)
    };
    assert_eq!(pa.scope, PolicyScope::new(INBOUND, "istio-system"));
    assert_eq!(pa.mode, MtlsMode::Strict);
    assert!(r.security.authorization_policies.is_empty());
}

#[test]
fn istio_inbound_plaintext_listener_contributes_no_policy() {
    let (r, _) = resource(&istio_inbound(None, vec![]));
    assert_eq!(r.listener.port, 8080);
    assert!(r.security.is_empty());
}

#[test]
fn nack_unknown_certificate_provider_instance() {
    let mut tls = istio_downstream_tls();
    if let Some(c) = &mut tls.common_tls_context {
        c.tls_certificate_provider_instance = Some(tlspb::CertificateProviderPluginInstance {
            instance_name: "vault".into(),
            certificate_name: String::new(),
        });
    }
    assert_eq!(
        reason(&istio_inbound(Some(tls), vec![])),
        "filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance.instance_name: certificate provider instance \"vault\" is not in the bootstrap's certificate_providers"
    );
}

#[test]
fn nack_unhonourable_security_fields() {
    let mut tls = istio_downstream_tls();
    if let Some(tlspb::common_tls_context::ValidationContextType::CombinedValidationContext(cv)) =
        tls.common_tls_context
            .as_mut()
            .and_then(|c| c.validation_context_type.as_mut())
        && let Some(v) = &mut cv.default_validation_context
    {
        v.verify_certificate_spki = vec!["abc".into()];
    }
    assert_eq!(
        reason(&istio_inbound(Some(tls), vec![])),
        "filter_chains[0].transport_socket.typed_config.common_tls_context.combined_validation_context.default_validation_context.verify_certificate_spki: not supported on a server"
    );
    let mut tls = istio_downstream_tls();
    tls.require_client_certificate = Some(BoolValue { value: false });
    assert_eq!(
        reason(&istio_inbound(Some(tls), vec![])),
        "filter_chains[0].transport_socket.typed_config.require_client_certificate: server TLS without client certificates is not supported (only mutual TLS)"
    );
}

#[test]
fn filter_chains_that_never_match_are_dropped_but_others_must_agree() {
    let mut l = istio_inbound(Some(istio_downstream_tls()), vec![]);
    let mut sni = l.filter_chains[0].clone();
    sni.filter_chain_match = Some(lpb::FilterChainMatch {
        server_names: vec!["x".into()],
        ..Default::default()
    });
    sni.transport_socket = None;
    l.filter_chains.push(sni);
    let (r, ignored) = resource(&l);
    assert_eq!(ignored, ["filter_chains[1]"]);
    assert_eq!(r.security.peer_authentications.len(), 1);

    let mut plain = l.filter_chains[0].clone();
    plain.transport_socket = None;
    plain.filter_chain_match = Some(lpb::FilterChainMatch {
        source_ports: vec![1234],
        ..Default::default()
    });
    l.filter_chains[1] = plain;
    assert_eq!(
        reason(&l),
        "filter_chains[1]: filter chains that enforce different security on one port are not supported"
    );
}

#[test]
fn nack_server_listener_without_address() {
    let mut l = istio_inbound(None, vec![]);
    l.address = None;
    assert_eq!(
        reason(&l),
        "address: required (a listener without api_listener is a server listener)"
    );
}
