//! `Cluster` → [`ClusterResource`].
//!
//! gRPC's proxyless semantics come first (gRFC A27 for CDS, A42 ring hash,
//! A48 least request, A50 outlier detection, A52/A56 `load_balancing_policy`,
//! A29 TLS, A32 circuit breaking); Envoy's field meanings and defaults fill
//! what gRPC leaves out, since the model enforces more than gRPC does
//! (connection and pending-request limits, consecutive-error ejection).
//!
//! - **Discovery.** `EDS` needs an `eds_config` that is ADS or `self`
//!   (A2.9); the assignment is named by `service_name`, else the cluster
//!   name. `STATIC` and `LOGICAL_DNS` (exactly one locality with one
//!   endpoint, A2.9) carry their `load_assignment` inline. `STRICT_DNS`,
//!   `ORIGINAL_DST` and aggregate clusters have no model counterpart and are
//!   rejected with that reason (an aggregate with an empty `clusters` list
//!   is rejected for that first, A2.9).
//! - **Load balancing**: [`super::lb`].
//! - **Limits.** The `DEFAULT`-priority `circuit_breakers.thresholds` entry
//!   gives `max_connections`, `max_pending_requests`, `max_requests` and
//!   `max_retries`, each defaulting as in Envoy (1024, 1024, 1024, 3; gRFC
//!   A32 has the same 1024 for `max_requests`). `HIGH` thresholds are
//!   recorded as ignored (the model has one priority).
//! - **Outlier detection** (gRFC A50 validation and defaults, Envoy's
//!   consecutive-error detectors): see [`outlier_detection`].
//! - **Protocol.** HTTP/2 unless `HttpProtocolOptions` (or the deprecated
//!   cluster fields) ask for HTTP/1.1: gRPC speaks only HTTP/2, and
//!   istiod's proxyless clusters carry no protocol option. This differs
//!   from Envoy, whose default is HTTP/1.1; a control plane for HTTP/1.1
//!   backends must say so (the mesh's own ADS server does).
//! - **Connect timeout**: `connect_timeout`, Envoy's 5 s when unset.
//! - **TLS**: [`super::tls`].
//! - **Istio names.** `outbound|<port>|<subset>|<fqdn>` fills
//!   `Cluster::service` and `Cluster::subset` as the file source does.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster as XdsCluster, OutlierDetection as XdsOd};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use mesh_core::model::{
    Cluster, ConnectionLimits, FailurePercentageEjection, OutlierDetection, Protocol,
    SuccessRateEjection,
};
use prost::{Message, Name};

use super::values::{Doc, duration, duration_or, join, percent, percent_u32, u32_or};
use crate::resource::{
    ClusterEndpoints, ClusterResource, DecodeContext, DecodeError, Decoded, XdsResource,
};

/// Envoy's `connect_timeout` default.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's circuit-breaker defaults (`max_connections`,
/// `max_pending_requests`, `max_requests`: 1024; `max_retries`: 3).
const DEFAULT_LIMIT: u32 = 1024;
const DEFAULT_MAX_RETRIES: u32 = 3;
/// Envoy's `healthy_panic_threshold` default, 50 %.
const DEFAULT_PANIC_THRESHOLD: u32 = 50;
/// The key of `HttpProtocolOptions` in `typed_extension_protocol_options`.
const HTTP_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(super) fn decode(bytes: &[u8], ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: XdsCluster = super::proto(bytes, "Cluster")?;
    if r.name.is_empty() {
        return Err(DecodeError::new(None, "Cluster: name is empty"));
    }
    let mut doc = Doc::new(&r.name);
    let resource = cluster(&mut doc, ctx, &r)?;
    let ignored = doc.ignored;
    Ok(Decoded {
        name: r.name.clone(),
        resource: XdsResource::Cluster(Box::new(resource)),
        ignored,
    })
}

