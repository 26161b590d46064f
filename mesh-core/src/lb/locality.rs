//! Locality-aware balancing (Istio `localityLbSetting`, Envoy priorities
//! and locality weights): which endpoints a client prefers, from its own
//! locality and labels.
//!
//! - **Failover** (Istio's default once outlier detection is on): each
//!   endpoint gets a priority, 0 for the client's own region, zone and
//!   subzone, 1 for its zone, 2 for its region, 3 for the region a
//!   `failover` rule names for the client's region, 4 for the rest
//!   (Istio `applyLocalityFailover`); with `failoverPriority` labels, the
//!   priority is the number of listed labels, in order, before the first
//!   one whose value differs from the client's. Empty levels are
//!   dropped. Traffic goes to the best level while it is healthy and
//!   spills to the next as endpoints are ejected, by Envoy's priority
//!   load with overprovisioning factor 1.4 ([`priority_load`]).
//! - **Distribute**: the first rule whose `from` matches the client's
//!   locality splits traffic over its `to` localities by weight; endpoints
//!   in no `to` locality get none.

use crate::model::{Endpoint, Labels, Locality, LocalityLbSetting};

/// Envoy's default overprovisioning factor, 140%.
pub const OVERPROVISIONING_PERCENT: u64 = 140;

/// Whether `locality` matches `pattern` (`region/zone/subzone`; a
/// trailing `*` or a shorter pattern matches any rest).
pub fn matches(pattern: &str, locality: &Locality) -> bool {
    let parts = [&*locality.region, &*locality.zone, &*locality.sub_zone];
    for (i, p) in pattern.split('/').enumerate() {
        if p == "*" {
            return true;
        }
        if i >= 3 || parts[i] != p {
            return false;
        }
    }
    true
}

/// The value of a `failoverPriority` label: the topology labels name
/// locality parts, other labels come from `labels`.
fn label<'a>(key: &str, locality: &'a Locality, labels: &'a Labels) -> Option<&'a str> {
    match key {
        "topology.kubernetes.io/region" => Some(&locality.region),
        "topology.kubernetes.io/zone" => Some(&locality.zone),
        "topology.istio.io/subzone" => Some(&locality.sub_zone),
        _ => labels.get(key),
    }
}

/// The failover priority of each endpoint for a client at `local` with
/// `local_labels`, compacted so that levels are 0, 1, 2, … with none
/// empty.
pub fn priorities(
    local: &Locality,
    local_labels: &Labels,
    setting: &LocalityLbSetting,
    endpoints: &[&Endpoint],
) -> Vec<u32> {
    let raw: Vec<u32> = endpoints
        .iter()
        .map(|e| {
            if !setting.failover_priority.is_empty() {
                let matched = setting
                    .failover_priority
                    .iter()
                    .take_while(|k| {
                        label(k, &e.locality, &e.labels).is_some_and(|v| {
                            label(k, local, local_labels).is_some_and(|mine| mine == v)
                        })
                    })
                    .count();
                return (setting.failover_priority.len() - matched) as u32;
            }
            let l = &e.locality;
            let failover_to = setting
                .failover
                .iter()
                .find(|(from, _)| **from == *local.region)
                .map(|(_, to)| to);
            if l.region == local.region && l.zone == local.zone && l.sub_zone == local.sub_zone {
                0
            } else if l.region == local.region && l.zone == local.zone {
                1
            } else if l.region == local.region {
                2
            } else if failover_to.is_some_and(|to| **to == *l.region) {
                3
            } else {
                4
            }
        })
        .collect();
    let mut levels: Vec<u32> = raw.clone();
    levels.sort_unstable();
    levels.dedup();
    raw.iter()
        .map(|p| levels.iter().position(|l| l == p).unwrap_or(0) as u32)
        .collect()
}

/// For a client at `local`, the weight of each endpoint's `to` group under
/// the first matching `distribute` rule: `Some((group, weight))`, or
/// `None` for endpoints in no `to` locality. `None` overall when no rule
/// applies to the client.
pub fn distribution(
    local: &Locality,
    setting: &LocalityLbSetting,
    endpoints: &[&Endpoint],
) -> Option<Vec<Option<(u32, u32)>>> {
    let (_, to) = setting
        .distribute
        .iter()
        .find(|(from, _)| matches(from, local))?;
    Some(
        endpoints
            .iter()
            .map(|e| {
                to.iter()
                    .position(|(pattern, _)| matches(pattern, &e.locality))
                    .map(|g| (g as u32, to[g].1))
            })
            .collect(),
    )
}

