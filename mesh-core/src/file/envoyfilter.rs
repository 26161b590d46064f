//! Istio `EnvoyFilter` resources that insert Envoy's local rate limit
//! HTTP filter (`envoy.filters.http.local_ratelimit`), as Istio users
//! write them (istio.io "Enabling Rate Limits using Envoy", local rate
//! limit), translated into token buckets:
//!
//! - `match.context: SIDECAR_INBOUND` → a server listener with the
//!   bucket, for the workloads `workloadSelector.labels` selects (all
//!   when absent) on `match.listener.portNumber` (every port when absent);
//! - `match.context: SIDECAR_OUTBOUND` → the `rate_limit` of every client
//!   cluster on `match.listener.portNumber` (every port when absent), one
//!   bucket per cluster. **Deviation:** Envoy's filter on an outbound
//!   listener shares one bucket across the listener; the mesh limits per
//!   cluster, the unit the client stack and its state are keyed by. A
//!   `workloadSelector` is an error here: a mesh client has no workload
//!   labels to match.
//!
//! Only `applyTo: HTTP_FILTER` patches inserting that one filter are
//! understood; anything else (other `applyTo`, other filters, `GATEWAY`
//! or `ANY` contexts, the filter's `descriptors`, custom `status`, ...)
//! is an error naming the field, never silently dropped. The filter's
//! `filter_enabled` and `filter_enforced` default to 0% in Envoy ("for
//! safety"): a filter without them, or with 0%, limits nothing (with a
//! warning); 100% limits; a share in between is an error.

use serde_json::Value;

use super::duration;
use super::yaml::{Fields, Obj};
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{Labels, TokenBucket};

/// The filter this translation understands.
pub(crate) const LOCAL_RATELIMIT: &str = "envoy.filters.http.local_ratelimit";
const LOCAL_RATELIMIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const TYPED_STRUCTS: &[&str] = &[
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];
const HCM: &str = "envoy.filters.network.http_connection_manager";

/// Where a patch applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// Inbound: server listeners of the selected workloads.
    Inbound { selector: Labels },
    /// Outbound: client clusters.
    Outbound,
}

/// One local rate limit patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RateLimitPatch {
    pub(crate) side: Side,
    /// The port, or every port.
    pub(crate) port: Option<u16>,
    /// The bucket; `None` when the filter is not enabled (0%).
    pub(crate) bucket: Option<TokenBucket>,
}

fn err(path: FieldPath, msg: impl Into<String>) -> InvalidConfig {
    InvalidConfig::new(path, msg)
}

