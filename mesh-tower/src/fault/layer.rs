use mesh_core::model::FaultPolicy;

use super::Fault;

/// Applies [`Fault`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultLayer {
    policy: Option<FaultPolicy>,
}

impl FaultLayer {
    /// Injects `policy` into requests that carry no route decision (used
    /// standalone, in a plain `ServiceBuilder`).
    pub fn new(policy: FaultPolicy) -> Self {
        Self {
            policy: Some(policy),
        }
    }

    /// Only the route's `fault` applies.
    pub fn from_route() -> Self {
        Self { policy: None }
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Fault<S>;

    fn layer(&self, inner: S) -> Fault<S> {
        match self.policy {
            Some(p) => Fault::new(inner, p),
            None => Fault::from_route(inner),
        }
    }
}
