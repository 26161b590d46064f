//! `Listener` → [`ListenerResource`].
//!
//! Two kinds, as gRPC tells them apart (gRFC A27, A36):
//!
//! - **API listeners** (`api_listener` holding an `HttpConnectionManager`):
//!   what proxyless gRPC resolves `xds:///<name>` to; istiod names them
//!   `<fqdn>:<port>` and points them at the RDS resource of the same name
//!   (`pilot/pkg/networking/grpcgen/lds.go`). They become a client
//!   [`Listener`] whose port is taken from the name (0 when the name has
//!   none) and whose route table is the RDS name or, for an inline
//!   `route_config`, a table named after the listener.
//! - **Server listeners** (an `address` and filter chains; istiod names
//!   them `xds.istio.io/grpc/lds/inbound/<ip>:<port>`): a server
//!   [`Listener`] on the address's port, with the transport security of
//!   its filter chain's `DownstreamTlsContext` and its RBAC filters
//!   contributed as [`SecurityPolicies`].
//!
//! The HTTP filter chain is validated as gRFC A39 and the rules reference
//! (A2.10) require; a security field that cannot be honoured rejects the
//! listener (A2.7).

// Deprecated fields are read on purpose: a control plane that still sets
// them must see the listener rejected or the field recorded.
#![allow(deprecated)]

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as faultpb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbacpb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcmpb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlspb;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::model::security::{MtlsMode, PeerAuthentication, PolicyScope};
use mesh_core::model::{
    FaultPolicy, Listener, ListenerKind, SecurityPolicies, ServerPolicy,
    security::DEFAULT_ROOT_NAMESPACE,
};
use prost::Message;

use super::rbac;
use super::route::{self, HttpDefaults, Res, join, note};
use crate::resource::{DecodeContext, DecodeError, Decoded, ListenerResource, XdsResource};

/// The type URL of the HTTP connection manager.
pub(crate) const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub(crate) const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

pub(super) fn decode(bytes: &[u8], ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let l: lpb::Listener = super::proto(bytes, "Listener")?;
    let mut ignored = Vec::new();
    let resource = if l.api_listener.is_some() {
        api_listener(&l, ctx, &mut ignored)
    } else {
        server_listener(&l, ctx, &mut ignored)
    }
    .map_err(|e| DecodeError::new(Some(&l.name), e))?;
    Ok(Decoded {
        name: l.name,
        resource: XdsResource::Listener(resource),
        ignored,
    })
}

/// The port of a listener named `<host>:<port>` (istiod's API listener
/// names; `[v6]:port` too).
pub(crate) fn port_from_name(name: &str) -> Option<u16> {
    let (host, port) = name.rsplit_once(':')?;
    if host.is_empty() || (host.contains(':') && !host.ends_with(']')) {
        return None;
    }
    port.parse().ok()
}

/// Listener-level fields neither kind applies.
fn note_listener_fields(l: &lpb::Listener, ignored: &mut Vec<String>) {
    note(
        ignored,
        "",
        !l.additional_addresses.is_empty(),
        "additional_addresses",
    );
    note(ignored, "", l.stats_matcher.is_some(), "stats_matcher");
    note(
        ignored,
        "",
        l.per_connection_buffer_limit_bytes.is_some(),
        "per_connection_buffer_limit_bytes",
    );
    note(
        ignored,
        "",
        l.listener_filters_timeout.is_some(),
        "listener_filters_timeout",
    );
    note(ignored, "", l.transparent.is_some(), "transparent");
    note(ignored, "", l.freebind.is_some(), "freebind");
    note(ignored, "", !l.socket_options.is_empty(), "socket_options");
    note(
        ignored,
        "",
        l.tcp_fast_open_queue_length.is_some(),
        "tcp_fast_open_queue_length",
    );
    note(
        ignored,
        "",
        l.connection_balance_config.is_some(),
        "connection_balance_config",
    );
    note(
        ignored,
        "",
        l.enable_reuse_port.is_some(),
        "enable_reuse_port",
    );
    note(ignored, "", !l.access_log.is_empty(), "access_log");
    note(
        ignored,
        "",
        l.tcp_backlog_size.is_some(),
        "tcp_backlog_size",
    );
    note(ignored, "", l.tcp_keepalive.is_some(), "tcp_keepalive");
}

