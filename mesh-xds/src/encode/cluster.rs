//! Clusters → `Cluster`.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster as PbCluster, OutlierDetection as PbOutlier, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions,
    RuntimeDouble, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateProviderPluginInstance, CertificateValidationContext, CommonTlsContext,
    TlsCertificate, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt64Value;
use mesh_core::model::{
    Cluster, EndpointSet, LbPolicy, OutlierDetection, PemFile, Protocol, ServerVerification,
    SlowStart, TlsOrigination, UpstreamTls,
};

use super::listener::ads;
use super::{any, duration, string, u32v};

/// The certificate-provider instance istiod names in the TLS contexts it
/// sends proxyless gRPC (`default`, with certificate names `default` for
/// the workload certificate and `ROOTCA` for the trust bundle); gRPC's
/// bootstrap written by Istio's agent defines it (gRFC A29).
const ISTIO_PROVIDER: &str = "default";

/// A cluster as an Envoy `Cluster`: an EDS cluster whose endpoints come
/// over ADS under the cluster's own name, or — when `inline` endpoints are
/// given (host names, which EDS does not accept) — a `LOGICAL_DNS`
/// cluster carrying them in its `load_assignment`.
pub fn cluster(c: &Cluster, inline: Option<&EndpointSet>) -> PbCluster {
    let mut out = PbCluster {
        name: c.name.as_str().to_owned(),
        connect_timeout: Some(duration(c.connect_timeout)),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                // Envoy's defaults are 1024 each; the model's "unset" is
                // unlimited, so every threshold is explicit.
                max_connections: Some(u32v(c.limits.max_connections)),
                max_pending_requests: Some(u32v(c.limits.max_pending_requests)),
                max_requests: Some(u32v(c.limits.max_requests)),
                max_retries: Some(u32v(c.limits.max_retries)),
                ..circuit_breakers::Thresholds::default()
            }],
            ..CircuitBreakers::default()
        }),
        outlier_detection: c.outlier_detection.as_ref().map(outlier),
        transport_socket: c.tls.as_ref().map(tls),
        typed_extension_protocol_options: HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            any(&protocol_options(c)),
        )]),
        ..PbCluster::default()
    };
    match inline {
        Some(endpoints) => {
            out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::LogicalDns as i32,
            ));
            out.load_assignment = Some(super::cluster_load_assignment(endpoints));
        }
        None => {
            out.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            out.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: String::new(),
            });
        }
    }
    lb(&mut out, c);
    if let Some(od) = &c.outlier_detection
        && od.min_health_percent > 0
    {
        // Istio maps `minHealthPercent` to the panic threshold.
        out.common_lb_config = Some(cluster::CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(od.min_health_percent),
            }),
            ..cluster::CommonLbConfig::default()
        });
    }
    out
}

fn lb(out: &mut PbCluster, c: &Cluster) {
    use cluster::LbPolicy as P;
    let slow_start = c.slow_start.as_ref().map(slow_start);
    match &c.lb_policy {
        LbPolicy::RoundRobin => {
            out.lb_policy = P::RoundRobin as i32;
            if slow_start.is_some() {
                out.lb_config = Some(cluster::LbConfig::RoundRobinLbConfig(
                    cluster::RoundRobinLbConfig {
                        slow_start_config: slow_start,
                    },
                ));
            }
        }
        LbPolicy::Random => out.lb_policy = P::Random as i32,
        LbPolicy::LeastRequest { choice_count } => {
            out.lb_policy = P::LeastRequest as i32;
            out.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
                cluster::LeastRequestLbConfig {
                    choice_count: Some(u32v(*choice_count)),
                    slow_start_config: slow_start,
                    ..cluster::LeastRequestLbConfig::default()
                },
            ));
        }
        // Envoy has no peak-EWMA balancer; least-request with two choices
        // is the closest (both prefer the less loaded of two picks).
        LbPolicy::PeakEwma { .. } => {
            out.lb_policy = P::LeastRequest as i32;
            out.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
                cluster::LeastRequestLbConfig {
                    choice_count: Some(u32v(2)),
                    slow_start_config: slow_start,
                    ..cluster::LeastRequestLbConfig::default()
                },
            ));
        }
        LbPolicy::RingHash {
            minimum_ring_size,
            maximum_ring_size,
            ..
        } => {
            out.lb_policy = P::RingHash as i32;
            out.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                cluster::RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value {
                        value: *minimum_ring_size,
                    }),
                    maximum_ring_size: Some(UInt64Value {
                        value: *maximum_ring_size,
                    }),
                    ..cluster::RingHashLbConfig::default()
                },
            ));
        }
        LbPolicy::Maglev { table_size, .. } => {
            out.lb_policy = P::Maglev as i32;
            out.lb_config = Some(cluster::LbConfig::MaglevLbConfig(cluster::MaglevLbConfig {
                table_size: Some(UInt64Value { value: *table_size }),
            }));
        }
    }
}

fn slow_start(s: &SlowStart) -> cluster::SlowStartConfig {
    cluster::SlowStartConfig {
        slow_start_window: Some(duration(s.window)),
        aggression: Some(RuntimeDouble {
            default_value: s.aggression,
            runtime_key: String::new(),
        }),
        min_weight_percent: Some(Percent {
            value: f64::from(s.min_weight_percent),
        }),
    }
}

fn protocol_options(c: &Cluster) -> HttpProtocolOptions {
    use http_protocol_options::explicit_http_config::ProtocolConfig;
    let protocol = match c.protocol {
        Protocol::Http1 => ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default()),
        Protocol::Http2 => ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions {
            max_concurrent_streams: c.limits.max_concurrent_streams.map(u32v),
            ..Http2ProtocolOptions::default()
        }),
    };
    HttpProtocolOptions {
        common_http_protocol_options: Some(CoreHttpOptions {
            idle_timeout: Some(duration(c.limits.idle_timeout)),
            max_requests_per_connection: c.limits.max_requests_per_connection.map(u32v),
            ..CoreHttpOptions::default()
        }),
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(protocol),
                },
            ),
        ),
        ..HttpProtocolOptions::default()
    }
}

