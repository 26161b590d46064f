//! Endpoint sets → `ClusterLoadAssignment`.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{
    Address, Locality as PbLocality, Metadata, SocketAddress, address, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as PbEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use mesh_core::model::{Endpoint, EndpointAddress, EndpointSet, Health, Locality};

use super::{string, u32v};

/// The metadata key under which endpoint labels travel (Envoy's subset
/// load balancer reads `envoy.lb`; istiod puts pod labels there).
pub(crate) const LABELS_KEY: &str = "envoy.lb";

/// An endpoint set as a `ClusterLoadAssignment` named after its cluster,
/// one `LocalityLbEndpoints` per (priority, locality) in endpoint order.
///
/// Each locality's weight is the sum of its endpoints' weights (at least
/// 1): gRPC drops localities without a weight (gRFC A27), and this weight
/// keeps the share of each locality what the endpoint weights say.
pub fn cluster_load_assignment(set: &EndpointSet) -> ClusterLoadAssignment {
    let mut groups: BTreeMap<(u32, &Locality), Vec<&Endpoint>> = BTreeMap::new();
    for ep in set.endpoints() {
        groups
            .entry((ep.priority, &ep.locality))
            .or_default()
            .push(ep);
    }
    ClusterLoadAssignment {
        cluster_name: set.cluster().as_str().to_owned(),
        endpoints: groups
            .into_iter()
            .map(|((priority, locality), eps)| LocalityLbEndpoints {
                locality: Some(PbLocality {
                    region: string(&locality.region),
                    zone: string(&locality.zone),
                    sub_zone: string(&locality.sub_zone),
                }),
                load_balancing_weight: Some(u32v(
                    eps.iter()
                        .fold(0u32, |s, e| s.saturating_add(e.weight))
                        .max(1),
                )),
                priority,
                lb_endpoints: eps.into_iter().map(lb_endpoint).collect(),
                ..LocalityLbEndpoints::default()
            })
            .collect(),
        ..ClusterLoadAssignment::default()
    }
}

fn lb_endpoint(ep: &Endpoint) -> LbEndpoint {
    let (host, port) = match &ep.address {
        EndpointAddress::Socket(a) => (a.ip().to_string(), a.port()),
        EndpointAddress::Dns { host, port } => (string(host), *port),
    };
    let metadata = (!ep.labels.is_empty()).then(|| Metadata {
        filter_metadata: HashMap::from([(
            LABELS_KEY.to_owned(),
            Struct {
                fields: ep
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_owned(),
                            Value {
                                kind: Some(value::Kind::StringValue(v.to_owned())),
                            },
                        )
                    })
                    .collect(),
            },
        )]),
        ..Metadata::default()
    });
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(PbEndpoint {
            address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: host,
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
                    ..SocketAddress::default()
                })),
            }),
            ..PbEndpoint::default()
        })),
        // envoy.config.core.v3.HealthStatus: UNKNOWN 0, HEALTHY 1,
        // UNHEALTHY 2, DRAINING 3.
        health_status: match ep.health {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
            Health::Draining => 3,
        },
        load_balancing_weight: Some(u32v(ep.weight)),
        metadata,
    }
}