// === API listeners ===

fn api_listener(
    l: &lpb::Listener,
    ctx: &DecodeContext,
    ignored: &mut Vec<String>,
) -> Res<ListenerResource> {
    let p = "api_listener.api_listener";
    let Some(any) = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
    else {
        return Err(format!("{p}: required"));
    };
    if any.type_url != HCM_TYPE {
        return Err(format!(
            "{p}: type {:?} is not an HttpConnectionManager",
            any.type_url
        ));
    }
    let hcm = hcmpb::HttpConnectionManager::decode(any.value.as_slice())
        .map_err(|e| format!("{p}: undecodable HttpConnectionManager: {e}"))?;
    note_listener_fields(l, ignored);
    note(ignored, "", !l.filter_chains.is_empty(), "filter_chains");
    let filters = http_filters(&hcm, p, Side::Client, ignored)?;
    let max_stream_duration = hcm_common(&hcm, p, ignored)?;
    let defaults = HttpDefaults {
        fault_filter: filters.fault,
        max_stream_duration,
    };
    let (route_table, inline_route) = match &hcm.route_specifier {
        Some(hcmpb::http_connection_manager::RouteSpecifier::Rds(rds)) => {
            rds_name(rds, &join(p, "rds"))?;
            (rds.route_config_name.clone(), None)
        }
        Some(hcmpb::http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
            // An inline table has no name of its own in the snapshot: it is
            // named after the listener, which names nothing else.
            let table =
                route::translate(rc, &l.name, &join(p, "route_config"), &defaults, ignored)?;
            let _ = ctx;
            (l.name.clone(), Some(table))
        }
        Some(hcmpb::http_connection_manager::RouteSpecifier::ScopedRoutes(_)) => {
            return Err(format!("{p}.scoped_routes: not supported"));
        }
        None => return Err(format!("{p}: neither rds nor route_config is set")),
    };
    Ok(ListenerResource {
        listener: Listener {
            name: l.name.as_str().into(),
            port: port_from_name(&l.name).unwrap_or(0),
            kind: ListenerKind::Client {
                route_table: route_table.into(),
            },
        },
        inline_route,
        security: SecurityPolicies::default(),
        http: defaults,
    })
}

/// Checks an `Rds`: a name, and a config source that is ADS or self
/// (gRFC A27; the subscriber has no other channel).
fn rds_name(rds: &hcmpb::Rds, p: &str) -> Res<()> {
    use core::config_source::ConfigSourceSpecifier as S;
    match rds
        .config_source
        .as_ref()
        .and_then(|c| c.config_source_specifier.as_ref())
    {
        Some(S::Ads(_)) | Some(S::Self_(_)) => {}
        Some(_) => return Err(format!("{p}.config_source: only ads or self is supported")),
        None => return Err(format!("{p}.config_source: required (ads or self)")),
    }
    if rds.route_config_name.is_empty() {
        return Err(format!("{p}.route_config_name: empty"));
    }
    Ok(())
}