fn outlier(od: &OutlierDetection) -> PbOutlier {
    // Envoy enforces consecutive 5xx and success rate at 100% unless told
    // otherwise; the model turns each detector on by setting it.
    let enforce = |on: bool| Some(u32v(if on { 100 } else { 0 }));
    let mut out = PbOutlier {
        consecutive_5xx: od.consecutive_5xx.map(u32v),
        enforcing_consecutive_5xx: enforce(od.consecutive_5xx.is_some()),
        consecutive_gateway_failure: od.consecutive_gateway_errors.map(u32v),
        enforcing_consecutive_gateway_failure: enforce(od.consecutive_gateway_errors.is_some()),
        split_external_local_origin_errors: od.split_external_local_origin_errors,
        consecutive_local_origin_failure: od.consecutive_local_origin_failures.map(u32v),
        enforcing_consecutive_local_origin_failure: enforce(
            od.consecutive_local_origin_failures.is_some(),
        ),
        interval: Some(duration(od.interval)),
        base_ejection_time: Some(duration(od.base_ejection_time)),
        max_ejection_time: Some(duration(od.max_ejection_time)),
        max_ejection_percent: Some(u32v(od.max_ejection_percent)),
        enforcing_success_rate: enforce(od.success_rate.is_some()),
        enforcing_failure_percentage: enforce(false),
        ..PbOutlier::default()
    };
    if let Some(sr) = &od.success_rate {
        out.enforcing_success_rate = Some(u32v(sr.enforcement_percentage));
        out.success_rate_stdev_factor = Some(u32v(sr.stdev_factor));
        out.success_rate_minimum_hosts = Some(u32v(sr.minimum_hosts));
        out.success_rate_request_volume = Some(u32v(sr.request_volume));
    }
    if let Some(fp) = &od.failure_percentage {
        out.enforcing_failure_percentage = Some(u32v(fp.enforcement_percentage));
        out.failure_percentage_threshold = Some(u32v(fp.threshold));
        out.failure_percentage_minimum_hosts = Some(u32v(fp.minimum_hosts));
        out.failure_percentage_request_volume = Some(u32v(fp.request_volume));
    }
    out
}

fn inline_pem(p: &PemFile) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(p.pem().to_vec())),
        ..DataSource::default()
    }
}

fn exact_sans(sans: &[std::sync::Arc<str>]) -> Vec<StringMatcher> {
    sans.iter()
        .map(|s| StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(string(s))),
            ignore_case: false,
        })
        .collect()
}

// `match_subject_alt_names` (deprecated in Envoy for the typed form) is
// what gRPC reads (gRFC A29); Envoy still honours it.
#[allow(deprecated)]
fn origination(o: &TlsOrigination, common: &mut CommonTlsContext) -> String {
    if let ServerVerification::Verify {
        ca_certificates,
        subject_alt_names,
        ca_crl,
    } = &o.verify
    {
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline_pem(ca_certificates)),
                    match_subject_alt_names: exact_sans(subject_alt_names),
                    crl: ca_crl.as_ref().map(inline_pem),
                    ..CertificateValidationContext::default()
                },
            ),
        );
    }
    o.sni.as_deref().unwrap_or_default().to_owned()
}

/// Upstream TLS as the `envoy.transport_sockets.tls` transport socket.
/// Certificates are sent inline (the model holds their PEM text);
/// `ISTIO_MUTUAL` names certificate-provider instances the way istiod does
/// for proxyless gRPC. `InsecureSkipVerify` sends no validation context
/// (Envoy's "no verification" form).
#[allow(deprecated)]
fn tls(t: &UpstreamTls) -> TransportSocket {
    let mut common = CommonTlsContext::default();
    let sni = match t {
        UpstreamTls::Simple(o) => origination(o, &mut common),
        UpstreamTls::Mutual {
            origination: o,
            certificate,
            private_key,
        } => {
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(inline_pem(certificate)),
                private_key: Some(inline_pem(private_key)),
                ..TlsCertificate::default()
            }];
            origination(o, &mut common)
        }
        UpstreamTls::IstioMutual(m) => {
            common.tls_certificate_provider_instance = Some(CertificateProviderPluginInstance {
                instance_name: ISTIO_PROVIDER.to_owned(),
                certificate_name: "default".to_owned(),
            });
            let sans: Vec<_> = m
                .subject_alt_names
                .iter()
                .chain(m.service_subject_alt_names.iter())
                .cloned()
                .collect();
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        ca_certificate_provider_instance: Some(CertificateProviderPluginInstance {
                            instance_name: ISTIO_PROVIDER.to_owned(),
                            certificate_name: "ROOTCA".to_owned(),
                        }),
                        match_subject_alt_names: exact_sans(&sans),
                        ..CertificateValidationContext::default()
                    },
                ),
            );
            m.sni.as_deref().unwrap_or_default().to_owned()
        }
        // A TLS mode the encoder does not know: a context with nothing
        // would be plaintext-equivalent trust, so verify against nothing
        // (every handshake fails) rather than weaken it.
        #[allow(unreachable_patterns)]
        _ => {
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(DataSource::default()),
                        ..CertificateValidationContext::default()
                    },
                ),
            );
            String::new()
        }
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &UpstreamTlsContext {
                common_tls_context: Some(common),
                sni,
                ..UpstreamTlsContext::default()
            },
        ))),
    }
}