fn cluster(
    doc: &mut Doc<'_>,
    ctx: &DecodeContext,
    c: &XdsCluster,
) -> Result<ClusterResource, DecodeError> {
    doc.reject_if(
        !c.transport_socket_matches.is_empty(),
        "transport_socket_matches",
        "per-endpoint transport sockets cannot be honoured (rules A2.7)",
    )?;
    doc.reject_if(
        c.transport_socket_matcher.is_some(),
        "transport_socket_matcher",
        "per-endpoint transport sockets cannot be honoured (rules A2.7)",
    )?;
    let endpoints = discovery(doc, c)?;

    let mut out = Cluster::new(c.name.as_str());
    let (service, subset) = istio_service(&c.name);
    out.service = service.map(Into::into);
    out.subset = subset.map(Into::into);
    let (lb_policy, slow_start) = super::lb::lb_policy(doc, c)?;
    out.lb_policy = lb_policy;
    out.slow_start = slow_start;
    out.connect_timeout = match &c.connect_timeout {
        None => DEFAULT_CONNECT_TIMEOUT,
        Some(d) => match duration(doc, "connect_timeout", d)? {
            Duration::ZERO => return Err(doc.err("connect_timeout", "must be above 0")),
            d => d,
        },
    };
    out.limits = limits(doc, c)?;
    out.tls = match &c.transport_socket {
        Some(ts) => super::tls::upstream_tls(doc, ctx, ts)?,
        None => None,
    };
    out.protocol = protocol(doc, c, &mut out.limits, out.tls.is_some())?;
    let panic = match c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
    {
        Some(p) => percent(doc, "common_lb_config.healthy_panic_threshold", p)?,
        None => DEFAULT_PANIC_THRESHOLD,
    };
    out.outlier_detection = match &c.outlier_detection {
        Some(od) => Some(outlier_detection(doc, od, panic)?),
        None => None,
    };
    common_lb_config(doc, c);
    record_ignored(doc, c);
    Ok(ClusterResource {
        cluster: out,
        endpoints,
    })
}

/// `outbound|<port>|<subset>|<fqdn>` → the service and the subset (Istio's
/// `model.BuildSubsetKey`).
fn istio_service(name: &str) -> (Option<&str>, Option<&str>) {
    let mut parts = name.split('|');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("outbound"), Some(port), Some(subset), Some(fqdn), None)
            if port.parse::<u16>().is_ok() && !fqdn.is_empty() =>
        {
            (Some(fqdn), (!subset.is_empty()).then_some(subset))
        }
        _ => (None, None),
    }
}