/// `common_http_protocol_options.max_stream_duration` and the HCM fields
/// the mesh does not apply.
fn hcm_common(
    hcm: &hcmpb::HttpConnectionManager,
    p: &str,
    ignored: &mut Vec<String>,
) -> Res<Option<std::time::Duration>> {
    let mut max = None;
    if let Some(o) = &hcm.common_http_protocol_options {
        let op = join(p, "common_http_protocol_options");
        if let Some(d) = &o.max_stream_duration {
            max = Some(route::duration(d, &join(&op, "max_stream_duration"))?)
                .filter(|d| !d.is_zero());
        }
        note(ignored, &op, o.idle_timeout.is_some(), "idle_timeout");
        note(
            ignored,
            &op,
            o.max_connection_duration.is_some(),
            "max_connection_duration",
        );
        note(
            ignored,
            &op,
            o.max_headers_count.is_some(),
            "max_headers_count",
        );
        note(
            ignored,
            &op,
            o.max_requests_per_connection.is_some(),
            "max_requests_per_connection",
        );
    }
    note(ignored, p, hcm.tracing.is_some(), "tracing");
    note(ignored, p, !hcm.access_log.is_empty(), "access_log");
    note(
        ignored,
        p,
        hcm.http_protocol_options.is_some(),
        "http_protocol_options",
    );
    note(
        ignored,
        p,
        hcm.http2_protocol_options.is_some(),
        "http2_protocol_options",
    );
    note(
        ignored,
        p,
        hcm.stream_idle_timeout.is_some(),
        "stream_idle_timeout",
    );
    note(ignored, p, hcm.request_timeout.is_some(), "request_timeout");
    note(ignored, p, hcm.drain_timeout.is_some(), "drain_timeout");
    note(
        ignored,
        p,
        hcm.use_remote_address.is_some(),
        "use_remote_address",
    );
    note(
        ignored,
        p,
        hcm.generate_request_id.is_some(),
        "generate_request_id",
    );
    note(
        ignored,
        p,
        hcm.forward_client_cert_details != 0,
        "forward_client_cert_details",
    );
    note(ignored, p, !hcm.server_name.is_empty(), "server_name");
    note(ignored, p, hcm.normalize_path.is_some(), "normalize_path");
    note(ignored, p, hcm.merge_slashes, "merge_slashes");
    Ok(max)
}

/// Which side a filter chain runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// What the HTTP filters of one HCM ask for.
struct Filters {
    fault: Option<(Arc<str>, FaultPolicy)>,
    /// The RBAC filters, in order, with their field paths.
    rbac: Vec<(String, rbacpb::Rbac)>,
}

/// Validates `http_filters` (gRFC A39, rules reference A2.10): not empty;
/// unique names; the router (terminal) last and nothing terminal before
/// it; every config type known unless the filter is optional; RBAC only
/// on the server side.
fn http_filters(
    hcm: &hcmpb::HttpConnectionManager,
    p: &str,
    side: Side,
    ignored: &mut Vec<String>,
) -> Res<Filters> {
    use hcmpb::http_filter::ConfigType;
    let fp = join(p, "http_filters");
    if hcm.http_filters.is_empty() {
        return Err(format!("{fp}: empty (the router filter is required)"));
    }
    let mut names = HashSet::with_capacity(hcm.http_filters.len());
    let mut out = Filters {
        fault: None,
        rbac: Vec::new(),
    };
    let last = hcm.http_filters.len() - 1;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let ip = format!("{fp}[{i}]");
        if f.name.is_empty() {
            return Err(format!("{ip}.name: empty"));
        }
        if !names.insert(f.name.as_str()) {
            return Err(format!("{ip}.name: duplicate filter name {:?}", f.name));
        }
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => a,
            Some(ConfigType::ConfigDiscovery(_)) if f.is_optional => {
                ignored.push(join(&ip, "config_discovery"));
                continue;
            }
            Some(ConfigType::ConfigDiscovery(_)) => {
                return Err(format!("{ip}.config_discovery: not supported"));
            }
            None => return Err(format!("{ip}: no typed_config")),
        };
        let terminal = any.type_url == ROUTER_TYPE;
        if terminal && i != last {
            return Err(format!(
                "{ip}: the terminal filter {:?} is not last",
                f.name
            ));
        }
        if !terminal && i == last {
            return Err(format!(
                "{ip}: the last filter {:?} ({}) is not a terminal filter",
                f.name, any.type_url
            ));
        }
        match any.type_url.as_str() {
            ROUTER_TYPE => {}
            route::FAULT_TYPE => {
                let cp = join(&ip, "typed_config");
                let cfg = faultpb::HttpFault::decode(any.value.as_slice())
                    .map_err(|e| format!("{cp}: undecodable HTTPFault: {e}"))?;
                let base = if f.disabled {
                    FaultPolicy::default()
                } else {
                    route::fault_policy(&cfg, &cp, ignored)?
                };
                out.fault = Some((Arc::from(f.name.as_str()), base));
            }
            RBAC_TYPE if side == Side::Server => {
                let cp = join(&ip, "typed_config");
                let cfg = rbacpb::Rbac::decode(any.value.as_slice())
                    .map_err(|e| format!("{cp}: undecodable RBAC: {e}"))?;
                if !f.disabled {
                    out.rbac.push((cp, cfg));
                }
            }
            RBAC_TYPE if f.is_optional => ignored.push(ip),
            RBAC_TYPE => {
                return Err(format!(
                    "{ip}: the RBAC filter {:?} is a server-side filter and cannot run on a client listener",
                    f.name
                ));
            }
            _ if f.is_optional => ignored.push(ip),
            t => {
                return Err(format!(
                    "{ip}.typed_config: unsupported filter type {t:?} (not optional)"
                ));
            }
        }
    }
    Ok(out)
}

