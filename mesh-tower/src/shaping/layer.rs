use super::{Mirrors, Shaping};

/// Applies [`Shaping`] to a service.
#[derive(Clone, Debug, Default)]
pub struct ShapingLayer {
    mirrors: Mirrors,
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
        Self { mirrors }
    }
}

impl<S> tower::Layer<S> for ShapingLayer {
    type Service = Shaping<S>;

    fn layer(&self, inner: S) -> Shaping<S> {
        Shaping::with_mirrors(inner, self.mirrors.clone())
    }
}
