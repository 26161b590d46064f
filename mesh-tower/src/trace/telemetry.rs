//! The `Telemetry` resources in effect for this process, resolved once
//! per config snapshot so that a request reads them with one `ArcSwap`
//! load and allocates nothing.
//!
//! The mesh resolves [`effective_tracing`] for its workload
//! ([`MeshBuilder::with_workload_scope`](crate::MeshBuilder::with_workload_scope))
//! whenever the store publishes, for the server side (the requests it
//! serves) and the client side (the calls it makes), and swaps the
//! result in. A `randomSamplingPercentage` set by a `Telemetry` overrides
//! the layer's own [`Sampling`] (set in code with `with_sampling`, the
//! equivalent of Istio's mesh-config default); `disableSpanReporting`
//! stops span recording but not propagation; `customTags` become span
//! attributes (an environment variable is read when the snapshot is
//! resolved, a header from the request).

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use mesh_core::Snapshot;
use mesh_core::model::security::DEFAULT_ROOT_NAMESPACE;
use mesh_core::model::{CustomTag, TracingMode, Workload, effective_tracing};
use opentelemetry::{Key, KeyValue, StringValue, Value};

use super::Sampling;
use super::span::Recording;

/// One tag's value.
#[derive(Debug)]
enum Tag {
    Fixed(Value),
    Header {
        name: HeaderName,
        default: Option<Value>,
    },
}

/// The tracing settings of one side.
#[derive(Debug)]
pub(crate) struct TracingPolicy {
    /// The `Telemetry` sampling, if one set it.
    pub(crate) sampling: Option<Sampling>,
    /// Whether spans are recorded (not `disableSpanReporting`).
    pub(crate) report: bool,
    tags: Box<[(Key, Tag)]>,
}

impl TracingPolicy {
    fn none() -> Self {
        Self {
            sampling: None,
            report: true,
            tags: Box::new([]),
        }
    }

    fn resolve(
        policies: &[mesh_core::model::TelemetryPolicy],
        workload: Option<&Workload>,
        side: TracingMode,
    ) -> Self {
        let root = workload.map_or(DEFAULT_ROOT_NAMESPACE, |w| &*w.root_namespace);
        let t = effective_tracing(policies, workload, root, side);
        let tags = t
            .custom_tags
            .iter()
            .filter_map(|(name, tag)| {
                let key = Key::new(name.to_string());
                let tag = match tag {
                    CustomTag::Literal(v) => Tag::Fixed(string(v)),
                    CustomTag::Environment { name, default } => match std::env::var(&**name).ok() {
                        Some(v) => Tag::Fixed(Value::String(StringValue::from(v))),
                        None => Tag::Fixed(string(default.as_deref()?)),
                    },
                    CustomTag::Header { name, default } => Tag::Header {
                        // Validated by the file source.
                        name: HeaderName::from_bytes(name.as_bytes()).ok()?,
                        default: default.as_deref().map(string),
                    },
                };
                Some((key, tag))
            })
            .collect();
        Self {
            sampling: t.random_sampling_percentage.map(Sampling::percentage),
            report: !t.disable_span_reporting,
            tags,
        }
    }

    /// Adds the custom tags to a span being recorded.
    pub(crate) fn tag(&self, span: &mut Recording, headers: &HeaderMap) {
        for (key, tag) in self.tags.iter() {
            let value = match tag {
                Tag::Fixed(v) => Some(v.clone()),
                Tag::Header { name, default } => match headers.get(name) {
                    Some(v) => v.to_str().ok().map(string),
                    None => default.clone(),
                },
            };
            if let Some(v) = value {
                span.attribute(KeyValue::new(key.clone(), v));
            }
        }
    }
}

fn string(s: &str) -> Value {
    Value::String(StringValue::from(s.to_owned()))
}

/// Both sides' settings.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// For the requests the process serves.
    pub(crate) server: TracingPolicy,
    /// For the calls it makes.
    pub(crate) client: TracingPolicy,
}

/// The resolved `Telemetry` of a mesh, swapped per snapshot.
#[derive(Debug)]
pub(crate) struct TelemetryState {
    workload: Option<Workload>,
    current: ArcSwap<Resolved>,
}

impl TelemetryState {
    pub(crate) fn new(workload: Option<Workload>, snapshot: &Snapshot) -> Self {
        let state = Self {
            workload,
            current: ArcSwap::from_pointee(Resolved {
                server: TracingPolicy::none(),
                client: TracingPolicy::none(),
            }),
        };
        state.update(snapshot);
        state
    }

    /// Resolves `snapshot`'s policies for the workload and swaps them in.
    pub(crate) fn update(&self, snapshot: &Snapshot) {
        let policies = snapshot.telemetry();
        let w = self.workload.as_ref();
        self.current.store(Arc::new(Resolved {
            server: TracingPolicy::resolve(policies, w, TracingMode::Server),
            client: TracingPolicy::resolve(policies, w, TracingMode::Client),
        }));
    }

    /// The settings in effect: one atomic load.
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Resolved>> {
        self.current.load()
    }
}