// === server listeners ===

fn server_listener(
    l: &lpb::Listener,
    ctx: &DecodeContext,
    ignored: &mut Vec<String>,
) -> Res<ListenerResource> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier as P;
    let port = match l.address.as_ref().and_then(|a| a.address.as_ref()) {
        Some(A::SocketAddress(sa)) => match &sa.port_specifier {
            Some(P::PortValue(v)) => u16::try_from(*v)
                .map_err(|_| format!("address.socket_address.port_value: {v} is not a port"))?,
            Some(P::NamedPort(n)) => {
                return Err(format!(
                    "address.socket_address.named_port: {n:?} is not supported"
                ));
            }
            None => return Err("address.socket_address.port_value: required".into()),
        },
        Some(_) => return Err("address: only a socket address is supported".into()),
        None => {
            return Err(
                "address: required (a listener without api_listener is a server listener)".into(),
            );
        }
    };
    if l.use_original_dst.as_ref().is_some_and(|b| b.value) {
        return Err("use_original_dst: not supported".into());
    }
    if !l.listener_filters.is_empty() {
        return Err("listener_filters: not supported (gRFC A36)".into());
    }
    if l.filter_chain_matcher.is_some() {
        return Err("filter_chain_matcher: not supported".into());
    }
    note_listener_fields(l, ignored);

    let mut chains = Vec::new();
    for (i, fc) in l.filter_chains.iter().enumerate() {
        let cp = format!("filter_chains[{i}]");
        if let Some(c) = filter_chain(fc, &cp, &l.name, port, ctx, ignored)? {
            chains.push((cp, c));
        }
    }
    if let Some(fc) = &l.default_filter_chain
        && let Some(c) = filter_chain(fc, "default_filter_chain", &l.name, port, ctx, ignored)?
    {
        chains.push(("default_filter_chain".into(), c));
    }
    let Some(((_, first), rest)) = chains.split_first() else {
        return Err("filter_chains: no filter chain can match a connection".into());
    };
    // The model has one transport mode and one authorization per port: the
    // chains may differ in what they match, not in what they enforce.
    for (cp, c) in rest {
        if c != first {
            return Err(format!(
                "{cp}: filter chains that enforce different security on one port are not supported"
            ));
        }
    }
    let mut security = first.authz.clone();
    if first.strict {
        security.peer_authentications.push(PeerAuthentication::new(
            PolicyScope::new(l.name.as_str(), DEFAULT_ROOT_NAMESPACE),
            MtlsMode::Strict,
        ));
    }
    Ok(ListenerResource {
        listener: Listener::server(l.name.as_str(), port, ServerPolicy::default()),
        inline_route: None,
        security,
        http: HttpDefaults::default(),
    })
}

/// What one filter chain enforces.
#[derive(Debug, PartialEq)]
struct ChainSecurity {
    /// mTLS is required (`require_client_certificate`).
    strict: bool,
    /// The RBAC filters as authorization policies.
    authz: SecurityPolicies,
}