/// Envoy's priority load: the percent of traffic each level gets, from
/// `(healthy, total)` endpoints per level, best level first. A level takes
/// `healthy / total × 140%` of what the better levels left; when the
/// levels together cannot take 100% the loads are scaled up to it.
/// Writes into `out` (one entry per level) and returns the sum.
pub fn priority_load(health: impl Iterator<Item = (u32, u32)>, out: &mut [u64]) -> u64 {
    let mut left = 100u64;
    let mut sum = 0;
    for ((healthy, total), slot) in health.zip(out.iter_mut()) {
        let capacity = if total == 0 {
            0
        } else {
            u64::from(healthy) * OVERPROVISIONING_PERCENT / u64::from(total)
        };
        let load = capacity.min(left);
        left -= load;
        *slot = load;
        sum += load;
    }
    sum
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;

    fn ep(loc: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            locality: Locality::parse(loc),
            labels: Labels::new(labels.to_vec()),
            ..Endpoint::socket(SocketAddr::from(([10, 0, 0, 1], 80)))
        }
    }

    #[test]
    fn patterns_match_by_prefix_and_wildcard() {
        let l = Locality::parse("us-west/zone1/a");
        assert!(matches("us-west/zone1/a", &l));
        assert!(matches("us-west/zone1/*", &l));
        assert!(matches("us-west/*", &l));
        assert!(matches("*", &l));
        assert!(matches("us-west", &l));
        assert!(!matches("us-west/zone2/*", &l));
        assert!(!matches("us-east/*", &l));
    }

    #[test]
    fn failover_levels_follow_istio_and_are_compacted() {
        let local = Locality::parse("us-west/zone1/a");
        let eps = [
            ep("us-west/zone1/a", &[]),
            ep("us-west/zone1/b", &[]),
            ep("us-west/zone2/a", &[]),
            ep("us-east/zone1/a", &[]),
            ep("eu/zone1/a", &[]),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let plain = LocalityLbSetting::default();
        assert_eq!(
            priorities(&local, &Labels::default(), &plain, &refs),
            [0, 1, 2, 3, 3]
        );
        let failover = LocalityLbSetting {
            failover: Arc::from([(Arc::from("us-west"), Arc::from("eu"))]),
            ..LocalityLbSetting::default()
        };
        assert_eq!(
            priorities(&local, &Labels::default(), &failover, &refs),
            [0, 1, 2, 4, 3],
            "the failover region comes before the others"
        );
    }

    #[test]
    fn failover_priority_counts_matching_labels_in_order() {
        let local = Locality::parse("us-west/zone1/a");
        let mine = Labels::new(vec![("network", "n1")]);
        let eps = [
            ep("us-west/zone1/a", &[("network", "n1")]),
            ep("us-west/zone2/a", &[("network", "n1")]),
            ep("us-west/zone1/a", &[("network", "n2")]),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let s = LocalityLbSetting {
            failover_priority: Arc::from([
                Arc::from("network"),
                Arc::from("topology.kubernetes.io/zone"),
            ]),
            ..LocalityLbSetting::default()
        };
        assert_eq!(priorities(&local, &mine, &s, &refs), [0, 1, 2]);
    }

    #[test]
    fn distribute_assigns_groups_from_the_first_matching_rule() {
        let s = LocalityLbSetting {
            distribute: Arc::from([(
                Arc::from("us-west/zone1/*"),
                Arc::from([
                    (Arc::from("us-west/zone1/*"), 80),
                    (Arc::from("us-west/zone2/*"), 20),
                ]),
            )]),
            ..LocalityLbSetting::default()
        };
        let eps = [
            ep("us-west/zone1/a", &[]),
            ep("us-west/zone2/a", &[]),
            ep("us-east/zone1/a", &[]),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        assert_eq!(
            distribution(&Locality::parse("us-west/zone1/x"), &s, &refs),
            Some(vec![Some((0, 80)), Some((1, 20)), None])
        );
        assert_eq!(distribution(&Locality::parse("eu/z/x"), &s, &refs), None);
    }

    #[test]
    fn priority_load_spills_with_overprovisioning() {
        let mut out = [0; 3];
        assert_eq!(priority_load([(10, 10), (5, 5)].into_iter(), &mut out), 100);
        assert_eq!(out[..2], [100, 0]);
        // 5 of 10 healthy: 70% stays, 30% spills (Envoy's example).
        priority_load([(5, 10), (5, 5)].into_iter(), &mut out);
        assert_eq!(out[..2], [70, 30]);
        // Everything degraded: the loads sum to less than 100.
        assert_eq!(priority_load([(1, 10), (0, 5)].into_iter(), &mut out), 14);
    }
}
