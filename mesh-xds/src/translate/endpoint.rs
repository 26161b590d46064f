//! `ClusterLoadAssignment` → [`EndpointsResource`]: every locality and
//! priority flattened into model [`Endpoint`]s that carry their locality,
//! priority, health and effective weight.
//!
//! Validation is gRPC's (rules A2.8; grpc-go `unmarshal_eds.go`, gRFC
//! A27): a locality without ID, an explicitly zero locality or endpoint
//! weight, a sum of endpoint weights in a locality or of locality weights
//! in a priority above `u32::MAX`, a duplicate locality in one priority,
//! non-contiguous priorities and a duplicate endpoint address all reject
//! the assignment.
//!
//! **Weights.** The model has one weight per endpoint, so locality weights
//! are folded in. gRPC always balances localities by their weight (the
//! `xds_wrr_locality` policy, gRFC A52), then endpoints inside a locality
//! by theirs: an endpoint's share of its priority is
//! `locality_weight / Σ locality_weights × weight / Σ weights in its
//! locality`. The effective weight is that share scaled to integers (exact
//! when it fits a `u32`, rounded otherwise, never below 1). When no
//! locality carries a weight (what an Envoy control plane without
//! locality-weighted balancing sends) or a priority's localities all have
//! the same weight and total endpoint weight, the endpoint weights are kept
//! as sent. When some localities carry weights and others do not, the
//! unweighted ones are skipped as gRPC skips them, and recorded as ignored.
//!
//! **Health** (gRFC A27): `HEALTHY` and `UNKNOWN` endpoints take traffic;
//! `DRAINING` maps to [`Health::Draining`]; `UNHEALTHY`, `TIMEOUT` and
//! `DEGRADED` to [`Health::Unhealthy`].
//!
//! **Labels** come from the endpoint's `envoy.lb` filter metadata (string
//! values), where Envoy's subset load balancer and Istio put them.
//!
//! **Drops.** `policy.drop_overloads` asks the client to drop a share of
//! requests; the model has no drop stage, so they are recorded as ignored
//! rather than rejected: rejecting would keep the previous endpoints (or
//! none) over a load-shedding hint, which is worse for the service than
//! sending the load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as XdsAddress;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::locality_lb_endpoints::LbConfig;
use envoy_types::pb::google::protobuf::value::Kind;
use mesh_core::model::{Endpoint, EndpointAddress, Health, Labels, Locality};

use super::values::{Doc, join};
use crate::resource::{DecodeContext, DecodeError, Decoded, EndpointsResource, XdsResource};

pub(super) fn decode(bytes: &[u8], _ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    let r: ClusterLoadAssignment = super::proto(bytes, "ClusterLoadAssignment")?;
    if r.cluster_name.is_empty() {
        return Err(DecodeError::new(None, "cluster_name: empty"));
    }
    let mut doc = Doc::new(&r.cluster_name);
    let endpoints = endpoints(&mut doc, "", &r, false)?;
    let ignored = doc.ignored;
    Ok(Decoded {
        name: r.cluster_name.clone(),
        resource: XdsResource::Endpoints(EndpointsResource { endpoints }),
        ignored,
    })
}

/// One locality's endpoints before weights are folded in.
struct LocalityGroup {
    weight: Option<u32>,
    priority: u32,
    endpoints: Vec<Endpoint>,
    path: String,
}