/// One filter chain; `None` when gRFC A36 says it can never match (it is
/// recorded).
fn filter_chain(
    fc: &lpb::FilterChain,
    p: &str,
    listener: &str,
    port: u16,
    ctx: &DecodeContext,
    ignored: &mut Vec<String>,
) -> Res<Option<ChainSecurity>> {
    if let Some(m) = &fc.filter_chain_match {
        let mp = join(p, "filter_chain_match");
        // gRFC A36: gRPC does not sniff; these never match.
        let never = m.destination_port.is_some()
            || !m.server_names.is_empty()
            || !(m.transport_protocol.is_empty() || m.transport_protocol == "raw_buffer")
            || !m.application_protocols.is_empty();
        if never {
            ignored.push(p.to_owned());
            return Ok(None);
        }
        note(ignored, &mp, !m.prefix_ranges.is_empty(), "prefix_ranges");
        note(ignored, &mp, m.source_type != 0, "source_type");
        note(
            ignored,
            &mp,
            !m.source_prefix_ranges.is_empty(),
            "source_prefix_ranges",
        );
        note(ignored, &mp, !m.source_ports.is_empty(), "source_ports");
        note(
            ignored,
            &mp,
            !m.direct_source_prefix_ranges.is_empty(),
            "direct_source_prefix_ranges",
        );
    }
    note(ignored, p, fc.use_proxy_proto.is_some(), "use_proxy_proto");
    note(
        ignored,
        p,
        fc.transport_socket_connect_timeout.is_some(),
        "transport_socket_connect_timeout",
    );
    let strict = match &fc.transport_socket {
        None => false,
        Some(ts) => downstream_tls(ts, &join(p, "transport_socket"), ctx, ignored)?,
    };
    // gRFC A36: exactly one network filter, the HTTP connection manager.
    let [filter] = fc.filters.as_slice() else {
        return Err(format!(
            "{}: exactly one filter (the HttpConnectionManager) is required, found {}",
            join(p, "filters"),
            fc.filters.len()
        ));
    };
    let np = format!("{}[0]", join(p, "filters"));
    let any: &Any = match &filter.config_type {
        Some(lpb::filter::ConfigType::TypedConfig(a)) => a,
        _ => return Err(format!("{np}.typed_config: required")),
    };
    if any.type_url != HCM_TYPE {
        return Err(format!(
            "{np}.typed_config: type {:?} is not an HttpConnectionManager",
            any.type_url
        ));
    }
    let hp = join(&np, "typed_config");
    let hcm = hcmpb::HttpConnectionManager::decode(any.value.as_slice())
        .map_err(|e| format!("{hp}: undecodable HttpConnectionManager: {e}"))?;
    let filters = http_filters(&hcm, &hp, Side::Server, ignored)?;
    hcm_common(&hcm, &hp, ignored)?;
    if !filters.rbac.is_empty() {
        // gRFC A41: the peer address RBAC matches must be the connection's.
        if hcm.xff_num_trusted_hops != 0 {
            return Err(format!(
                "{hp}.xff_num_trusted_hops: {} is not supported with RBAC",
                hcm.xff_num_trusted_hops
            ));
        }
        if !hcm.original_ip_detection_extensions.is_empty() {
            return Err(format!(
                "{hp}.original_ip_detection_extensions: not supported with RBAC"
            ));
        }
    }
    server_routes(&hcm, &hp, ignored)?;
    let mut authz = SecurityPolicies::default();
    for (fp, cfg) in &filters.rbac {
        authz
            .authorization_policies
            .extend(rbac::translate(cfg, fp, listener, port, ignored)?);
    }
    Ok(Some(ChainSecurity { strict, authz }))
}