/// Where the endpoints come from (A2.9).
fn discovery(doc: &mut Doc<'_>, c: &XdsCluster) -> Result<ClusterEndpoints, DecodeError> {
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| doc.err("type", format!("unknown discovery type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            let path = "cluster_type";
            let any = custom
                .typed_config
                .as_ref()
                .ok_or_else(|| doc.err(&join(path, "typed_config"), "unset"))?;
            if any.type_url != AggregateConfig::type_url() {
                return Err(doc.err(
                    &join(path, "typed_config"),
                    format!(
                        "unsupported cluster type {:?} ({:?})",
                        custom.name, any.type_url
                    ),
                ));
            }
            let agg = AggregateConfig::decode(any.value.as_slice()).map_err(|e| {
                doc.err(
                    &join(path, "typed_config"),
                    format!("undecodable aggregate ClusterConfig: {e}"),
                )
            })?;
            if agg.clusters.is_empty() {
                return Err(doc.err(
                    &join(path, "typed_config.clusters"),
                    "empty: an aggregate cluster needs at least one cluster (rules A2.9)",
                ));
            }
            return Err(doc.err(
                path,
                format!(
                    "aggregate cluster of [{}] is not supported: the model has no cluster of clusters (gRFC A37)",
                    agg.clusters.join(", ")
                ),
            ));
        }
    };
    match kind {
        DiscoveryType::Eds => {
            let eds = c
                .eds_cluster_config
                .as_ref()
                .ok_or_else(|| doc.err("eds_cluster_config", "unset for an EDS cluster"))?;
            match eds
                .eds_config
                .as_ref()
                .and_then(|s| s.config_source_specifier.as_ref())
            {
                Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_)) => {}
                other => {
                    return Err(doc.err(
                        "eds_cluster_config.eds_config",
                        format!(
                            "{}: only ads or self are supported (rules A2.9)",
                            match other {
                                None => "unset",
                                Some(ConfigSourceSpecifier::Path(_)) => "path",
                                Some(ConfigSourceSpecifier::PathConfigSource(_)) => {
                                    "path_config_source"
                                }
                                Some(ConfigSourceSpecifier::ApiConfigSource(_)) => {
                                    "api_config_source"
                                }
                                Some(_) => "other",
                            }
                        ),
                    ));
                }
            }
            doc.ignore_if(c.load_assignment.is_some(), "load_assignment (EDS cluster)");
            let name = if eds.service_name.is_empty() {
                c.name.clone()
            } else {
                eds.service_name.clone()
            };
            Ok(ClusterEndpoints::Eds(name))
        }
        DiscoveryType::Static => match &c.load_assignment {
            None => Ok(ClusterEndpoints::Inline(Vec::new())),
            Some(cla) => Ok(ClusterEndpoints::Inline(super::endpoint::endpoints(
                doc,
                "load_assignment",
                cla,
                false,
            )?)),
        },
        DiscoveryType::LogicalDns => {
            let cla = c
                .load_assignment
                .as_ref()
                .ok_or_else(|| doc.err("load_assignment", "unset for a LOGICAL_DNS cluster"))?;
            let shape_ok = cla.endpoints.len() == 1 && cla.endpoints[0].lb_endpoints.len() == 1;
            if !shape_ok {
                return Err(doc.err(
                    "load_assignment.endpoints",
                    format!(
                        "a LOGICAL_DNS cluster needs exactly one locality with one endpoint, not {} localities with [{}] endpoints (rules A2.9)",
                        cla.endpoints.len(),
                        cla.endpoints
                            .iter()
                            .map(|l| l.lb_endpoints.len().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            doc.ignore_if(c.dns_refresh_rate.is_some(), "dns_refresh_rate");
            doc.ignore_if(c.respect_dns_ttl, "respect_dns_ttl");
            doc.ignore_if(c.dns_lookup_family != 0, "dns_lookup_family");
            doc.ignore_if(!c.dns_resolvers.is_empty(), "dns_resolvers");
            doc.ignore_if(
                c.typed_dns_resolver_config.is_some(),
                "typed_dns_resolver_config",
            );
            Ok(ClusterEndpoints::Inline(super::endpoint::endpoints(
                doc,
                "load_assignment",
                cla,
                true,
            )?))
        }
        DiscoveryType::StrictDns | DiscoveryType::OriginalDst => Err(doc.err(
            "type",
            format!(
                "{} is not supported (EDS, STATIC and LOGICAL_DNS are)",
                kind.as_str_name()
            ),
        )),
    }
}

/// Circuit-breaker thresholds and the per-connection request cap.
fn limits(doc: &mut Doc<'_>, c: &XdsCluster) -> Result<ConnectionLimits, DecodeError> {
    let mut l = ConnectionLimits {
        max_connections: DEFAULT_LIMIT,
        max_pending_requests: DEFAULT_LIMIT,
        max_requests: DEFAULT_LIMIT,
        max_retries: DEFAULT_MAX_RETRIES,
        ..ConnectionLimits::default()
    };
    if let Some(cb) = &c.circuit_breakers {
        let mut default_seen = false;
        for (i, t) in cb.thresholds.iter().enumerate() {
            let path = format!("circuit_breakers.thresholds[{i}]");
            if t.priority != RoutingPriority::Default as i32 {
                doc.ignore(format!(
                    "{path} (priority HIGH: the model has one priority)"
                ));
                continue;
            }
            if default_seen {
                doc.ignore(format!(
                    "{path} (a second DEFAULT threshold: the first applies)"
                ));
                continue;
            }
            default_seen = true;
            l.max_connections = u32_or(t.max_connections.as_ref(), l.max_connections);
            l.max_pending_requests =
                u32_or(t.max_pending_requests.as_ref(), l.max_pending_requests);
            l.max_requests = u32_or(t.max_requests.as_ref(), l.max_requests);
            l.max_retries = u32_or(t.max_retries.as_ref(), l.max_retries);
            doc.ignore_if(t.retry_budget.is_some(), &join(&path, "retry_budget"));
            doc.ignore_if(t.track_remaining, &join(&path, "track_remaining"));
            doc.ignore_if(
                t.max_connection_pools.is_some(),
                &join(&path, "max_connection_pools"),
            );
        }
        doc.ignore_if(
            !cb.per_host_thresholds.is_empty(),
            "circuit_breakers.per_host_thresholds",
        );
    }
    if let Some(n) = &c.max_requests_per_connection {
        l.max_requests_per_connection = (n.value > 0).then_some(n.value);
    }
    Ok(l)
}

/// The protocol spoken to endpoints, and the HTTP options that become
/// limits (`idle_timeout`, `max_requests_per_connection`,
/// `max_concurrent_streams`).
fn protocol(
    doc: &mut Doc<'_>,
    c: &XdsCluster,
    limits: &mut ConnectionLimits,
    tls: bool,
) -> Result<Protocol, DecodeError> {
    let mut protocol = Protocol::Http2;
    let mut http2 = None;
    if c.http_protocol_options.is_some() {
        protocol = Protocol::Http1;
    }
    if let Some(h2) = &c.http2_protocol_options {
        protocol = Protocol::Http2;
        http2 = Some(h2.clone());
    }
    let mut common = c.common_http_protocol_options;
    doc.ignore_if(
        c.upstream_http_protocol_options.is_some(),
        "upstream_http_protocol_options",
    );
    doc.ignore_if(c.protocol_selection != 0, "protocol_selection");
    for (key, any) in &c.typed_extension_protocol_options {
        let path = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_OPTIONS {
            doc.ignore(path);
            continue;
        }
        let o = HttpProtocolOptions::decode(any.value.as_slice())
            .map_err(|e| doc.err(&path, format!("undecodable HttpProtocolOptions: {e}")))?;
        if o.common_http_protocol_options.is_some() {
            common = o.common_http_protocol_options;
        }
        doc.ignore_if(!o.http_filters.is_empty(), &join(&path, "http_filters"));
        doc.ignore_if(
            o.upstream_http_protocol_options.is_some(),
            &join(&path, "upstream_http_protocol_options"),
        );
        match &o.upstream_protocol_options {
            None => {}
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::HttpProtocolOptions(_)) => protocol = Protocol::Http1,
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    protocol = Protocol::Http2;
                    http2 = Some(h2.clone());
                }
                Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                    return Err(doc.err(
                        &join(&path, "explicit_http_config.http3_protocol_options"),
                        "HTTP/3 is not supported",
                    ));
                }
                None => {}
            },
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d)) => {
                doc.ignore(format!(
                    "{path}.use_downstream_protocol_config (one configured protocol is used)"
                ));
                protocol = if d.http2_protocol_options.is_some() {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                http2 = d.http2_protocol_options.clone();
            }
            Some(UpstreamProtocolOptions::AutoConfig(a)) => {
                doc.ignore(format!(
                    "{path}.auto_config (HTTP/2 over TLS, HTTP/1.1 in plaintext)"
                ));
                protocol = if tls {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                };
                http2 = a.http2_protocol_options.clone();
            }
        }
    }
    if let Some(h2) = &http2
        && let Some(n) = &h2.max_concurrent_streams
    {
        limits.max_concurrent_streams = Some(n.value);
    }
    if let Some(common) = &common {
        let path = "common_http_protocol_options";
        if let Some(d) = &common.idle_timeout {
            match duration(doc, &join(path, "idle_timeout"), d)? {
                Duration::ZERO => doc.ignore(format!(
                    "{path}.idle_timeout (0, no timeout: the model's 1 h applies)"
                )),
                d => limits.idle_timeout = d,
            }
        }
        if let Some(n) = &common.max_requests_per_connection {
            limits.max_requests_per_connection = (n.value > 0).then_some(n.value);
        }
        doc.ignore_if(
            common.max_connection_duration.is_some(),
            &join(path, "max_connection_duration"),
        );
        doc.ignore_if(
            common.max_stream_duration.is_some(),
            &join(path, "max_stream_duration"),
        );
        doc.ignore_if(
            common.max_headers_count.is_some(),
            &join(path, "max_headers_count"),
        );
    }
    Ok(protocol)
}