/// The endpoints of `cla`, validated; `path` prefixes field paths (empty
/// for an EDS resource, `load_assignment` inside a cluster). Host names
/// are accepted as addresses only with `dns` (a `LOGICAL_DNS` cluster).
pub(super) fn endpoints(
    doc: &mut Doc<'_>,
    path: &str,
    cla: &ClusterLoadAssignment,
    dns: bool,
) -> Result<Vec<Endpoint>, DecodeError> {
    doc.ignore_if(
        !cla.named_endpoints.is_empty(),
        &join(path, "named_endpoints"),
    );
    if let Some(policy) = &cla.policy {
        let ppath = join(path, "policy");
        for (i, d) in policy.drop_overloads.iter().enumerate() {
            doc.ignore(format!(
                "{ppath}.drop_overloads[{i}] (category {:?}: drops are not applied)",
                d.category
            ));
        }
        doc.ignore_if(
            policy.overprovisioning_factor.is_some(),
            &join(&ppath, "overprovisioning_factor"),
        );
        doc.ignore_if(
            policy.endpoint_stale_after.is_some(),
            &join(&ppath, "endpoint_stale_after"),
        );
        doc.ignore_if(
            policy.weighted_priority_health,
            &join(&ppath, "weighted_priority_health"),
        );
    }

    let mut groups = Vec::with_capacity(cla.endpoints.len());
    let mut seen_localities: HashMap<(u32, &Locality), usize> = HashMap::new();
    let mut localities = Vec::with_capacity(cla.endpoints.len());
    let mut addresses: HashMap<EndpointAddress, (usize, usize)> =
        HashMap::with_capacity(cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum());
    for (i, lle) in cla.endpoints.iter().enumerate() {
        let lpath = format!("{}endpoints[{i}]", prefix(path));
        let Some(loc) = &lle.locality else {
            return Err(doc.err(
                &join(&lpath, "locality"),
                "unset: a locality needs an ID (rules A2.8)",
            ));
        };
        localities.push(Locality {
            region: loc.region.as_str().into(),
            zone: loc.zone.as_str().into(),
            sub_zone: loc.sub_zone.as_str().into(),
        });
        let weight = match &lle.load_balancing_weight {
            Some(w) if w.value == 0 => {
                return Err(doc.err(
                    &join(&lpath, "load_balancing_weight"),
                    "0: an explicit locality weight must be at least 1",
                ));
            }
            w => w.as_ref().map(|w| w.value),
        };
        doc.ignore_if(lle.proximity.is_some(), &join(&lpath, "proximity"));
        let mut lbs: Vec<_> = lle.lb_endpoints.iter().collect();
        match &lle.lb_config {
            None => {}
            Some(LbConfig::LoadBalancerEndpoints(list)) => lbs.extend(list.lb_endpoints.iter()),
            Some(LbConfig::LedsClusterLocalityConfig(_)) => {
                return Err(doc.err(
                    &join(&lpath, "leds_cluster_locality_config"),
                    "LEDS is not supported",
                ));
            }
        }
        let mut sum: u64 = 0;
        let mut eps = Vec::with_capacity(lbs.len());
        for (j, lb) in lbs.into_iter().enumerate() {
            // Paths are built only for errors and ignored fields: this
            // loop runs once per endpoint of every EDS update.
            let epath = |field: &str| format!("{lpath}.lb_endpoints[{j}].{field}");
            let ep = match &lb.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                Some(HostIdentifier::EndpointName(n)) => {
                    return Err(doc.err(
                        &epath("endpoint_name"),
                        format!("{n:?}: named endpoints are not supported"),
                    ));
                }
                None => return Err(doc.err(&epath("endpoint"), "unset")),
            };
            let address = address(doc, &|| epath("endpoint.address"), ep.address.as_ref(), dns)?;
            if !ep.additional_addresses.is_empty() {
                doc.ignore(epath("endpoint.additional_addresses"));
            }
            if ep.health_check_config.is_some() {
                doc.ignore(epath("endpoint.health_check_config"));
            }
            let weight = match &lb.load_balancing_weight {
                Some(w) if w.value == 0 => {
                    return Err(doc.err(
                        &epath("load_balancing_weight"),
                        "0: an explicit endpoint weight must be at least 1 (rules A2.8)",
                    ));
                }
                Some(w) => w.value,
                None => 1,
            };
            sum += u64::from(weight);
            if sum > u64::from(u32::MAX) {
                return Err(doc.err(
                    &join(&lpath, "lb_endpoints"),
                    format!(
                        "endpoint weights sum to more than {} (rules A2.8)",
                        u32::MAX
                    ),
                ));
            }
            if let Some((pi, pj)) = addresses.insert(address.clone(), (i, j)) {
                return Err(doc.err(
                    &epath("endpoint.address"),
                    format!(
                        "duplicate address {address} (also {}endpoints[{pi}].lb_endpoints[{pj}]; rules A2.8)",
                        prefix(path)
                    ),
                ));
            }
            eps.push(Endpoint {
                address,
                weight,
                health: health(lb.health_status),
                labels: labels(lb.metadata.as_ref()),
                locality: Locality::default(),
                priority: lle.priority,
            });
        }
        groups.push(LocalityGroup {
            weight,
            priority: lle.priority,
            endpoints: eps,
            path: lpath,
        });
    }
    for (i, g) in groups.iter_mut().enumerate() {
        if let Some(prev) = seen_localities.insert((g.priority, &localities[i]), i) {
            return Err(doc.err(
                &join(&g.path, "locality"),
                format!(
                    "duplicate locality {} in priority {} (also endpoints[{prev}]; rules A2.8)",
                    localities[i], g.priority
                ),
            ));
        }
        for e in &mut g.endpoints {
            e.locality = localities[i].clone();
        }
    }

    // Priorities 0..=max, each present.
    let priorities: HashSet<u32> = groups.iter().map(|g| g.priority).collect();
    if let Some(max) = priorities.iter().max()
        && (0..=*max).any(|p| !priorities.contains(&p))
    {
        let missing = (0..=*max).find(|p| !priorities.contains(p)).unwrap_or(0);
        return Err(doc.err(
            &format!("{}endpoints", prefix(path)),
            format!("priorities are not contiguous: {missing} is missing below {max} (rules A2.8)"),
        ));
    }

    let weighted = groups.iter().any(|g| g.weight.is_some());
    let mut by_priority: BTreeMap<u32, Vec<LocalityGroup>> = BTreeMap::new();
    for g in groups {
        if weighted && g.weight.is_none() {
            doc.ignore(format!(
                "{} (no load_balancing_weight while other localities have one: skipped, gRFC A27)",
                g.path
            ));
            continue;
        }
        by_priority.entry(g.priority).or_default().push(g);
    }
    let mut out = Vec::new();
    for (p, gs) in by_priority {
        let total: u64 = gs.iter().map(|g| u64::from(g.weight.unwrap_or(1))).sum();
        if total > u64::from(u32::MAX) {
            return Err(doc.err(
                &format!("{}endpoints", prefix(path)),
                format!(
                    "locality weights of priority {p} sum to more than {} (rules A2.8)",
                    u32::MAX
                ),
            ));
        }
        out.extend(fold_locality_weights(gs, weighted));
    }
    Ok(out)
}

