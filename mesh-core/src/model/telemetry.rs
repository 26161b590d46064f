//! Istio's Telemetry API (`telemetry.istio.io/v1` `Telemetry`), its
//! tracing part: which share of the requests without a trace start one
//! (`randomSamplingPercentage`), whether spans are reported at all
//! (`disableSpanReporting`), and tags added to every span (`customTags`).
//!
//! Scoping and precedence follow istio.io "Telemetry API": a resource in
//! the root namespace without a selector applies mesh wide, one in a
//! namespace without a selector to that namespace's workloads, one with a
//! selector to the workloads it selects; a more specific level overrides
//! the fields it sets and inherits the others. Istio has no per-route
//! Telemetry (the API selects workloads, not routes), and neither has
//! the mesh.

use std::sync::Arc;

use super::security::{PolicyScope, Specificity, Workload};

/// Which side of a workload's traffic a `tracing[]` entry configures
/// (`tracing[].match.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracingMode {
    /// Both (the default).
    ClientAndServer,
    /// The workload's outbound calls.
    Client,
    /// The requests the workload serves.
    Server,
}

impl TracingMode {
    /// The mode of an Istio `WorkloadMode` name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "CLIENT_AND_SERVER" => Self::ClientAndServer,
            "CLIENT" => Self::Client,
            "SERVER" => Self::Server,
            _ => return None,
        })
    }

    fn covers(self, side: TracingMode) -> bool {
        self == TracingMode::ClientAndServer || self == side
    }
}

/// A value added to the spans of a workload (`customTags`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomTag {
    /// A fixed value.
    Literal(Arc<str>),
    /// An environment variable of the process, with a default.
    Environment {
        /// The variable.
        name: Arc<str>,
        /// The value when it is unset.
        default: Option<Arc<str>>,
    },
    /// A request header, with a default.
    Header {
        /// The header (lower case).
        name: Arc<str>,
        /// The value when the request has no such header.
        default: Option<Arc<str>>,
    },
}

/// One `tracing[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingConfig {
    /// Which traffic it configures.
    pub mode: TracingMode,
    /// `randomSamplingPercentage`, 0 to 100; `None` inherits.
    pub random_sampling_percentage: Option<f64>,
    /// `disableSpanReporting`; `None` inherits.
    pub disable_span_reporting: Option<bool>,
    /// `customTags`, tag name to value, in file order.
    pub custom_tags: Arc<[(Arc<str>, CustomTag)]>,
}

/// A `Telemetry` resource.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryPolicy {
    /// Where it applies.
    pub scope: PolicyScope,
    /// Its `tracing[]` entries.
    pub tracing: Arc<[TracingConfig]>,
}

/// The tracing settings in effect for one side of a workload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EffectiveTracing {
    /// The sampling percentage, when some level set one.
    pub random_sampling_percentage: Option<f64>,
    /// Whether spans are not reported.
    pub disable_span_reporting: bool,
    /// The tags, the more specific level's value winning per name.
    pub custom_tags: Vec<(Arc<str>, CustomTag)>,
}

/// The tracing settings `policies` give the `side` (client or server) of
/// `workload`: mesh-wide, then namespace, then workload-level policies,
/// each overriding the fields it sets; within a level the first policy
/// wins (Istio takes the oldest). `workload` `None` is a process that
/// declared no namespace: only mesh-wide policies of `root_namespace`
/// apply.
pub fn effective_tracing(
    policies: &[TelemetryPolicy],
    workload: Option<&Workload>,
    root_namespace: &str,
    side: TracingMode,
) -> EffectiveTracing {
    let mut out = EffectiveTracing::default();
    for level in [
        Specificity::Mesh,
        Specificity::Namespace,
        Specificity::Workload,
    ] {
        let policy = policies.iter().find(|p| match workload {
            Some(w) => p.scope.applies_to(w) && p.scope.specificity(w) == level,
            None => {
                level == Specificity::Mesh
                    && p.scope.selector.is_none()
                    && &*p.scope.namespace == root_namespace
            }
        });
        let Some(policy) = policy else { continue };
        for t in policy.tracing.iter().filter(|t| t.mode.covers(side)) {
            if let Some(p) = t.random_sampling_percentage {
                out.random_sampling_percentage = Some(p);
            }
            if let Some(d) = t.disable_span_reporting {
                out.disable_span_reporting = d;
            }
            for (name, tag) in t.custom_tags.iter() {
                match out.custom_tags.iter_mut().find(|(n, _)| n == name) {
                    Some(slot) => slot.1 = tag.clone(),
                    None => out.custom_tags.push((Arc::clone(name), tag.clone())),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn tracing(mode: TracingMode, pct: Option<f64>, disable: Option<bool>) -> TracingConfig {
        TracingConfig {
            mode,
            random_sampling_percentage: pct,
            disable_span_reporting: disable,
            custom_tags: Arc::from(vec![(
                Arc::from("level"),
                CustomTag::Literal(Arc::from(format!("{pct:?}"))),
            )]),
        }
    }

    fn policy(ns: &str, selector: Option<(&str, &str)>, t: Vec<TracingConfig>) -> TelemetryPolicy {
        let mut scope = PolicyScope::new("t", ns);
        if let Some((k, v)) = selector {
            scope = scope.with_selector(Labels::new([(k, v)]));
        }
        TelemetryPolicy {
            scope,
            tracing: Arc::from(t),
        }
    }

    #[test]
    fn workload_overrides_namespace_overrides_mesh_field_by_field() {
        let policies = vec![
            policy(
                "bookinfo",
                Some(("app", "reviews")),
                vec![tracing(TracingMode::Server, Some(100.0), None)],
            ),
            policy(
                "istio-system",
                None,
                vec![tracing(
                    TracingMode::ClientAndServer,
                    Some(1.0),
                    Some(false),
                )],
            ),
            policy(
                "bookinfo",
                None,
                vec![tracing(
                    TracingMode::ClientAndServer,
                    Some(10.0),
                    Some(true),
                )],
            ),
        ];
        let reviews = Workload::new("bookinfo", Labels::new([("app", "reviews")]));
        let server = effective_tracing(
            &policies,
            Some(&reviews),
            "istio-system",
            TracingMode::Server,
        );
        assert_eq!(server.random_sampling_percentage, Some(100.0));
        assert!(
            server.disable_span_reporting,
            "inherited from the namespace"
        );
        assert_eq!(server.custom_tags.len(), 1);
        assert_eq!(
            server.custom_tags[0].1,
            CustomTag::Literal(Arc::from("Some(100.0)"))
        );
        let client = effective_tracing(
            &policies,
            Some(&reviews),
            "istio-system",
            TracingMode::Client,
        );
        assert_eq!(client.random_sampling_percentage, Some(10.0), "SERVER only");

        let other = Workload::new("default", Labels::default());
        let t = effective_tracing(&policies, Some(&other), "istio-system", TracingMode::Server);
        assert_eq!(t.random_sampling_percentage, Some(1.0));
        assert!(!t.disable_span_reporting);

        let t = effective_tracing(&policies, None, "istio-system", TracingMode::Client);
        assert_eq!(t.random_sampling_percentage, Some(1.0), "mesh-wide only");
        assert_eq!(
            effective_tracing(&[], None, "istio-system", TracingMode::Client),
            EffectiveTracing::default()
        );
    }
}
