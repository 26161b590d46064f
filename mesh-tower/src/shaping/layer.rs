use super::{Mirrors, Shaping, StaticShaping};

/// Applies [`Shaping`] to a service.
#[derive(Clone, Debug, Default)]
pub struct ShapingLayer {
    mirrors: Mirrors,
    policy: Option<StaticShaping>,
}

impl ShapingLayer {
    /// A layer whose mirrored copies are dropped (and counted): there is
    /// no worker to send them.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer that sends mirrored copies through `mirrors` (a mesh's,
    /// see [`Mesh::mirrors`](crate::Mesh::mirrors)).
    pub fn with_mirrors(mirrors: Mirrors) -> Self {
        Self {
            mirrors,
            policy: None,
        }
    }

    /// A layer applying `policy` to requests without a route decision
    /// (standalone use in a plain `ServiceBuilder`).
    pub fn with_static(policy: StaticShaping) -> Self {
        Self {
            mirrors: Mirrors::default(),
            policy: Some(policy),
        }
    }
}

impl<S> tower::Layer<S> for ShapingLayer {
    type Service = Shaping<S>;

    fn layer(&self, inner: S) -> Shaping<S> {
        match &self.policy {
            Some(p) => Shaping::with_static(inner, p.clone()),
            None => Shaping::with_mirrors(inner, self.mirrors.clone()),
        }
    }
}
