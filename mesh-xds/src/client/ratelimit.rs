//! The bound on the rate of requests sent to the management server (rule
//! A1.14), with Envoy's semantics (`ApiConfigSource.rate_limit_settings`,
//! `GrpcMuxImplTest.TooManyRequestsWithDefaultSettings` /
//! `…WithCustomRateLimitSettings`): a token bucket of `max_tokens`
//! refilled at `fill_rate` per second; a request that finds it empty
//! waits and goes when a token returns.
//!
//! What waits is bounded: at most one request per type (and one for
//! unknown types). A newer request of a type that is already waiting
//! replaces it, because SotW requests are whole (the latest version,
//! nonce and names say everything the older one said), and delta requests
//! of one type are merged (subscriptions added and removed since, the
//! latest ACK/NACK). When the stream ends, whatever waits is dropped: the
//! next stream opens with one fresh request per type.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use mesh_core::model::TokenBucket;
use mesh_core::ratelimit::TokenBucketState;
use tokio::time::Instant;

use super::state::{Request, type_index};
use crate::TypeUrl;
use crate::config::RateLimitSettings;

/// Slots: one per type, and one for type URLs the client does not know
/// (the NACK of such a response).
const SLOTS: usize = 6;

/// The request limiter of one client.
pub(crate) struct RequestLimiter {
    bucket: Option<TokenBucketState>,
    waiting: [Option<Request>; SLOTS],
    order: VecDeque<usize>,
    /// When the first waiting request may go.
    retry_at: Option<Instant>,
}

impl RequestLimiter {
    /// A limiter with `settings`; `None` lets every request go at once.
    pub(crate) fn new(settings: Option<RateLimitSettings>) -> Self {
        let bucket = settings.map(|s| {
            let rate = if s.fill_rate.is_finite() && s.fill_rate > 0.0 {
                s.fill_rate
            } else {
                RateLimitSettings::envoy().fill_rate
            };
            TokenBucketState::new(TokenBucket {
                max_tokens: s.max_tokens.max(1),
                tokens_per_fill: 1,
                fill_interval: Duration::from_secs_f64(1.0 / rate),
            })
        });
        Self {
            bucket,
            waiting: Default::default(),
            order: VecDeque::new(),
            retry_at: None,
        }
    }

    /// Queues `req` behind the requests already waiting, folding it into a
    /// waiting request of its type.
    pub(crate) fn push(&mut self, req: Request) {
        let slot = slot(&req);
        match self.waiting[slot].take() {
            Some(old) => self.waiting[slot] = Some(merge(old, req)),
            None => {
                self.waiting[slot] = Some(req);
                self.order.push_back(slot);
            }
        }
    }

    /// Takes the waiting requests that may go at `now`, in order.
    pub(crate) fn ready(&mut self, now: Instant) -> Vec<Request> {
        let mut out = Vec::new();
        while let Some(&slot) = self.order.front() {
            if let Some(bucket) = &self.bucket {
                let a = bucket.try_acquire_at(now);
                if !a.allowed {
                    self.retry_at = Some(now + a.reset);
                    tracing::debug!(
                        waiting = self.order.len(),
                        "xDS request rate limit reached; requests wait for tokens"
                    );
                    return out;
                }
            }
            self.order.pop_front();
            if let Some(r) = self.waiting[slot].take() {
                out.push(r);
            }
        }
        self.retry_at = None;
        out
    }

    /// When waiting requests may go, if any wait.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| !self.order.is_empty())
    }

    /// The stream ended: what waits is dropped (the next stream opens with
    /// one fresh request per type).
    pub(crate) fn reset(&mut self) {
        self.waiting = Default::default();
        self.order.clear();
        self.retry_at = None;
    }
}

fn slot(req: &Request) -> usize {
    let type_url = match req {
        Request::Sotw(r) => &r.type_url,
        Request::Delta(r) => &r.type_url,
    };
    TypeUrl::parse(type_url).map_or(SLOTS - 1, type_index)
}

/// `new` folded into the waiting `old` of the same type.
fn merge(old: Request, new: Request) -> Request {
    match (old, new) {
        (Request::Sotw(old), Request::Sotw(new)) => Request::Sotw(merge_sotw(old, new)),
        (Request::Delta(old), Request::Delta(new)) => Request::Delta(merge_delta(old, new)),
        // One stream speaks one variant.
        (_, new) => new,
    }
}

/// A SotW request is whole: the newer one replaces the older, except that
/// a NACK is not turned into an ACK of the same nonce (A1.5: servers
/// detect a NACK by `error_detail`).
fn merge_sotw(old: DiscoveryRequest, mut new: DiscoveryRequest) -> DiscoveryRequest {
    if new.node.is_none() {
        new.node = old.node;
    }
    if new.error_detail.is_none() && new.response_nonce == old.response_nonce {
        new.error_detail = old.error_detail;
    }
    new
}