/// The routes of a server HCM: gRFC A36 serves only routes with a
/// non-forwarding action. The model's server has no routes, so anything
/// but the catch-all istiod sends is recorded; a per-route RBAC override
/// would change authorization and rejects the listener.
fn server_routes(
    hcm: &hcmpb::HttpConnectionManager,
    p: &str,
    ignored: &mut Vec<String>,
) -> Res<()> {
    use envoy_types::pb::envoy::config::route::v3 as rpb;
    use hcmpb::http_connection_manager::RouteSpecifier as R;
    match &hcm.route_specifier {
        Some(R::RouteConfig(rc)) => {
            let rp = join(p, "route_config");
            let mut trivial = true;
            for (vi, vh) in rc.virtual_hosts.iter().enumerate() {
                let vp = format!("{rp}.virtual_hosts[{vi}]");
                if vh
                    .typed_per_filter_config
                    .values()
                    .any(|a| a.type_url.contains("rbac"))
                {
                    return Err(format!(
                        "{vp}.typed_per_filter_config: per-route RBAC overrides are not supported"
                    ));
                }
                for (ri, r) in vh.routes.iter().enumerate() {
                    if r.typed_per_filter_config
                        .values()
                        .any(|a| a.type_url.contains("rbac"))
                    {
                        return Err(format!(
                            "{vp}.routes[{ri}].typed_per_filter_config: per-route RBAC overrides are not supported"
                        ));
                    }
                    trivial &= matches!(r.action, Some(rpb::route::Action::NonForwardingAction(_)));
                }
            }
            if !trivial {
                ignored.push(rp);
            }
        }
        Some(R::Rds(rds)) => {
            rds_name(rds, &join(p, "rds"))?;
            ignored.push(join(p, "rds"));
        }
        Some(R::ScopedRoutes(_)) => return Err(format!("{p}.scoped_routes: not supported")),
        None => return Err(format!("{p}: neither rds nor route_config is set")),
    }
    Ok(())
}

/// A `DownstreamTlsContext`: whether it requires client certificates
/// (mTLS, the mesh's STRICT mode). Everything that cannot be honoured
/// rejects the listener (rules reference A2.7); certificate-provider
/// instances must exist in the bootstrap (gRFC A29).
fn downstream_tls(
    ts: &core::TransportSocket,
    p: &str,
    ctx: &DecodeContext,
    ignored: &mut Vec<String>,
) -> Res<bool> {
    use tlspb::common_tls_context::ValidationContextType as V;
    let any = match &ts.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(a)) => a,
        None => return Err(format!("{p}.typed_config: required")),
    };
    if any.type_url != DOWNSTREAM_TLS_TYPE {
        return Err(format!(
            "{p}.typed_config: type {:?} is not a DownstreamTlsContext",
            any.type_url
        ));
    }
    let p = join(p, "typed_config");
    let d = tlspb::DownstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| format!("{p}: undecodable DownstreamTlsContext: {e}"))?;
    if d.require_sni.as_ref().is_some_and(|b| b.value) {
        return Err(format!("{p}.require_sni: not supported"));
    }
    if d.ocsp_staple_policy != 0 {
        return Err(format!("{p}.ocsp_staple_policy: not supported"));
    }
    note(
        ignored,
        &p,
        d.session_ticket_keys_type.is_some(),
        "session_ticket_keys_type",
    );
    note(
        ignored,
        &p,
        d.disable_stateful_session_resumption,
        "disable_stateful_session_resumption",
    );
    note(ignored, &p, d.session_timeout.is_some(), "session_timeout");
    let require_client = d
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    if !require_client {
        return Err(format!(
            "{p}.require_client_certificate: server TLS without client certificates is not supported (only mutual TLS)"
        ));
    }
    let cp = join(&p, "common_tls_context");
    let Some(c) = &d.common_tls_context else {
        return Err(format!("{cp}: required"));
    };
    if !c.tls_certificates.is_empty() {
        return Err(format!(
            "{cp}.tls_certificates: not supported (use a certificate provider instance)"
        ));
    }
    if c.custom_tls_certificate_selector.is_some() {
        return Err(format!(
            "{cp}.custom_tls_certificate_selector: not supported"
        ));
    }
    if c.custom_handshaker.is_some() {
        return Err(format!("{cp}.custom_handshaker: not supported"));
    }
    if c.tls_certificate_certificate_provider.is_some()
        || c.tls_certificate_certificate_provider_instance.is_some()
    {
        return Err(format!(
            "{cp}.tls_certificate_certificate_provider_instance: not supported (use tls_certificate_provider_instance)"
        ));
    }
    note(ignored, &cp, c.tls_params.is_some(), "tls_params");
    note(ignored, &cp, !c.alpn_protocols.is_empty(), "alpn_protocols");
    note(ignored, &cp, c.key_log.is_some(), "key_log");
    if !c.tls_certificate_sds_secret_configs.is_empty() {
        // The process identity by SDS secret names (translate::tls).
        return super::tls::downstream_sds(c, &cp, ctx).map(|()| true);
    }
    let Some(identity) = &c.tls_certificate_provider_instance else {
        return Err(format!("{cp}.tls_certificate_provider_instance: required"));
    };
    provider(
        ctx,
        &identity.instance_name,
        &join(&cp, "tls_certificate_provider_instance.instance_name"),
    )?;
    let (vp, validation) = match &c.validation_context_type {
        Some(V::ValidationContext(v)) => (join(&cp, "validation_context"), v),
        Some(V::CombinedValidationContext(cv)) => {
            let cvp = join(&cp, "combined_validation_context");
            if cv.validation_context_sds_secret_config.is_some()
                || cv.validation_context_certificate_provider.is_some()
                || cv
                    .validation_context_certificate_provider_instance
                    .is_some()
            {
                return Err(format!(
                    "{cvp}: only default_validation_context is supported"
                ));
            }
            match &cv.default_validation_context {
                Some(v) => (join(&cvp, "default_validation_context"), v),
                None => return Err(format!("{cvp}.default_validation_context: required")),
            }
        }
        Some(_) => {
            return Err(format!(
                "{cp}: only validation_context or combined_validation_context with a certificate provider instance is supported"
            ));
        }
        None => {
            return Err(format!(
                "{cp}.validation_context: required to verify client certificates"
            ));
        }
    };
    validation_context(validation, &vp, ctx)?;
    Ok(true)
}

