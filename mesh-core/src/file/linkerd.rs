//! Linkerd's `ServiceProfile` and SMI's `TrafficSplit` in the same file
//! as the Istio kinds, translated into the same model.
//!
//! - `ServiceProfile` (`linkerd.io/v1alpha2`), named by the service's
//!   FQDN: each of `spec.routes` becomes a route on the service's virtual
//!   hosts, tried in order, before a catch-all `default` route (Linkerd's
//!   `[DEFAULT]` route). `condition` (`pathRegex`, `method`, `all`, `any`)
//!   becomes match clauses (`any` is a list of clauses, `all` merges its
//!   parts into each clause; a `not` has no equivalent in the route model
//!   and is an error naming it). `timeout` is the route timeout, 10 s when
//!   unset (linkerd.io "Service Profiles" reference: "If unspecified, the
//!   default timeout is 10 seconds"). `responseClasses` decide what is a
//!   failure (default: any 5xx) and are kept on the forward action for
//!   retries and outlier detection. `isRetryable: true` retries failures
//!   (the failing statuses of the response classes, resets, connect
//!   failures, and gRPC's retryable codes), for any method, bounded only
//!   by the retry budget and the route timeout, as in Linkerd.
//!   `retryBudget` (`retryRatio`, `minRetriesPerSecond`, `ttl`, each
//!   defaulting to Linkerd's 0.2, 10 and 10s) becomes the budget of the
//!   service's clusters.
//! - `TrafficSplit` (`split.smi-spec.io` `v1alpha1` to `v1alpha4`): the
//!   apex `service`'s routes go to the `backends` services with their
//!   weights, like a VirtualService split. Weights are Kubernetes
//!   quantities (`900m`, `1`, `0.5`) or integers; all are compared in
//!   thousandths. `matches` (HTTPRouteGroup references) is an error.
//!
//! A host routed by a VirtualService cannot also have a ServiceProfile or
//! TrafficSplit: the two would disagree on the routes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::duration;
use super::yaml::{Fields, Obj};
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{
    ForwardAction, PathMatch, Regex, ResponseClass, ResponseCondition, RetryBudget,
    RetryConditions, RetryOn, RetryPolicy, Route, RouteAction, RouteMatch, StringMatch,
    WeightedClusters,
};

/// linkerd.io "Service Profiles" reference: a route's default timeout.
pub(crate) const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(10);

const SMI_VERSIONS: &[&str] = &[
    "split.smi-spec.io/v1alpha1",
    "split.smi-spec.io/v1alpha2",
    "split.smi-spec.io/v1alpha3",
    "split.smi-spec.io/v1alpha4",
];

/// Whether `group` is one of the Linkerd/SMI groups handled here.
pub(crate) fn is_linkerd_group(group: &str) -> bool {
    matches!(group, "linkerd.io" | "split.smi-spec.io")
}

