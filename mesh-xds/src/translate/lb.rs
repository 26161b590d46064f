//! A `Cluster`'s load-balancing policy → [`LbPolicy`] (and slow start).
//!
//! Two places carry it. The `load_balancing_policy` list of typed
//! extensions (gRFC A52, A56) wins when set: its first entry of a supported
//! type is used, entries of unsupported types are skipped, and a list with
//! none supported makes the cluster invalid. Otherwise the `lb_policy` enum
//! with its `lb_config` applies (gRFC A42 for `RING_HASH`, A48 for
//! `LEAST_REQUEST`). Both are validated as gRPC does: ring hash only with
//! xxHash and ring sizes up to 8M with `min <= max` (A42), least request
//! with `choice_count >= 2` (A48), a prime Maglev table (Envoy).
//!
//! `wrr_locality` (A52) delegates to its child policy: locality weights are
//! already folded into the endpoints' effective weights by the EDS
//! translation ([`super::endpoint`]), so the child alone picks.
//! `pick_first` and `client_side_weighted_round_robin` have no model
//! counterpart and are skipped like unknown types.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    LbConfig, LbPolicy as XdsLbPolicy, SlowStartConfig, ring_hash_lb_config,
};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::SlowStartConfig as TypedSlowStartConfig;
use envoy_types::pb::envoy::extensions::load_balancing_policies::{
    least_request::v3::LeastRequest, maglev::v3::Maglev, random::v3::Random,
    ring_hash::v3::RingHash, ring_hash::v3::ring_hash::HashFunction, round_robin::v3::RoundRobin,
    wrr_locality::v3::WrrLocality,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration};
use mesh_core::model::{HashKey, LbPolicy, SlowStart};
use prost::{Message, Name};

use super::values::{Doc, duration, join, percent};
use crate::resource::DecodeError;

/// The header that stands for "the hash of the route's `hash_policy`" in a
/// consistent-hash policy translated from CDS.
///
/// In xDS the hash key is a property of the route (`RouteAction.hash_policy`,
/// gRFC A42), not of the cluster; the model keeps it on the cluster (Istio's
/// `consistentHash`). A `RING_HASH` or `MAGLEV` cluster from CDS therefore
/// carries this placeholder key; whoever assembles routes and clusters
/// replaces it by the route's policy. A request never carries this header, so
/// a cluster left with the placeholder hashes each request at random, which
/// is what gRFC A42 specifies when no hash policy applies.
pub const ROUTE_HASH_POLICY_HEADER: &str = "x-mesh-xds-route-hash-policy";

/// gRFC A42: ring sizes above 8M (8,388,608) are rejected.
const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's defaults for `minimum_ring_size` and `maximum_ring_size`.
const DEFAULT_MIN_RING: u64 = 1024;
const DEFAULT_MAX_RING: u64 = MAX_RING_SIZE;
/// Envoy's Maglev `table_size` default and upper bound.
const DEFAULT_MAGLEV_TABLE: u64 = 65_537;
const MAX_MAGLEV_TABLE: u64 = 5_000_011;
/// gRFC A52: nesting depth of `load_balancing_policy` beyond which the
/// config is invalid.
const MAX_DEPTH: usize = 16;

/// The placeholder hash key (see [`ROUTE_HASH_POLICY_HEADER`]).
pub(super) fn route_hash_key() -> HashKey {
    HashKey::Header(http::HeaderName::from_static(ROUTE_HASH_POLICY_HEADER))
}