/// A server's `CertificateValidationContext`: a CA provider instance and
/// nothing the mesh cannot check (rules reference A2.7).
fn validation_context(
    v: &tlspb::CertificateValidationContext,
    p: &str,
    ctx: &DecodeContext,
) -> Res<()> {
    let unsupported = [
        (
            !v.verify_certificate_spki.is_empty(),
            "verify_certificate_spki",
        ),
        (
            !v.verify_certificate_hash.is_empty(),
            "verify_certificate_hash",
        ),
        (v.crl.is_some(), "crl"),
        (
            v.custom_validator_config.is_some(),
            "custom_validator_config",
        ),
        (
            v.require_signed_certificate_timestamp
                .as_ref()
                .is_some_and(|b| b.value),
            "require_signed_certificate_timestamp",
        ),
        (v.allow_expired_certificate, "allow_expired_certificate"),
        (v.trust_chain_verification != 0, "trust_chain_verification"),
        (
            !v.match_subject_alt_names.is_empty(),
            "match_subject_alt_names",
        ),
        (
            !v.match_typed_subject_alt_names.is_empty(),
            "match_typed_subject_alt_names",
        ),
        (v.trusted_ca.is_some(), "trusted_ca"),
        (v.watched_directory.is_some(), "watched_directory"),
        (v.system_root_certs.is_some(), "system_root_certs"),
        (v.max_verify_depth.is_some(), "max_verify_depth"),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!("{}: not supported on a server", join(p, field)));
    }
    let Some(ca) = &v.ca_certificate_provider_instance else {
        return Err(format!(
            "{}: required",
            join(p, "ca_certificate_provider_instance")
        ));
    };
    provider(
        ctx,
        &ca.instance_name,
        &join(p, "ca_certificate_provider_instance.instance_name"),
    )
}

fn provider(ctx: &DecodeContext, name: &str, p: &str) -> Res<()> {
    if ctx.certificate_providers.contains(name) {
        Ok(())
    } else {
        Err(format!(
            "{p}: certificate provider instance {name:?} is not in the bootstrap's certificate_providers"
        ))
    }
}

#[cfg(test)]
#[path = "listener_tests.rs"]
pub(crate) mod tests;
