use std::sync::Arc;

use mesh_core::model::{RetryBudget, RetryPolicy};

use super::{Retry, RetryState, Shared};

/// Applies [`Retry`] to a service.
///
/// Requests carrying a [`RouteDecision`](crate::route::RouteDecision) use
/// their route's policy and their cluster's budget; others use the
/// layer's policy (none by default) and the layer's own budget, shared by
/// every service the layer makes.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Option<RetryPolicy>,
    budget: RetryBudget,
    max_retries: u32,
    max_replay_bytes: usize,
    state: Arc<RetryState>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// Retries by the route's policy; Linkerd's default budget and the
    /// 64 KiB replay bound for the rest.
    pub fn new() -> Self {
        let d = Shared::default();
        Self {
            policy: d.policy,
            budget: d.budget,
            max_retries: d.max_retries,
            max_replay_bytes: d.max_replay_bytes,
            state: d.state,
        }
    }

    /// The policy for requests without a route decision.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The budget for requests without a route decision.
    pub fn with_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The concurrent-retry limit for requests without a route decision
    /// (`http.maxRetries` for routed ones).
    pub fn with_max_retries(mut self, max: u32) -> Self {
        self.max_retries = max;
        self
    }

    /// The largest request body kept for replay (64 KiB by default); a
    /// larger one makes its request non-retryable.
    pub fn with_max_replay_bytes(mut self, max: usize) -> Self {
        self.max_replay_bytes = max;
        self
    }

    /// The layer's own retry state (its budget and in-flight retries).
    pub fn state(&self) -> &Arc<RetryState> {
        &self.state
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::with_shared(
            inner,
            Arc::new(Shared {
                policy: self.policy.clone(),
                budget: self.budget,
                max_retries: self.max_retries,
                max_replay_bytes: self.max_replay_bytes,
                state: Arc::clone(&self.state),
            }),
        )
    }
}