/// An EnvoyFilter's `spec`.
pub(crate) fn parse(
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Vec<RateLimitPatch>, InvalidConfig> {
    spec.check_fields(
        &Fields {
            supported: &["workloadSelector", "configPatches"],
            unsupported: &[],
            ignored: &["priority", "targetRefs"],
        },
        errors,
        warnings,
    );
    if spec.get("targetRefs").is_some() {
        return Err(err(spec.path.field("targetRefs"), "not supported"));
    }
    if spec.get("priority").is_some() {
        warnings.push(err(
            spec.path.field("priority"),
            "ignored: local rate limit patches do not depend on order",
        ));
    }
    let wpath = spec.path.field("workloadSelector");
    let selector = match spec.obj("workloadSelector", &wpath)? {
        Some(w) => {
            w.check_fields(
                &Fields {
                    supported: &["labels"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            Some(Labels::new(w.str_map("labels")?))
        }
        None => None,
    };
    let patches = spec.list("configPatches")?;
    if patches.is_empty() {
        return Err(err(
            spec.path.field("configPatches"),
            "at least one patch is required",
        ));
    }
    let mut out = Vec::new();
    for (i, v) in patches.iter().enumerate() {
        let path = spec.path.field("configPatches").index(i);
        let p = Obj::new(v, &path)?;
        out.push(patch(p, selector.as_ref(), &wpath, errors, warnings)?);
    }
    Ok(out)
}

fn patch(
    p: Obj<'_>,
    selector: Option<&Labels>,
    selector_path: &FieldPath,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<RateLimitPatch, InvalidConfig> {
    p.check_fields(
        &Fields {
            supported: &["applyTo", "match", "patch"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    match p.req_str("applyTo")? {
        "HTTP_FILTER" => {}
        other => {
            return Err(err(
                p.path.field("applyTo"),
                format!(
                    "{other} is not supported (only HTTP_FILTER patches inserting {LOCAL_RATELIMIT})"
                ),
            ));
        }
    }
    let mpath = p.path.field("match");
    let m = p
        .obj("match", &mpath)?
        .ok_or_else(|| err(mpath.clone(), "required"))?;
    m.check_fields(
        &Fields {
            supported: &["context", "listener"],
            unsupported: &[],
            ignored: &["proxy"],
        },
        errors,
        warnings,
    );
    if m.get("proxy").is_some() {
        warnings.push(err(
            mpath.field("proxy"),
            "ignored: there is no proxy version to match",
        ));
    }
    let side = match m.req_str("context")? {
        "SIDECAR_INBOUND" => Side::Inbound {
            selector: selector.cloned().unwrap_or_default(),
        },
        "SIDECAR_OUTBOUND" => {
            if selector.is_some() {
                return Err(err(
                    selector_path.clone(),
                    "not supported with SIDECAR_OUTBOUND: a mesh client has no workload labels to match",
                ));
            }
            Side::Outbound
        }
        other => {
            return Err(err(
                mpath.field("context"),
                format!("{other} is not supported (expected SIDECAR_INBOUND or SIDECAR_OUTBOUND)"),
            ));
        }
    };
    let lpath = mpath.field("listener");
    let port = match m.obj("listener", &lpath)? {
        Some(l) => listener_match(l, errors, warnings)?,
        None => None,
    };
    let ppath = p.path.field("patch");
    let patch = p
        .obj("patch", &ppath)?
        .ok_or_else(|| err(ppath.clone(), "required"))?;
    patch.check_fields(
        &Fields {
            supported: &["operation", "value"],
            unsupported: &[],
            ignored: &["filterClass"],
        },
        errors,
        warnings,
    );
    match patch.req_str("operation")? {
        "INSERT_BEFORE" | "INSERT_AFTER" | "INSERT_FIRST" | "ADD" => {}
        other => {
            return Err(err(
                ppath.field("operation"),
                format!(
                    "{other} is not supported (expected INSERT_BEFORE, INSERT_AFTER, INSERT_FIRST or ADD)"
                ),
            ));
        }
    }
    let vpath = ppath.field("value");
    let value = patch
        .obj("value", &vpath)?
        .ok_or_else(|| err(vpath.clone(), "required"))?;
    value.check_fields(
        &Fields {
            supported: &["name", "typed_config", "typedConfig"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let name = value.req_str("name")?;
    if name != LOCAL_RATELIMIT {
        return Err(err(
            vpath.field("name"),
            format!("filter {name:?} is not supported (only {LOCAL_RATELIMIT})"),
        ));
    }
    let key = if value.get("typedConfig").is_some() {
        "typedConfig"
    } else {
        "typed_config"
    };
    let tpath = vpath.field(key);
    let typed = value
        .obj(key, &tpath)?
        .ok_or_else(|| err(vpath.field("typed_config"), "required"))?;
    let bucket = local_ratelimit(typed, errors, warnings)?;
    Ok(RateLimitPatch { side, port, bucket })
}

/// `match.listener`: `portNumber`, and the HTTP connection manager as the
/// filter the HTTP filter goes into.
fn listener_match(
    l: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Option<u16>, InvalidConfig> {
    l.check_fields(
        &Fields {
            supported: &["portNumber", "filterChain"],
            unsupported: &[],
            ignored: &["name", "portName", "listenerFilter"],
        },
        errors,
        warnings,
    );
    for key in ["name", "portName", "listenerFilter"] {
        if l.get(key).is_some() {
            return Err(err(
                l.path.field(key),
                "not supported (match by portNumber)",
            ));
        }
    }
    let fcpath = l.path.field("filterChain");
    if let Some(fc) = l.obj("filterChain", &fcpath)? {
        fc.check_fields(
            &Fields {
                supported: &["filter"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let fpath = fcpath.field("filter");
        if let Some(f) = fc.obj("filter", &fpath)? {
            f.check_fields(
                &Fields {
                    supported: &["name", "subFilter"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            if let Some(n) = f.str("name")?
                && n != HCM
            {
                return Err(err(
                    fpath.field("name"),
                    format!("{n:?} is not supported (HTTP filters go into {HCM})"),
                ));
            }
        }
    }
    Ok(l.int("portNumber", 1, 65535)?.map(|p| p as u16))
}

/// The filter's config: a `LocalRateLimit`, directly or in a
/// `TypedStruct`.
fn local_ratelimit(
    typed: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Option<TokenBucket>, InvalidConfig> {
    let ty = typed.req_str("@type")?;
    let vpath = typed.path.field("value");
    let config = if TYPED_STRUCTS.contains(&ty) {
        typed.check_fields(
            &Fields {
                supported: &["@type", "type_url", "value"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let url = typed.req_str("type_url")?;
        if url != LOCAL_RATELIMIT_TYPE {
            return Err(err(
                typed.path.field("type_url"),
                format!("{url:?} is not supported (expected {LOCAL_RATELIMIT_TYPE})"),
            ));
        }
        typed
            .obj("value", &vpath)?
            .ok_or_else(|| err(vpath.clone(), "required"))?
    } else if ty == LOCAL_RATELIMIT_TYPE {
        typed
    } else {
        return Err(err(
            typed.path.field("@type"),
            format!(
                "{ty:?} is not supported (expected {LOCAL_RATELIMIT_TYPE} or a TypedStruct of it)"
            ),
        ));
    };
    config.check_fields(
        &Fields {
            supported: &[
                "@type",
                "stat_prefix",
                "token_bucket",
                "filter_enabled",
                "filter_enforced",
                "enable_x_ratelimit_headers",
                "rate_limited_as_resource_exhausted",
            ],
            unsupported: &[
                "response_headers_to_add",
                "request_headers_to_add_when_not_enforced",
            ],
            ignored: &[],
        },
        errors,
        warnings,
    );
    match config.str("enable_x_ratelimit_headers")? {
        None | Some("OFF") | Some("DRAFT_VERSION_03") => {}
        Some(other) => {
            return Err(err(
                config.path.field("enable_x_ratelimit_headers"),
                format!("unknown value {other:?} (expected OFF or DRAFT_VERSION_03)"),
            ));
        }
    }
    config.bool("rate_limited_as_resource_exhausted")?;
    let bpath = config.path.field("token_bucket");
    let b = config
        .obj("token_bucket", &bpath)?
        .ok_or_else(|| err(bpath.clone(), "required"))?;
    b.check_fields(
        &Fields {
            supported: &["max_tokens", "tokens_per_fill", "fill_interval"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let max_tokens = b
        .int("max_tokens", 0, i64::from(u32::MAX))?
        .ok_or_else(|| err(bpath.field("max_tokens"), "required"))? as u32;
    // Envoy `TokenBucket.tokens_per_fill`: "If not specified, defaults to
    // a single token."
    let tokens_per_fill = b
        .int("tokens_per_fill", 0, i64::from(u32::MAX))?
        .unwrap_or(1) as u32;
    let fill_interval = match b.get("fill_interval") {
        None => return Err(err(bpath.field("fill_interval"), "required")),
        Some(Value::String(s)) => {
            duration::parse(s).map_err(|m| err(bpath.field("fill_interval"), m))?
        }
        Some(_) => {
            return Err(err(
                bpath.field("fill_interval"),
                "expected a duration such as 60s",
            ));
        }
    };
    let bucket = TokenBucket {
        max_tokens,
        tokens_per_fill,
        fill_interval,
    };
    crate::ratelimit::validate(&bucket).map_err(|(field, msg)| err(bpath.field(field), msg))?;
    let enabled = fraction(&config, "filter_enabled", errors, warnings)?;
    let enforced = fraction(&config, "filter_enforced", errors, warnings)?;
    if enabled == 0 || enforced == 0 {
        let which = if enabled == 0 {
            "filter_enabled"
        } else {
            "filter_enforced"
        };
        warnings.push(err(
            config.path.field(which),
            "0% (Envoy's default when unset): the filter limits no request",
        ));
        return Ok(None);
    }
    Ok(Some(bucket))
}

/// A `RuntimeFractionalPercent`'s `default_value`, in percent: 0 or 100
/// (unset is 0, Envoy's default "for safety"); anything between is an
/// error.
fn fraction(
    config: &Obj<'_>,
    key: &str,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<u32, InvalidConfig> {
    let path = config.path.field(key);
    let Some(f) = config.obj(key, &path)? else {
        return Ok(0);
    };
    f.check_fields(
        &Fields {
            supported: &["runtime_key", "default_value"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let dpath = path.field("default_value");
    let Some(d) = f.obj("default_value", &dpath)? else {
        return Ok(0);
    };
    d.check_fields(
        &Fields {
            supported: &["numerator", "denominator"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let numerator = d.int("numerator", 0, i64::from(u32::MAX))?.unwrap_or(0) as u64;
    let denominator: u64 = match d.str("denominator")? {
        None | Some("HUNDRED") => 100,
        Some("TEN_THOUSAND") => 10_000,
        Some("MILLION") => 1_000_000,
        Some(other) => {
            return Err(err(
                dpath.field("denominator"),
                format!(
                    "unknown denominator {other:?} (expected HUNDRED, TEN_THOUSAND or MILLION)"
                ),
            ));
        }
    };
    if numerator == 0 {
        Ok(0)
    } else if numerator >= denominator {
        Ok(100)
    } else {
        Err(err(
            dpath,
            "a share between 0% and 100% is not supported: the mesh limits all requests or none",
        ))
    }
}