/// Checks the kind and version of a Linkerd/SMI document.
pub(crate) fn check_kind(api_version: &str, kind: &str) -> Result<(), InvalidConfig> {
    let ok = match kind {
        "ServiceProfile" => api_version == "linkerd.io/v1alpha2",
        "TrafficSplit" => SMI_VERSIONS.contains(&api_version),
        _ => {
            return Err(InvalidConfig::new(
                FieldPath::root().field("kind"),
                format!(
                    "kind {kind} ({api_version}) is not supported (expected ServiceProfile or TrafficSplit)"
                ),
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        let expected = if kind == "ServiceProfile" {
            "linkerd.io/v1alpha2".to_owned()
        } else {
            SMI_VERSIONS.join(", ")
        };
        Err(InvalidConfig::new(
            FieldPath::root().field("apiVersion"),
            format!("unsupported version {api_version:?} for {kind} (expected {expected})"),
        ))
    }
}

/// A translated ServiceProfile.
#[derive(Clone, Debug)]
pub(crate) struct ServiceProfile {
    routes: Vec<ProfileRoute>,
    pub(crate) budget: Option<RetryBudget>,
}

#[derive(Clone, Debug)]
struct ProfileRoute {
    name: Arc<str>,
    matches: Vec<RouteMatch>,
    retryable: bool,
    timeout: Duration,
    classes: Arc<[ResponseClass]>,
}

/// A translated TrafficSplit: backend FQDNs with their weights.
#[derive(Clone, Debug)]
pub(crate) struct TrafficSplit {
    pub(crate) backends: Vec<Backend>,
}

/// One backend of a split.
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    pub(crate) path: FieldPath,
    pub(crate) service: String,
    pub(crate) weight: u32,
}

fn err(path: FieldPath, msg: impl Into<String>) -> InvalidConfig {
    InvalidConfig::new(path, msg)
}

/// A ServiceProfile's `spec`.
pub(crate) fn service_profile(
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<ServiceProfile, InvalidConfig> {
    spec.check_fields(
        &Fields {
            supported: &["routes", "retryBudget"],
            unsupported: &[],
            ignored: &["opaquePorts", "dstOverrides"],
        },
        errors,
        warnings,
    );
    for key in ["opaquePorts", "dstOverrides"] {
        if spec.get(key).is_some() {
            return Err(err(spec.path.field(key), "not supported"));
        }
    }
    let mut routes = Vec::new();
    for (i, v) in spec.list("routes")?.iter().enumerate() {
        let path = spec.path.field("routes").index(i);
        let r = Obj::new(v, &path)?;
        r.check_fields(
            &Fields {
                supported: &[
                    "name",
                    "condition",
                    "responseClasses",
                    "isRetryable",
                    "timeout",
                ],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let name = r.req_str("name")?;
        let cpath = path.field("condition");
        let condition = r
            .obj("condition", &cpath)?
            .ok_or_else(|| err(cpath.clone(), "required"))?;
        let matches = request_match(condition, errors, warnings)?;
        let timeout = match r.str("timeout")? {
            Some(t) => {
                let d = duration::parse(t).map_err(|m| err(path.field("timeout"), m))?;
                if d.is_zero() {
                    return Err(err(path.field("timeout"), "must be greater than 0"));
                }
                d
            }
            None => DEFAULT_ROUTE_TIMEOUT,
        };
        let mut classes = Vec::new();
        for (ci, cv) in r.list("responseClasses")?.iter().enumerate() {
            let rcpath = path.field("responseClasses").index(ci);
            let rc = Obj::new(cv, &rcpath)?;
            rc.check_fields(
                &Fields {
                    supported: &["condition", "isFailure"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            let ccpath = rcpath.field("condition");
            let cond = rc
                .obj("condition", &ccpath)?
                .ok_or_else(|| err(ccpath.clone(), "required"))?;
            classes.push(ResponseClass {
                condition: response_match(cond, errors, warnings)?,
                is_failure: rc.bool("isFailure")?.unwrap_or(false),
            });
        }
        routes.push(ProfileRoute {
            name: name.into(),
            matches,
            retryable: r.bool("isRetryable")?.unwrap_or(false),
            timeout,
            classes: classes.into(),
        });
    }
    let bpath = spec.path.field("retryBudget");
    let budget = match spec.obj("retryBudget", &bpath)? {
        None => None,
        Some(b) => {
            b.check_fields(
                &Fields {
                    supported: &["retryRatio", "minRetriesPerSecond", "ttl"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            let mut budget = RetryBudget::default();
            match b.get("retryRatio") {
                None => {}
                Some(Value::Number(n))
                    if n.as_f64().is_some_and(|r| (0.0..=1000.0).contains(&r)) =>
                {
                    budget.ratio = n.as_f64().unwrap_or(budget.ratio);
                }
                Some(_) => {
                    return Err(err(
                        bpath.field("retryRatio"),
                        "expected a non-negative number such as 0.2",
                    ));
                }
            }
            if let Some(m) = b.int("minRetriesPerSecond", 0, i64::from(u32::MAX))? {
                budget.min_per_second = m as u32;
            }
            if let Some(t) = b.str("ttl")? {
                let ttl = duration::parse(t).map_err(|m| err(bpath.field("ttl"), m))?;
                if ttl.is_zero() {
                    return Err(err(bpath.field("ttl"), "must be greater than 0"));
                }
                budget.ttl = ttl;
            }
            Some(budget)
        }
    };
    Ok(ServiceProfile { routes, budget })
}

/// A `RequestMatch` as match clauses in disjunctive normal form.
fn request_match(
    c: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Vec<RouteMatch>, InvalidConfig> {
    c.check_fields(
        &Fields {
            supported: &["pathRegex", "method", "all", "any", "not"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let set: Vec<&str> = ["pathRegex", "method", "all", "any", "not"]
        .into_iter()
        .filter(|k| c.get(k).is_some())
        .collect();
    // linkerd.io: "A request match object must contain exactly one of the
    // following fields".
    if set.len() != 1 {
        return Err(err(
            c.path.clone(),
            format!(
                "exactly one of pathRegex, method, all, any and not is required, found {}",
                if set.is_empty() {
                    "none".to_owned()
                } else {
                    set.join(" and ")
                }
            ),
        ));
    }
    match set[0] {
        "pathRegex" => {
            let p = c.req_str("pathRegex")?;
            let re = Regex::try_new(p, false).map_err(|e| e.within(&c.path.field("pathRegex")))?;
            Ok(vec![RouteMatch::path(PathMatch::Regex(re))])
        }
        "method" => {
            let m = c.req_str("method")?;
            Ok(vec![RouteMatch {
                method: Some(StringMatch::Exact(m.to_ascii_uppercase().into())),
                ..RouteMatch::any()
            }])
        }
        "not" => Err(err(
            c.path.field("not"),
            "not supported: routes cannot negate a condition",
        )),
        "any" => {
            let mut out = Vec::new();
            for (i, v) in c.list("any")?.iter().enumerate() {
                let p = c.path.field("any").index(i);
                out.extend(request_match(Obj::new(v, &p)?, errors, warnings)?);
            }
            if out.is_empty() {
                return Err(err(
                    c.path.field("any"),
                    "at least one condition is required",
                ));
            }
            Ok(out)
        }
        _ => {
            let mut acc = vec![RouteMatch::any()];
            for (i, v) in c.list("all")?.iter().enumerate() {
                let p = c.path.field("all").index(i);
                let part = request_match(Obj::new(v, &p)?, errors, warnings)?;
                let mut next = Vec::with_capacity(acc.len() * part.len());
                for a in &acc {
                    for b in &part {
                        next.push(merge(a, b).ok_or_else(|| {
                            err(
                                p.clone(),
                                "not supported: two path (or two method) conditions in one all",
                            )
                        })?);
                    }
                }
                acc = next;
            }
            Ok(acc)
        }
    }
}

/// Both clauses at once, when the model can say it.
fn merge(a: &RouteMatch, b: &RouteMatch) -> Option<RouteMatch> {
    let path = match (&a.path, &b.path) {
        (PathMatch::Any, p) | (p, PathMatch::Any) => p.clone(),
        _ => return None,
    };
    let method = match (&a.method, &b.method) {
        (None, m) | (m, None) => m.clone(),
        _ => return None,
    };
    Some(RouteMatch {
        path,
        method,
        ..RouteMatch::any()
    })
}

/// A `ResponseMatch`.
fn response_match(
    c: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<ResponseCondition, InvalidConfig> {
    c.check_fields(
        &Fields {
            supported: &["status", "all", "any", "not"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let set: Vec<&str> = ["status", "all", "any", "not"]
        .into_iter()
        .filter(|k| c.get(k).is_some())
        .collect();
    if set.len() != 1 {
        return Err(err(
            c.path.clone(),
            "exactly one of status, all, any and not is required",
        ));
    }
    let list = |key: &str,
                errors: &mut Vec<InvalidConfig>,
                warnings: &mut Vec<InvalidConfig>|
     -> Result<Arc<[ResponseCondition]>, InvalidConfig> {
        c.list(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let p = c.path.field(key).index(i);
                response_match(Obj::new(v, &p)?, errors, warnings)
            })
            .collect()
    };
    Ok(match set[0] {
        "status" => {
            let spath = c.path.field("status");
            let s = c
                .obj("status", &spath)?
                .ok_or_else(|| err(spath.clone(), "required"))?;
            s.check_fields(
                &Fields {
                    supported: &["min", "max"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            let min = s.int("min", 100, 599)?.unwrap_or(100) as u16;
            let max = s.int("max", 100, 599)?.unwrap_or(599) as u16;
            if min > max {
                return Err(err(spath, format!("min {min} is above max {max}")));
            }
            ResponseCondition::Status { min, max }
        }
        "all" => ResponseCondition::All(list("all", errors, warnings)?),
        "any" => ResponseCondition::Any(list("any", errors, warnings)?),
        _ => {
            let npath = c.path.field("not");
            let n = c
                .obj("not", &npath)?
                .ok_or_else(|| err(npath.clone(), "required"))?;
            ResponseCondition::Not(Box::new(response_match(n, errors, warnings)?))
        }
    })
}

/// A Kubernetes quantity (`900m`, `1`, `0.5`, `2k`) or a number, in
/// thousandths.
pub(crate) fn weight_milli(v: &Value, path: &FieldPath) -> Result<u32, InvalidConfig> {
    let bad = || {
        err(
            path.clone(),
            format!("invalid weight {v}: expected an integer or a quantity such as 900m"),
        )
    };
    let milli: f64 = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)? * 1000.0,
        Value::String(s) => {
            let s = s.trim();
            let (num, scale) = if let Some(n) = s.strip_suffix('m') {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('k') {
                (n, 1_000_000.0)
            } else {
                (s, 1000.0)
            };
            num.parse::<f64>().map_err(|_| bad())? * scale
        }
        _ => return Err(bad()),
    };
    if !(0.0..=f64::from(u32::MAX)).contains(&milli) || milli.fract() != 0.0 {
        return Err(bad());
    }
    Ok(milli as u32)
}

/// A TrafficSplit's `spec`, with `fqdn` resolving a service name.
pub(crate) fn traffic_split(
    spec: Obj<'_>,
    fqdn: &dyn Fn(&str, FieldPath) -> Result<String, InvalidConfig>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<(String, TrafficSplit), InvalidConfig> {
    spec.check_fields(
        &Fields {
            supported: &["service", "backends"],
            unsupported: &[],
            ignored: &["matches"],
        },
        errors,
        warnings,
    );
    if spec.get("matches").is_some() {
        return Err(err(
            spec.path.field("matches"),
            "not supported (HTTPRouteGroup matches)",
        ));
    }
    let apex = fqdn(spec.req_str("service")?, spec.path.field("service"))?;
    let bpath = spec.path.field("backends");
    let values = spec.list("backends")?;
    if values.is_empty() {
        return Err(err(bpath, "at least one backend is required"));
    }
    let mut backends = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let path = bpath.index(i);
        let b = Obj::new(v, &path)?;
        b.check_fields(
            &Fields {
                supported: &["service", "weight"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let service = fqdn(b.req_str("service")?, path.field("service"))?;
        let weight = match b.get("weight") {
            Some(w) => weight_milli(w, &path.field("weight"))?,
            None => return Err(err(path.field("weight"), "required")),
        };
        backends.push(Backend {
            path,
            service,
            weight,
        });
    }
    if backends.iter().map(|b| u64::from(b.weight)).sum::<u64>() == 0 {
        return Err(err(bpath, "weights sum to 0"));
    }
    Ok((apex, TrafficSplit { backends }))
}

/// The retry policy of an `isRetryable` route: what its response classes
/// call failures (default 5xx), resets, connect failures and gRPC's
/// retryable codes; for every method; as many retries as the budget and
/// the route timeout allow.
fn retry_policy(classes: &[ResponseClass]) -> RetryPolicy {
    let probe = ForwardAction {
        response_classes: classes.into(),
        ..ForwardAction::to("probe")
    };
    let status_codes: Arc<[u16]> = (100..=599).filter(|s| probe.is_failure(*s)).collect();
    RetryPolicy {
        num_retries: u32::MAX,
        per_try_timeout: None,
        retry_on: RetryOn {
            conditions: RetryConditions::RESET
                .union(RetryConditions::CONNECT_FAILURE)
                .union(RetryConditions::RETRIABLE_STATUS_CODES)
                .union(RetryConditions::CANCELLED)
                .union(RetryConditions::DEADLINE_EXCEEDED)
                .union(RetryConditions::INTERNAL)
                .union(RetryConditions::RESOURCE_EXHAUSTED)
                .union(RetryConditions::UNAVAILABLE),
            status_codes,
        },
        backoff: Default::default(),
        ignore_previous_hosts: true,
        retry_non_idempotent: true,
    }
}

/// The routes of a service with `profile` (if any), forwarding to
/// `clusters`: the profile's routes in order, then Linkerd's default
/// route.
pub(crate) fn routes(profile: Option<&ServiceProfile>, clusters: &WeightedClusters) -> Vec<Route> {
    let mut out = Vec::new();
    for r in profile.map_or(&[][..], |p| &p.routes) {
        out.push(Route {
            name: Some(Arc::clone(&r.name)),
            matches: r.matches.clone().into(),
            action: RouteAction::Forward(Box::new(ForwardAction {
                retry: r.retryable.then(|| retry_policy(&r.classes)),
                response_classes: Arc::clone(&r.classes),
                ..ForwardAction::new(clusters.clone()).with_timeout(Some(r.timeout))
            })),
        });
    }
    out.push(Route {
        name: Some("default".into()),
        matches: Arc::from([]),
        action: RouteAction::Forward(Box::new(ForwardAction::new(clusters.clone()))),
    });
    out
}
