//! Per-route request counters, lock-free on the request path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use http::StatusCode;

pub(crate) const UNMATCHED: &str = "unmatched";
const OTHER: &str = "other";

/// At most this many routes are counted separately; the rest count as
/// `other`, so label cardinality stays bounded whatever clients send.
pub const MAX_ROUTES: usize = 256;

/// Counters of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteCounters {
    requests: AtomicU64,
    success: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    failures: AtomicU64,
}

impl RouteCounters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn response(&self, status: StatusCode) {
        let c = if status.is_server_error() {
            &self.server_errors
        } else if status.is_client_error() {
            &self.client_errors
        } else {
            &self.success
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// Request counts of one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStats {
    /// The route: a route template, a gRPC method, `unmatched` or `other`.
    pub route: String,
    /// Requests received.
    pub requests: u64,
    /// Responses with status 1xx, 2xx or 3xx.
    pub success: u64,
    /// Responses with status 4xx.
    pub client_errors: u64,
    /// Responses with status 5xx.
    pub server_errors: u64,
    /// Requests whose service returned an error instead of a response.
    pub failures: u64,
}

/// The counters of a server layer.
#[derive(Debug, Default)]
pub struct ServerStats {
    routes: ArcSwap<HashMap<Box<str>, Arc<RouteCounters>>>,
}

impl ServerStats {
    /// The counters of `route`, created on first sight. Reads are one
    /// atomic load; a new route is added with a lock-free copy-on-write.
    pub(crate) fn counters(&self, route: &str) -> Arc<RouteCounters> {
        if let Some(c) = self.routes.load().get(route) {
            return Arc::clone(c);
        }
        let fresh = Arc::new(RouteCounters::default());
        self.routes.rcu(|cur| {
            if cur.contains_key(route) || (cur.len() >= MAX_ROUTES && cur.contains_key(OTHER)) {
                return Arc::clone(cur);
            }
            let key = if cur.len() >= MAX_ROUTES {
                OTHER
            } else {
                route
            };
            let mut next = HashMap::clone(cur);
            next.insert(key.into(), Arc::clone(&fresh));
            Arc::new(next)
        });
        let routes = self.routes.load();
        routes
            .get(route)
            .or_else(|| routes.get(OTHER))
            .cloned()
            .unwrap_or(fresh)
    }

    /// The counts of every route, sorted by route.
    pub fn routes(&self) -> Vec<RouteStats> {
        let mut out: Vec<RouteStats> = self
            .routes
            .load()
            .iter()
            .map(|(route, c)| RouteStats {
                route: route.to_string(),
                requests: c.requests.load(Ordering::Relaxed),
                success: c.success.load(Ordering::Relaxed),
                client_errors: c.client_errors.load(Ordering::Relaxed),
                server_errors: c.server_errors.load(Ordering::Relaxed),
                failures: c.failures.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.route.cmp(&b.route));
        out
    }

    /// The counts of one route.
    pub fn route(&self, route: &str) -> Option<RouteStats> {
        self.routes().into_iter().find(|r| r.route == route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_is_bounded() {
        let stats = ServerStats::default();
        for i in 0..(MAX_ROUTES + 50) {
            stats.counters(&format!("/r{i}")).request();
        }
        let routes = stats.routes();
        assert_eq!(routes.len(), MAX_ROUTES + 1);
        assert_eq!(stats.route("other").unwrap().requests, 50);
    }
}
