//! Client listeners → Envoy `Listener`s and gRPC API listeners.

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, SocketAddress, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, Listener as PbListener, filter,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use mesh_core::RouteTableName;
use mesh_core::model::{Listener, RouteTable};

use super::any;

/// The HTTP filter name of fault injection (`typed_per_filter_config` of
/// a route uses the same key).
pub(crate) const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// ADS as the config source (gRFC A27: gRPC accepts only `ads` or `self`).
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: 2, // V3
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..ConfigSource::default()
    }
}

/// An `HttpConnectionManager` that takes route table `rt` from RDS over
/// ADS, with the fault filter (inert without a per-route config) and the
/// router last: the filter list gRPC validates (gRFC A39: the terminal
/// router filter must be last).
fn hcm(stat_prefix: &str, rt: &RouteTableName) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: rt.as_str().to_owned(),
        })),
        http_filters: vec![
            HttpFilter {
                name: FAULT_FILTER.to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(any(
                    &HttpFault::default(),
                ))),
                ..HttpFilter::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".to_owned(),
                config_type: Some(http_filter::ConfigType::TypedConfig(
                    any(&Router::default()),
                )),
                ..HttpFilter::default()
            },
        ],
        ..HttpConnectionManager::default()
    }
}

/// A client listener as Envoy's outbound listener: bound to
/// `0.0.0.0:<port>`, one filter chain with an `HttpConnectionManager`
/// whose routes come from RDS (`rt`), as istiod configures a sidecar's
/// `0.0.0.0_<port>` listener.
pub fn socket_listener(l: &Listener, rt: &RouteTableName) -> PbListener {
    PbListener {
        name: l.name.as_str().to_owned(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(l.port))),
                ..SocketAddress::default()
            })),
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm(
                    l.name.as_str(),
                    rt,
                )))),
            }],
            ..FilterChain::default()
        }],
        traffic_direction: 2, // OUTBOUND
        ..PbListener::default()
    }
}

/// A gRPC API listener named `name` whose routes are the RDS route table
/// `rt` (gRFC A27: an `api_listener` holding an `HttpConnectionManager`).
pub fn api_listener(name: &str, rt: &RouteTableName) -> PbListener {
    PbListener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm(name, rt))),
        }),
        ..PbListener::default()
    }
}

/// The API listener names for route table `table` of the client listener
/// on `port`: every domain of the form `<host>:<port>` without a wildcard.
/// Istio names proxyless gRPC listeners `<fqdn>:<port>`; the short names
/// it lists as domains (`reviews:9080`) work too, and gRPC then matches the
/// virtual host by that same name (its default data-plane authority).
pub fn api_listener_names(table: &RouteTable, port: u16) -> Vec<String> {
    let suffix = format!(":{port}");
    table
        .virtual_hosts()
        .iter()
        .flat_map(|vh| vh.domains.iter())
        .filter(|d| !d.contains('*') && d.ends_with(&suffix) && d.len() > suffix.len())
        .map(|d| d.to_string())
        .collect()
}