fn prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    }
}

/// The endpoints of one priority with locality weights folded into their
/// weights (see the module docs).
fn fold_locality_weights(groups: Vec<LocalityGroup>, weighted: bool) -> Vec<Endpoint> {
    let sums: Vec<u128> = groups
        .iter()
        .map(|g| g.endpoints.iter().map(|e| u128::from(e.weight)).sum())
        .collect();
    let uniform = groups.windows(2).all(|w| w[0].weight == w[1].weight)
        && sums.windows(2).all(|w| w[0] == w[1]);
    if !weighted || uniform {
        return groups.into_iter().flat_map(|g| g.endpoints).collect();
    }
    // eff = weight × lw × L / sum, with L the lcm of the localities' sums,
    // is an integer; divide by the gcd of all, then scale into u32.
    let lcm = sums
        .iter()
        .filter(|s| **s > 0)
        .try_fold(1u128, |acc, s| (acc / gcd(acc, *s)).checked_mul(*s));
    let mut raw: Vec<f64> = Vec::new();
    let mut exact: Vec<u128> = Vec::new();
    for (g, sum) in groups.iter().zip(&sums) {
        let lw = u128::from(g.weight.unwrap_or(1));
        for e in &g.endpoints {
            let w = u128::from(e.weight);
            if let Some(l) = lcm {
                match w.checked_mul(lw).and_then(|x| x.checked_mul(l / sum)) {
                    Some(x) => exact.push(x),
                    None => exact.clear(),
                }
            }
            raw.push(w as f64 * lw as f64 / *sum as f64);
        }
    }
    let weights: Vec<u32> = if lcm.is_some() && exact.len() == raw.len() {
        let g = exact.iter().fold(0u128, |acc, x| gcd(acc, *x)).max(1);
        let reduced: Vec<u128> = exact.iter().map(|x| x / g).collect();
        match reduced.iter().max() {
            Some(max) if *max <= u128::from(u32::MAX) => {
                reduced.iter().map(|x| *x as u32).collect()
            }
            _ => scale(&raw),
        }
    } else {
        scale(&raw)
    };
    let mut weights = weights.into_iter();
    groups
        .into_iter()
        .flat_map(|g| g.endpoints)
        .map(|mut e| {
            e.weight = weights.next().unwrap_or(1);
            e
        })
        .collect()
}

