//! `Telemetry` (telemetry.istio.io/v1, v1alpha1): the tracing part, into
//! [`TelemetryPolicy`]. See [`crate::model::telemetry`] for the semantics.
//!
//! Read: `selector.matchLabels`, `tracing[].match.mode`,
//! `tracing[].randomSamplingPercentage` (0 to 100),
//! `tracing[].disableSpanReporting`, `tracing[].customTags` (`literal`,
//! `environment`, `header`). Reported and ignored: `tracing[].providers`
//! (spans go to the mesh's one exporter), `useRequestIdForTraceSampling`,
//! `enableIstioTags`, and the `metrics` and `accessLogging` sections (the
//! mesh's metrics and access log are configured in code). Rejected:
//! `targetRef`/`targetRefs` (they select gateways and waypoints; applying
//! the resource to the whole namespace instead would widen it).

use std::sync::Arc;

use serde_json::Value;

use super::yaml::{Fields, Obj};
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{CustomTag, Labels, PolicyScope, TelemetryPolicy, TracingConfig, TracingMode};

/// The `apiVersion`s accepted for `Telemetry`.
pub(crate) const TELEMETRY_VERSIONS: &[&str] =
    &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"];

/// Translates the spec of a `Telemetry` named `name` in `namespace`.
pub(crate) fn translate(
    name: &str,
    namespace: &str,
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<TelemetryPolicy, InvalidConfig> {
    spec.check_fields(
        &Fields {
            supported: &["selector", "tracing"],
            unsupported: &["metrics", "accessLogging"],
            ignored: &[],
        },
        errors,
        warnings,
    );
    for key in ["targetRef", "targetRefs"] {
        if spec.get(key).is_some() {
            return Err(InvalidConfig::new(
                spec.path.field(key),
                "targetRef(s) select gateways and waypoints, which a proxyless mesh does not \
                 have; use selector",
            ));
        }
    }
    let mut scope = PolicyScope::new(name, namespace);
    let selector_path = spec.path.field("selector");
    if let Some(selector) = spec.obj("selector", &selector_path)? {
        selector.only_fields(&["matchLabels"])?;
        scope = scope.with_selector(Labels::new(selector.str_map("matchLabels")?));
    }
    let tracing_path = spec.path.field("tracing");
    let mut tracing = Vec::new();
    for (i, item) in spec.list("tracing")?.iter().enumerate() {
        let path = tracing_path.index(i);
        tracing.push(tracing_entry(Obj::new(item, &path)?, errors, warnings)?);
    }
    Ok(TelemetryPolicy {
        scope,
        tracing: Arc::from(tracing),
    })
}

fn tracing_entry(
    t: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<TracingConfig, InvalidConfig> {
    t.check_fields(
        &Fields {
            supported: &[
                "match",
                "randomSamplingPercentage",
                "disableSpanReporting",
                "customTags",
            ],
            unsupported: &[
                "providers",
                "useRequestIdForTraceSampling",
                "enableIstioTags",
            ],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let match_path = t.path.field("match");
    let mode = match t.obj("match", &match_path)? {
        None => TracingMode::ClientAndServer,
        Some(m) => {
            m.only_fields(&["mode"])?;
            match m.str("mode")? {
                None => TracingMode::ClientAndServer,
                Some(name) => TracingMode::from_name(name).ok_or_else(|| {
                    InvalidConfig::new(
                        match_path.field("mode"),
                        format!(
                            "unknown mode {name:?} (expected CLIENT_AND_SERVER, CLIENT or SERVER)"
                        ),
                    )
                })?,
            }
        }
    };
    let pct_path = t.path.field("randomSamplingPercentage");
    let random_sampling_percentage = match t.get("randomSamplingPercentage") {
        None => None,
        Some(v) => Some(percentage(v, &pct_path)?),
    };
    let disable_span_reporting = t.bool("disableSpanReporting")?;
    let tags_path = t.path.field("customTags");
    let mut custom_tags = Vec::new();
    match t.get("customTags") {
        None => {}
        Some(Value::Object(tags)) => {
            for (name, value) in tags {
                let path = tags_path.key(name);
                custom_tags.push((
                    Arc::from(name.as_str()),
                    custom_tag(Obj::new(value, &path)?)?,
                ));
            }
        }
        Some(_) => {
            return Err(InvalidConfig::new(
                tags_path,
                "expected a mapping of tag name to {literal|environment|header}",
            ));
        }
    }
    Ok(TracingConfig {
        mode,
        random_sampling_percentage,
        disable_span_reporting,
        custom_tags: Arc::from(custom_tags),
    })
}

/// `randomSamplingPercentage`: a number from 0 to 100 (Istio's
/// validation: "must be in range [0.0, 100.0]").
fn percentage(v: &Value, path: &FieldPath) -> Result<f64, InvalidConfig> {
    let p = v
        .as_f64()
        .ok_or_else(|| InvalidConfig::new(path.clone(), format!("expected a number, found {v}")))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(InvalidConfig::new(
            path.clone(),
            format!("{p} is out of range (0 to 100)"),
        ));
    }
    Ok(p)
}

/// One `customTags` value: exactly one of `literal {value}`,
/// `environment {name, defaultValue}`, `header {name, defaultValue}`.
fn custom_tag(tag: Obj<'_>) -> Result<CustomTag, InvalidConfig> {
    tag.only_fields(&["literal", "environment", "header"])?;
    if tag.map.len() != 1 {
        return Err(InvalidConfig::new(
            tag.path.clone(),
            "exactly one of literal, environment or header",
        ));
    }
    let literal_path = tag.path.field("literal");
    if let Some(l) = tag.obj("literal", &literal_path)? {
        l.only_fields(&["value"])?;
        return Ok(CustomTag::Literal(Arc::from(l.req_str("value")?)));
    }
    let env_path = tag.path.field("environment");
    if let Some(e) = tag.obj("environment", &env_path)? {
        e.only_fields(&["name", "defaultValue"])?;
        return Ok(CustomTag::Environment {
            name: Arc::from(e.req_str("name")?),
            default: e.str("defaultValue")?.map(Arc::from),
        });
    }
    let header_path = tag.path.field("header");
    let Some(h) = tag.obj("header", &header_path)? else {
        return Err(InvalidConfig::new(
            tag.path.clone(),
            "exactly one of literal, environment or header",
        ));
    };
    h.only_fields(&["name", "defaultValue"])?;
    let name = h.req_str("name")?;
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(InvalidConfig::new(
            header_path.field("name"),
            format!("{name:?} is not a valid header name"),
        ));
    }
    Ok(CustomTag::Header {
        name: Arc::from(name.to_ascii_lowercase()),
        default: h.str("defaultValue")?.map(Arc::from),
    })
}
