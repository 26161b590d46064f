use super::{Route, Target};
use crate::mesh::Mesh;

/// Applies [`Route`] to a service.
#[derive(Clone, Debug)]
pub struct RouteLayer {
    mesh: Mesh,
    target: Option<Target>,
}

impl RouteLayer {
    /// Routes requests by their own authority under `mesh`'s config.
    pub fn new(mesh: Mesh) -> Self {
        Self { mesh, target: None }
    }

    /// Routes every request as if addressed to `target`.
    pub fn with_target(mesh: Mesh, target: Target) -> Self {
        Self {
            mesh,
            target: Some(target),
        }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = Route<S>;

    fn layer(&self, inner: S) -> Route<S> {
        match &self.target {
            Some(t) => Route::with_target(inner, self.mesh.clone(), t.clone()),
            None => Route::new(inner, self.mesh.clone()),
        }
    }
}