/// Delta requests of one type add up: the subscriptions changed by both
/// (a name subscribed then unsubscribed cancels out), the newer ACK/NACK.
fn merge_delta(old: DeltaDiscoveryRequest, new: DeltaDiscoveryRequest) -> DeltaDiscoveryRequest {
    let new_sub: BTreeSet<String> = new.resource_names_subscribe.into_iter().collect();
    let new_unsub: BTreeSet<String> = new.resource_names_unsubscribe.into_iter().collect();
    let old_sub: BTreeSet<String> = old.resource_names_subscribe.into_iter().collect();
    let old_unsub: BTreeSet<String> = old.resource_names_unsubscribe.into_iter().collect();
    let subscribe = old_sub
        .difference(&new_unsub)
        .chain(new_sub.difference(&old_unsub))
        .cloned()
        .collect::<BTreeSet<_>>();
    let unsubscribe = old_unsub
        .difference(&new_sub)
        .chain(new_unsub.difference(&old_sub))
        .cloned()
        .collect::<BTreeSet<_>>();
    let mut initial_resource_versions = old.initial_resource_versions;
    initial_resource_versions.extend(new.initial_resource_versions);
    let (response_nonce, error_detail) = if new.response_nonce.is_empty() {
        (old.response_nonce, old.error_detail)
    } else {
        (new.response_nonce, new.error_detail)
    };
    DeltaDiscoveryRequest {
        node: old.node.or(new.node),
        type_url: new.type_url,
        resource_names_subscribe: subscribe.into_iter().collect(),
        resource_names_unsubscribe: unsubscribe.into_iter().collect(),
        initial_resource_versions,
        response_nonce,
        error_detail,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(sub: &[&str], unsub: &[&str], nonce: &str) -> Request {
        Request::Delta(DeltaDiscoveryRequest {
            type_url: TypeUrl::Cluster.as_str().into(),
            resource_names_subscribe: sub.iter().map(|s| (*s).to_owned()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| (*s).to_owned()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        })
    }

    #[test]
    fn delta_requests_of_one_type_add_up() {
        let merged = merge(delta(&["a", "b"], &["x"], "n1"), delta(&["x"], &["b"], ""));
        let Request::Delta(d) = merged else {
            panic!("delta")
        };
        // b subscribed then unsubscribed, x unsubscribed then subscribed.
        assert_eq!(d.resource_names_subscribe, ["a"]);
        assert!(d.resource_names_unsubscribe.is_empty());
        assert_eq!(d.response_nonce, "n1", "the ACK is kept");
    }

    #[test]
    fn a_sotw_nack_is_not_turned_into_an_ack() {
        let nack = DiscoveryRequest {
            type_url: TypeUrl::Listener.as_str().into(),
            response_nonce: "n1".into(),
            error_detail: Some(Default::default()),
            ..Default::default()
        };
        let change = DiscoveryRequest {
            resource_names: vec!["a".into()],
            error_detail: None,
            ..nack.clone()
        };
        let Request::Sotw(r) = merge(Request::Sotw(nack), Request::Sotw(change)) else {
            panic!("sotw")
        };
        assert!(r.error_detail.is_some());
        assert_eq!(r.resource_names, ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_collapse_per_type_and_go_as_tokens_return() {
        let mut l = RequestLimiter::new(Some(RateLimitSettings {
            max_tokens: 1,
            fill_rate: 10.0,
        }));
        let req = |t: TypeUrl, nonce: &str| {
            Request::Sotw(DiscoveryRequest {
                type_url: t.as_str().into(),
                response_nonce: nonce.into(),
                ..Default::default()
            })
        };
        let now = Instant::now();
        l.push(req(TypeUrl::Listener, "1"));
        assert_eq!(l.ready(now).len(), 1);
        for n in ["2", "3", "4"] {
            l.push(req(TypeUrl::Listener, n));
        }
        l.push(req(TypeUrl::Cluster, "c"));
        assert!(l.ready(now).is_empty());
        let at = l.retry_at().expect("waiting");
        assert_eq!(at - now, Duration::from_millis(100));
        assert_eq!(l.ready(at), [req(TypeUrl::Listener, "4")]);
        let at = l.retry_at().expect("still waiting");
        assert_eq!(l.ready(at), [req(TypeUrl::Cluster, "c")]);
        assert_eq!(l.retry_at(), None);
        l.push(req(TypeUrl::Listener, "5"));
        l.reset();
        assert!(l.ready(at + Duration::from_secs(10)).is_empty());
    }
}