/// The policy and slow-start window of `c`.
pub(super) fn lb_policy(
    doc: &mut Doc<'_>,
    c: &Cluster,
) -> Result<(LbPolicy, Option<SlowStart>), DecodeError> {
    if let Some(lbp) = &c.load_balancing_policy {
        if c.lb_policy != XdsLbPolicy::RoundRobin as i32
            && c.lb_policy != XdsLbPolicy::LoadBalancingPolicyConfig as i32
        {
            doc.ignore("lb_policy (load_balancing_policy takes precedence, gRFC A52)");
        }
        doc.ignore_if(
            c.lb_config.is_some(),
            "lb_config (load_balancing_policy takes precedence, gRFC A52)",
        );
        return match typed_list(doc, "load_balancing_policy", lbp, 0)? {
            Some(p) => Ok(p),
            None => Err(doc.err(
                "load_balancing_policy.policies",
                format!(
                    "no supported policy among [{}]",
                    lbp.policies
                        .iter()
                        .map(|p| p
                            .typed_extension_config
                            .as_ref()
                            .and_then(|t| t.typed_config.as_ref())
                            .map_or("<unset>", |a| a.type_url.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        };
    }
    let policy = XdsLbPolicy::try_from(c.lb_policy).map_err(|_| {
        doc.err(
            "lb_policy",
            format!(
                "unknown value {} (NACKed as unsupported, gRFC A27)",
                c.lb_policy
            ),
        )
    })?;
    let cfg = c.lb_config.as_ref();
    let mismatch = |doc: &Doc<'_>| -> Result<(LbPolicy, Option<SlowStart>), DecodeError> {
        Err(doc.err(
            "lb_config",
            format!("does not match lb_policy {}", policy.as_str_name()),
        ))
    };
    match policy {
        XdsLbPolicy::RoundRobin => match cfg {
            None => Ok((LbPolicy::RoundRobin, None)),
            Some(LbConfig::RoundRobinLbConfig(rr)) => Ok((
                LbPolicy::RoundRobin,
                slow_start(
                    doc,
                    "lb_config.round_robin_lb_config.slow_start_config",
                    rr.slow_start_config.as_ref(),
                )?,
            )),
            Some(_) => mismatch(doc),
        },
        XdsLbPolicy::LeastRequest => match cfg {
            None => Ok((LbPolicy::LeastRequest { choice_count: 2 }, None)),
            Some(LbConfig::LeastRequestLbConfig(lr)) => {
                let path = "lb_config.least_request_lb_config";
                doc.ignore_if(
                    lr.active_request_bias.is_some(),
                    &join(path, "active_request_bias"),
                );
                Ok((
                    least_request(doc, path, lr.choice_count.as_ref().map(|v| v.value))?,
                    slow_start(
                        doc,
                        &join(path, "slow_start_config"),
                        lr.slow_start_config.as_ref(),
                    )?,
                ))
            }
            Some(_) => mismatch(doc),
        },
        XdsLbPolicy::RingHash => match cfg {
            None => Ok((ring_hash(doc, "lb_config", None, None)?, None)),
            Some(LbConfig::RingHashLbConfig(rh)) => {
                let path = "lb_config.ring_hash_lb_config";
                let xx = rh.hash_function == ring_hash_lb_config::HashFunction::XxHash as i32;
                if !xx {
                    return Err(doc.err(
                        &join(path, "hash_function"),
                        format!(
                            "{} is not supported: only XX_HASH (gRFC A42)",
                            ring_hash_lb_config::HashFunction::try_from(rh.hash_function)
                                .map_or("unknown", |h| h.as_str_name())
                        ),
                    ));
                }
                Ok((
                    ring_hash(
                        doc,
                        path,
                        rh.minimum_ring_size.as_ref().map(|v| v.value),
                        rh.maximum_ring_size.as_ref().map(|v| v.value),
                    )?,
                    None,
                ))
            }
            Some(_) => mismatch(doc),
        },
        XdsLbPolicy::Random => match cfg {
            None => Ok((LbPolicy::Random, None)),
            Some(_) => mismatch(doc),
        },
        XdsLbPolicy::Maglev => match cfg {
            None => Ok((maglev(doc, "lb_config", None)?, None)),
            Some(LbConfig::MaglevLbConfig(m)) => Ok((
                maglev(
                    doc,
                    "lb_config.maglev_lb_config",
                    m.table_size.as_ref().map(|v| v.value),
                )?,
                None,
            )),
            Some(_) => mismatch(doc),
        },
        XdsLbPolicy::ClusterProvided => Err(doc.err(
            "lb_policy",
            format!("{} is not supported (gRFC A27)", policy.as_str_name()),
        )),
        XdsLbPolicy::LoadBalancingPolicyConfig => Err(doc.err(
            "lb_policy",
            "LOAD_BALANCING_POLICY_CONFIG without load_balancing_policy",
        )),
    }
}

/// The first supported policy of a `LoadBalancingPolicy` list, `None` when
/// no entry is of a supported type.
fn typed_list(
    doc: &mut Doc<'_>,
    path: &str,
    lbp: &LoadBalancingPolicy,
    depth: usize,
) -> Result<Option<(LbPolicy, Option<SlowStart>)>, DecodeError> {
    if depth >= MAX_DEPTH {
        return Err(doc.err(path, format!("nested deeper than {MAX_DEPTH} (gRFC A52)")));
    }
    for (i, p) in lbp.policies.iter().enumerate() {
        let ppath = format!("{path}.policies[{i}].typed_extension_config.typed_config");
        let Some(any) = p
            .typed_extension_config
            .as_ref()
            .and_then(|t| t.typed_config.as_ref())
        else {
            return Err(doc.err(&ppath, "unset"));
        };
        if let Some(found) = typed_policy(doc, &ppath, any, depth)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn decode_any<M: Message + Default>(
    doc: &Doc<'_>,
    path: &str,
    any: &Any,
) -> Result<M, DecodeError> {
    M::decode(any.value.as_slice())
        .map_err(|e| doc.err(path, format!("undecodable {}: {e}", any.type_url)))
}

/// One typed policy, `None` when its type is not supported.
fn typed_policy(
    doc: &mut Doc<'_>,
    path: &str,
    any: &Any,
    depth: usize,
) -> Result<Option<(LbPolicy, Option<SlowStart>)>, DecodeError> {
    let t = any.type_url.as_str();
    Ok(Some(if t == RoundRobin::type_url() {
        let rr: RoundRobin = decode_any(doc, path, any)?;
        doc.ignore_if(
            rr.locality_lb_config.is_some(),
            &join(path, "locality_lb_config"),
        );
        (
            LbPolicy::RoundRobin,
            slow_start(
                doc,
                &join(path, "slow_start_config"),
                rr.slow_start_config.as_ref(),
            )?,
        )
    } else if t == LeastRequest::type_url() {
        let lr: LeastRequest = decode_any(doc, path, any)?;
        doc.ignore_if(
            lr.active_request_bias.is_some(),
            &join(path, "active_request_bias"),
        );
        doc.ignore_if(
            lr.locality_lb_config.is_some(),
            &join(path, "locality_lb_config"),
        );
        doc.ignore_if(
            lr.enable_full_scan.is_some(),
            &join(path, "enable_full_scan"),
        );
        doc.ignore_if(lr.selection_method != 0, &join(path, "selection_method"));
        (
            least_request(doc, path, lr.choice_count.as_ref().map(|v| v.value))?,
            slow_start(
                doc,
                &join(path, "slow_start_config"),
                lr.slow_start_config.as_ref(),
            )?,
        )
    } else if t == RingHash::type_url() {
        let rh: RingHash = decode_any(doc, path, any)?;
        let xx = matches!(
            HashFunction::try_from(rh.hash_function),
            Ok(HashFunction::DefaultHash | HashFunction::XxHash)
        );
        if !xx {
            return Err(doc.err(
                &join(path, "hash_function"),
                format!(
                    "{} is not supported: only XX_HASH (gRFC A42)",
                    HashFunction::try_from(rh.hash_function).map_or("unknown", |h| h.as_str_name())
                ),
            ));
        }
        doc.ignore_if(
            rh.use_hostname_for_hashing,
            &join(path, "use_hostname_for_hashing"),
        );
        doc.ignore_if(
            rh.hash_balance_factor.is_some(),
            &join(path, "hash_balance_factor"),
        );
        doc.ignore_if(
            rh.consistent_hashing_lb_config.is_some(),
            &join(path, "consistent_hashing_lb_config"),
        );
        (
            ring_hash(
                doc,
                path,
                rh.minimum_ring_size.as_ref().map(|v| v.value),
                rh.maximum_ring_size.as_ref().map(|v| v.value),
            )?,
            None,
        )
    } else if t == Maglev::type_url() {
        let m: Maglev = decode_any(doc, path, any)?;
        doc.ignore_if(
            m.consistent_hashing_lb_config.is_some(),
            &join(path, "consistent_hashing_lb_config"),
        );
        (
            maglev(doc, path, m.table_size.as_ref().map(|v| v.value))?,
            None,
        )
    } else if t == Random::type_url() {
        let r: Random = decode_any(doc, path, any)?;
        doc.ignore_if(
            r.locality_lb_config.is_some(),
            &join(path, "locality_lb_config"),
        );
        (LbPolicy::Random, None)
    } else if t == WrrLocality::type_url() {
        let w: WrrLocality = decode_any(doc, path, any)?;
        let child_path = join(path, "endpoint_picking_policy");
        let Some(child) = &w.endpoint_picking_policy else {
            return Err(doc.err(&child_path, "unset"));
        };
        return typed_list(doc, &child_path, child, depth + 1);
    } else {
        return Ok(None);
    }))
}

/// gRFC A48: `choice_count` defaults to 2 and must be at least 2.
fn least_request(
    doc: &Doc<'_>,
    path: &str,
    choice_count: Option<u32>,
) -> Result<LbPolicy, DecodeError> {
    let choice_count = choice_count.unwrap_or(2);
    if choice_count < 2 {
        return Err(doc.err(
            &join(path, "choice_count"),
            format!("{choice_count} is below 2 (gRFC A48)"),
        ));
    }
    Ok(LbPolicy::LeastRequest { choice_count })
}

/// gRFC A42: sizes default to 1024 and 8M, at most 8M, `min <= max`.
fn ring_hash(
    doc: &Doc<'_>,
    path: &str,
    min: Option<u64>,
    max: Option<u64>,
) -> Result<LbPolicy, DecodeError> {
    let min = min.unwrap_or(DEFAULT_MIN_RING);
    let max = max.unwrap_or(DEFAULT_MAX_RING);
    for (field, v) in [("minimum_ring_size", min), ("maximum_ring_size", max)] {
        if v == 0 || v > MAX_RING_SIZE {
            return Err(doc.err(
                &join(path, field),
                format!("{v} is out of range (1 to {MAX_RING_SIZE}, gRFC A42)"),
            ));
        }
    }
    if min > max {
        return Err(doc.err(
            &join(path, "minimum_ring_size"),
            format!("{min} is above maximum_ring_size {max} (gRFC A42)"),
        ));
    }
    Ok(LbPolicy::RingHash {
        key: route_hash_key(),
        minimum_ring_size: min,
        maximum_ring_size: max,
    })
}

/// Envoy: the Maglev table size is a prime, at most 5000011.
fn maglev(doc: &Doc<'_>, path: &str, table_size: Option<u64>) -> Result<LbPolicy, DecodeError> {
    let table_size = table_size.unwrap_or(DEFAULT_MAGLEV_TABLE);
    if table_size > MAX_MAGLEV_TABLE || !is_prime(table_size) {
        return Err(doc.err(
            &join(path, "table_size"),
            format!("{table_size} is not a prime at most {MAX_MAGLEV_TABLE}"),
        ));
    }
    Ok(LbPolicy::Maglev {
        key: route_hash_key(),
        table_size,
    })
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// Envoy `SlowStartConfig` → [`SlowStart`]: the window (none without
/// one), `aggression` 1.0 and `min_weight_percent` 10 by default.
fn slow_start<S: SlowStartFields>(
    doc: &Doc<'_>,
    path: &str,
    s: Option<&S>,
) -> Result<Option<SlowStart>, DecodeError> {
    let Some(s) = s else { return Ok(None) };
    let (window, aggression, min_weight) = s.fields();
    let Some(w) = window else {
        return Ok(None);
    };
    let window = duration(doc, &join(path, "slow_start_window"), w)?;
    if window == Duration::ZERO {
        return Ok(None);
    }
    let aggression = aggression.unwrap_or(1.0);
    if !(aggression.is_finite() && aggression > 0.0) {
        return Err(doc.err(
            &join(path, "aggression"),
            format!("{aggression} must be a positive number"),
        ));
    }
    let min_weight_percent = match min_weight {
        Some(p) => percent(doc, &join(path, "min_weight_percent"), p)?,
        None => 10,
    };
    Ok(Some(SlowStart {
        window,
        min_weight_percent,
        aggression,
    }))
}

/// The cluster's and the typed policies' `SlowStartConfig` (two protobuf
/// types with the same fields).
trait SlowStartFields {
    fn fields(&self) -> (Option<&ProtoDuration>, Option<f64>, Option<&Percent>);
}

impl SlowStartFields for SlowStartConfig {
    fn fields(&self) -> (Option<&ProtoDuration>, Option<f64>, Option<&Percent>) {
        (
            self.slow_start_window.as_ref(),
            self.aggression.as_ref().map(|a| a.default_value),
            self.min_weight_percent.as_ref(),
        )
    }
}

impl SlowStartFields for TypedSlowStartConfig {
    fn fields(&self) -> (Option<&ProtoDuration>, Option<f64>, Option<&Percent>) {
        (
            self.slow_start_window.as_ref(),
            self.aggression.as_ref().map(|a| a.default_value),
            self.min_weight_percent.as_ref(),
        )
    }
}
