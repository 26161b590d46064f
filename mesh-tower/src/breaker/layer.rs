use std::sync::Arc;

use super::{BreakerState, CircuitBreaker};

/// Applies [`CircuitBreaker`] to a service.
#[derive(Clone, Debug, Default)]
pub struct CircuitBreakerLayer {
    state: Option<Arc<BreakerState>>,
}

impl CircuitBreakerLayer {
    /// Enforces `state` for every request.
    pub fn new(state: Arc<BreakerState>) -> Self {
        Self { state: Some(state) }
    }

    /// Enforces the limits of each request's routed cluster.
    pub fn from_route() -> Self {
        Self { state: None }
    }
}

impl<S> tower::Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        match &self.state {
            Some(s) => CircuitBreaker::new(inner, Arc::clone(s)),
            None => CircuitBreaker::from_route(inner),
        }
    }
}