/// Envoy / gRFC A50 outlier detection → the model.
///
/// Validation (gRFC A50, A2.9): every percentage at most 100, durations
/// non-negative. Detectors: consecutive 5xx (default 5, on unless
/// `enforcing_consecutive_5xx` is 0), consecutive gateway failures
/// (default 5, off unless `enforcing_consecutive_gateway_failure` is
/// above 0), consecutive local-origin failures (used with
/// `split_external_local_origin_errors`), success rate (on unless
/// `enforcing_success_rate` is 0, A50) and failure percentage (on when
/// `enforcing_failure_percentage` is above 0, A50). An enforcement between
/// 1 and 99 for a consecutive detector is applied as 100 and recorded as
/// ignored (the model's consecutive detectors always enforce). The panic
/// threshold is `common_lb_config.healthy_panic_threshold` (Envoy 50 %).
pub(super) fn outlier_detection(
    doc: &mut Doc<'_>,
    od: &XdsOd,
    panic_threshold: u32,
) -> Result<OutlierDetection, DecodeError> {
    let p = |f: &str| join("outlier_detection", f);
    let interval = duration_or(
        doc,
        &p("interval"),
        od.interval.as_ref(),
        Duration::from_secs(10),
    )?;
    let base = duration_or(
        doc,
        &p("base_ejection_time"),
        od.base_ejection_time.as_ref(),
        Duration::from_secs(30),
    )?;
    let max_time = duration_or(
        doc,
        &p("max_ejection_time"),
        od.max_ejection_time.as_ref(),
        Duration::from_secs(300),
    )?;
    if let Some(j) = &od.max_ejection_time_jitter {
        duration(doc, &p("max_ejection_time_jitter"), j)?;
        doc.ignore(p("max_ejection_time_jitter"));
    }
    let max_ejection_percent = percent_u32(
        doc,
        &p("max_ejection_percent"),
        od.max_ejection_percent.as_ref(),
        10,
    )?;
    let enf_5xx = percent_u32(
        doc,
        &p("enforcing_consecutive_5xx"),
        od.enforcing_consecutive_5xx.as_ref(),
        100,
    )?;
    let enf_gw = percent_u32(
        doc,
        &p("enforcing_consecutive_gateway_failure"),
        od.enforcing_consecutive_gateway_failure.as_ref(),
        0,
    )?;
    let enf_local = percent_u32(
        doc,
        &p("enforcing_consecutive_local_origin_failure"),
        od.enforcing_consecutive_local_origin_failure.as_ref(),
        100,
    )?;
    let enf_sr = percent_u32(
        doc,
        &p("enforcing_success_rate"),
        od.enforcing_success_rate.as_ref(),
        100,
    )?;
    let enf_local_sr = percent_u32(
        doc,
        &p("enforcing_local_origin_success_rate"),
        od.enforcing_local_origin_success_rate.as_ref(),
        100,
    )?;
    let fp_threshold = percent_u32(
        doc,
        &p("failure_percentage_threshold"),
        od.failure_percentage_threshold.as_ref(),
        85,
    )?;
    let enf_fp = percent_u32(
        doc,
        &p("enforcing_failure_percentage"),
        od.enforcing_failure_percentage.as_ref(),
        0,
    )?;
    let enf_fp_local = percent_u32(
        doc,
        &p("enforcing_failure_percentage_local_origin"),
        od.enforcing_failure_percentage_local_origin.as_ref(),
        0,
    )?;
    for (field, e) in [
        ("enforcing_consecutive_5xx", enf_5xx),
        ("enforcing_consecutive_gateway_failure", enf_gw),
        ("enforcing_consecutive_local_origin_failure", enf_local),
    ] {
        doc.ignore_if(e > 0 && e < 100, &p(field));
    }
    doc.ignore_if(
        od.enforcing_local_origin_success_rate.is_some() && enf_local_sr != 100,
        &p("enforcing_local_origin_success_rate"),
    );
    doc.ignore_if(
        enf_fp_local > 0,
        &p("enforcing_failure_percentage_local_origin"),
    );
    doc.ignore_if(
        od.successful_active_health_check_uneject_host.is_some(),
        &p("successful_active_health_check_uneject_host"),
    );
    doc.ignore_if(!od.monitors.is_empty(), &p("monitors"));
    doc.ignore_if(
        od.always_eject_one_host.is_some(),
        &p("always_eject_one_host"),
    );
    doc.ignore_if(
        od.detect_degraded_hosts.is_some(),
        &p("detect_degraded_hosts"),
    );

    let count = |v: Option<&envoy_types::pb::google::protobuf::UInt32Value>, enforcing: u32| {
        (enforcing > 0).then(|| u32_or(v, 5))
    };
    Ok(OutlierDetection {
        consecutive_5xx: count(od.consecutive_5xx.as_ref(), enf_5xx),
        consecutive_gateway_errors: count(od.consecutive_gateway_failure.as_ref(), enf_gw),
        consecutive_local_origin_failures: count(
            od.consecutive_local_origin_failure.as_ref(),
            enf_local,
        ),
        split_external_local_origin_errors: od.split_external_local_origin_errors,
        interval,
        base_ejection_time: base,
        // Envoy: the longest ejection is max(base, max_ejection_time).
        max_ejection_time: max_time.max(base),
        max_ejection_percent,
        min_health_percent: panic_threshold,
        success_rate: (enf_sr > 0).then(|| SuccessRateEjection {
            stdev_factor: u32_or(od.success_rate_stdev_factor.as_ref(), 1900),
            enforcement_percentage: enf_sr,
            minimum_hosts: u32_or(od.success_rate_minimum_hosts.as_ref(), 5),
            request_volume: u32_or(od.success_rate_request_volume.as_ref(), 100),
        }),
        failure_percentage: (enf_fp > 0).then(|| FailurePercentageEjection {
            threshold: fp_threshold,
            enforcement_percentage: enf_fp,
            minimum_hosts: u32_or(od.failure_percentage_minimum_hosts.as_ref(), 5),
            request_volume: u32_or(od.failure_percentage_request_volume.as_ref(), 50),
        }),
    })
}

