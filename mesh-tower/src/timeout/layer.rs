use std::time::Duration;

use super::Timeout;

/// Applies [`Timeout`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct TimeoutLayer {
    default: Option<Duration>,
}

impl TimeoutLayer {
    /// A timeout of `default` for requests whose route sets none.
    pub fn new(default: Duration) -> Self {
        Self {
            default: Some(default),
        }
    }

    /// Only the route's timeout applies.
    pub fn from_route() -> Self {
        Self { default: None }
    }
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        match self.default {
            Some(d) => Timeout::new(inner, d),
            None => Timeout::from_route(inner),
        }
    }
}