/// Shares scaled so the largest is `u32::MAX`, none below 1.
fn scale(raw: &[f64]) -> Vec<u32> {
    let max = raw.iter().copied().fold(0.0, f64::max);
    raw.iter()
        .map(|x| {
            if max > 0.0 {
                ((x / max) * f64::from(u32::MAX)).round().max(1.0) as u32
            } else {
                1
            }
        })
        .collect()
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// An endpoint address: an IP socket address, or with `dns` a host name.
pub(super) fn address(
    doc: &Doc<'_>,
    path: &dyn Fn() -> String,
    a: Option<&envoy_types::pb::envoy::config::core::v3::Address>,
    dns: bool,
) -> Result<EndpointAddress, DecodeError> {
    let sa = match a.and_then(|a| a.address.as_ref()) {
        Some(XdsAddress::SocketAddress(sa)) => sa,
        Some(XdsAddress::Pipe(_)) => {
            return Err(doc.err(&join(&path(), "pipe"), "unix sockets are not supported"));
        }
        Some(XdsAddress::EnvoyInternalAddress(_)) => {
            return Err(doc.err(&join(&path(), "envoy_internal_address"), "not supported"));
        }
        None => return Err(doc.err(&path(), "unset")),
    };
    let spath = |field: &str| format!("{}.socket_address.{field}", path());
    if sa.protocol == Protocol::Udp as i32 {
        return Err(doc.err(&spath("protocol"), "UDP is not supported"));
    }
    if !sa.resolver_name.is_empty() {
        return Err(doc.err(
            &spath("resolver_name"),
            "custom resolvers are not supported",
        ));
    }
    let port = match &sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(*p)
            .map_err(|_| doc.err(&spath("port_value"), format!("{p} is not a port")))?,
        Some(PortSpecifier::NamedPort(n)) => {
            return Err(doc.err(
                &spath("named_port"),
                format!("{n:?}: named ports are not supported"),
            ));
        }
        None => return Err(doc.err(&spath("port_value"), "unset")),
    };
    match sa.address.parse::<IpAddr>() {
        Ok(ip) => Ok(EndpointAddress::Socket(SocketAddr::new(ip, port))),
        Err(_) if dns && is_host_name(&sa.address) => Ok(EndpointAddress::Dns {
            host: Arc::from(sa.address.as_str()),
            port,
        }),
        Err(_) => Err(doc.err(
            &spath("address"),
            format!(
                "{:?} is not an IP address{}",
                sa.address,
                if dns { " or host name" } else { "" }
            ),
        )),
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// gRFC A27: only `HEALTHY` and `UNKNOWN` endpoints take traffic.
fn health(status: i32) -> Health {
    match HealthStatus::try_from(status) {
        Ok(HealthStatus::Unknown) => Health::Unknown,
        Ok(HealthStatus::Healthy) => Health::Healthy,
        Ok(HealthStatus::Draining) => Health::Draining,
        _ => Health::Unhealthy,
    }
}

/// The string values of the `envoy.lb` filter metadata.
fn labels(m: Option<&Metadata>) -> Labels {
    let Some(s) = m.and_then(|m| m.filter_metadata.get("envoy.lb")) else {
        return Labels::default();
    };
    Labels::new(s.fields.iter().filter_map(|(k, v)| match &v.kind {
        Some(Kind::StringValue(v)) => Some((k.as_str(), v.as_str())),
        _ => None,
    }))
}