/// `common_lb_config` fields without a model counterpart.
fn common_lb_config(doc: &mut Doc<'_>, c: &XdsCluster) {
    let Some(l) = &c.common_lb_config else { return };
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
    let path = "common_lb_config";
    if let Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) = &l.locality_config_specifier {
        doc.ignore(format!("{path}.zone_aware_lb_config"));
    }
    // locality_weighted_lb_config is what the EDS translation does anyway.
    doc.ignore_if(
        l.healthy_panic_threshold.is_some() && c.outlier_detection.is_none(),
        &join(
            path,
            "healthy_panic_threshold (applies with outlier_detection only)",
        ),
    );
    doc.ignore_if(
        l.update_merge_window.is_some(),
        &join(path, "update_merge_window"),
    );
    doc.ignore_if(
        l.ignore_new_hosts_until_first_hc,
        &join(path, "ignore_new_hosts_until_first_hc"),
    );
    doc.ignore_if(
        l.close_connections_on_host_set_change,
        &join(path, "close_connections_on_host_set_change"),
    );
    doc.ignore_if(
        l.consistent_hashing_lb_config.is_some(),
        &join(path, "consistent_hashing_lb_config"),
    );
    doc.ignore_if(
        l.override_host_status.is_some(),
        &join(path, "override_host_status"),
    );
}

/// Other behaviour fields the model does not apply (A2.1: ignored and
/// recorded).
fn record_ignored(doc: &mut Doc<'_>, c: &XdsCluster) {
    for (set, field) in [
        (!c.health_checks.is_empty(), "health_checks"),
        (c.lb_subset_config.is_some(), "lb_subset_config"),
        (
            c.upstream_connection_options.is_some(),
            "upstream_connection_options",
        ),
        (!c.filters.is_empty(), "filters"),
        (c.lrs_server.is_some(), "lrs_server"),
        (c.cleanup_interval.is_some(), "cleanup_interval"),
        (c.upstream_bind_config.is_some(), "upstream_bind_config"),
        (
            c.per_connection_buffer_limit_bytes.is_some(),
            "per_connection_buffer_limit_bytes",
        ),
        (c.preconnect_policy.is_some(), "preconnect_policy"),
        (c.upstream_config.is_some(), "upstream_config"),
        (
            c.close_connections_on_host_health_failure,
            "close_connections_on_host_health_failure",
        ),
        (
            c.ignore_health_on_host_removal,
            "ignore_health_on_host_removal",
        ),
        (c.queuing_policies.is_some(), "queuing_policies"),
    ] {
        doc.ignore_if(set, field);
    }
}
