//! The client's counters (gRFC A78 names), updated with atomics.
//!
//! gRFC A78 ("gRPC Metrics for WRR, Pick First, and XdsClient") labels
//! `resource_updates_valid` / `_invalid`, `server_failure` and `connected`
//! with the management server (`grpc.xds.server`), so the counters are kept
//! per server of [`ClientConfig::servers`](crate::ClientConfig::servers):
//! resources are counted against the server of the stream they arrived on.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::state::type_index;
use crate::TypeUrl;
use crate::config::ServerConfig;
use crate::status::{ResourceState, ResourceStatus};

/// The counters of one management server.
#[derive(Debug, Default)]
struct PerServer {
    valid: [AtomicU64; 5],
    invalid: [AtomicU64; 5],
    server_failure: AtomicU64,
    connected: AtomicBool,
}

/// Live counters, shared by the task and the handles.
#[derive(Debug)]
pub(crate) struct Metrics {
    uris: Box<[String]>,
    servers: Box<[PerServer]>,
    // The server of the current or last stream.
    server: AtomicUsize,
}

impl Metrics {
    /// Counters for `servers` (at least one slot, so that a client without
    /// servers still counts into something).
    pub(crate) fn new(servers: &[ServerConfig]) -> Self {
        let n = servers.len().max(1);
        Self {
            uris: (0..n)
                .map(|i| servers.get(i).map_or_else(String::new, |s| s.uri.clone()))
                .collect(),
            servers: (0..n).map(|_| PerServer::default()).collect(),
            server: AtomicUsize::new(0),
        }
    }

    fn current(&self) -> &PerServer {
        let i = self.server.load(Ordering::Relaxed);
        &self.servers[i.min(self.servers.len() - 1)]
    }

    pub(crate) fn valid(&self, t: TypeUrl) {
        self.current().valid[type_index(t)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn invalid(&self, t: TypeUrl) {
        self.current().invalid[type_index(t)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn server_failure(&self) {
        self.current()
            .server_failure
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self, server: usize, connected: bool) {
        let server = server.min(self.servers.len() - 1);
        self.server.store(server, Ordering::Relaxed);
        for (i, s) in self.servers.iter().enumerate() {
            // One stream at a time: the others are not connected.
            s.connected
                .store(connected && i == server, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self, statuses: &[ResourceStatus]) -> XdsClientMetrics {
        let sum = |pick: fn(&PerServer) -> &[AtomicU64; 5]| {
            TypeUrl::ALL.map(|t| {
                let n = self
                    .servers
                    .iter()
                    .map(|s| pick(s)[type_index(t)].load(Ordering::Relaxed))
                    .sum();
                (t, n)
            })
        };
        let mut by_state: Vec<(TypeUrl, ResourceState, u64)> = Vec::new();
        let mut by_cache_state: Vec<(TypeUrl, CacheState, u64)> = Vec::new();
        for s in statuses {
            match by_state
                .iter_mut()
                .find(|(t, st, _)| *t == s.type_url && *st == s.state)
            {
                Some(row) => row.2 += 1,
                None => by_state.push((s.type_url, s.state, 1)),
            }
            let cs = CacheState::of(s);
            match by_cache_state
                .iter_mut()
                .find(|(t, c, _)| *t == s.type_url && *c == cs)
            {
                Some(row) => row.2 += 1,
                None => by_cache_state.push((s.type_url, cs, 1)),
            }
        }
        let servers: Vec<XdsServerMetrics> = self
            .servers
            .iter()
            .zip(self.uris.iter())
            .map(|(s, uri)| XdsServerMetrics {
                uri: uri.clone(),
                resource_updates_valid: TypeUrl::ALL
                    .map(|t| (t, s.valid[type_index(t)].load(Ordering::Relaxed))),
                resource_updates_invalid: TypeUrl::ALL
                    .map(|t| (t, s.invalid[type_index(t)].load(Ordering::Relaxed))),
                server_failure: s.server_failure.load(Ordering::Relaxed),
                connected: s.connected.load(Ordering::Relaxed),
            })
            .collect();
        let server = self.server.load(Ordering::Relaxed);
        XdsClientMetrics {
            resource_updates_valid: sum(|s| &s.valid),
            resource_updates_invalid: sum(|s| &s.invalid),
            server_failure: servers.iter().map(|s| s.server_failure).sum(),
            connected: servers.iter().any(|s| s.connected),
            server,
            resources: by_state,
            cache_states: by_cache_state,
            servers,
        }
    }
}

/// gRFC A78's `grpc.xds.cache_state` of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheState {
    /// `requested`: asked for, nothing received yet.
    Requested,
    /// `does_not_exist`: the server said (or the timer concluded) it does
    /// not exist.
    DoesNotExist,
    /// `acked`: received and valid.
    Acked,
    /// `nacked`: received, invalid, and no earlier version cached.
    Nacked,
    /// `nacked_but_cached`: the last update was invalid; an earlier valid
    /// version is cached and in use.
    NackedButCached,
    /// `timeout`: the resource timer fired with
    /// `resource_timer_is_transient_error` (gRFC A88's transient state, not
    /// in A78's list).
    Timeout,
    /// `received_error`: the server reported an error for it (not in A78's
    /// list).
    ReceivedError,
}

impl CacheState {
    /// The state of a resource with this status.
    pub fn of(s: &ResourceStatus) -> Self {
        match s.state {
            ResourceState::Requested => Self::Requested,
            ResourceState::Acked => Self::Acked,
            ResourceState::Nacked if s.cached => Self::NackedButCached,
            ResourceState::Nacked => Self::Nacked,
            ResourceState::DoesNotExist => Self::DoesNotExist,
            ResourceState::Timeout => Self::Timeout,
            ResourceState::ReceivedError => Self::ReceivedError,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::DoesNotExist => "does_not_exist",
            Self::Acked => "acked",
            Self::Nacked => "nacked",
            Self::NackedButCached => "nacked_but_cached",
            Self::Timeout => "timeout",
            Self::ReceivedError => "received_error",
        }
    }
}

/// The counters of one management server (gRFC A78's `grpc.xds.server`
/// label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsServerMetrics {
    /// The server's `server_uri`, as in the bootstrap.
    pub uri: String,
    /// `resource_updates_valid` received from this server, per type.
    pub resource_updates_valid: [(TypeUrl, u64); 5],
    /// `resource_updates_invalid` received from this server, per type.
    pub resource_updates_invalid: [(TypeUrl, u64); 5],
    /// `server_failure` of this server.
    pub server_failure: u64,
    /// `connected`: whether the client's stream is to this server and up.
    pub connected: bool,
}

/// A snapshot of the client's counters, named after gRFC A78's
/// `grpc.xds_client.*` metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsClientMetrics {
    /// `resource_updates_valid`: resources received and accepted, per
    /// type, over every server.
    pub resource_updates_valid: [(TypeUrl, u64); 5],
    /// `resource_updates_invalid`: resources received and rejected, per
    /// type, over every server.
    pub resource_updates_invalid: [(TypeUrl, u64); 5],
    /// `server_failure`: streams that failed before any response, and
    /// connection attempts that failed, over every server.
    pub server_failure: u64,
    /// `connected`: whether a stream to a server is up.
    pub connected: bool,
    /// The index (in the config's server list) of the server of the
    /// current or last stream.
    pub server: usize,
    /// How many cached or watched resources are in each state, per type.
    pub resources: Vec<(TypeUrl, ResourceState, u64)>,
    /// `resources`: how many cached or watched resources are in each of
    /// gRFC A78's cache states, per type.
    pub cache_states: Vec<(TypeUrl, CacheState, u64)>,
    /// The counters per management server, in the config's order.
    pub servers: Vec<XdsServerMetrics>,
}

impl XdsClientMetrics {
    /// `resource_updates_valid` of one type.
    pub fn valid(&self, t: TypeUrl) -> u64 {
        self.resource_updates_valid[type_index(t)].1
    }

    /// `resource_updates_invalid` of one type.
    pub fn invalid(&self, t: TypeUrl) -> u64 {
        self.resource_updates_invalid[type_index(t)].1
    }
}

/// gRFC A78's `grpc.xds.resource_type` of `t`: the type URL without
/// `type.googleapis.com/` (`envoy.config.listener.v3.Listener`).
pub fn resource_type_label(t: TypeUrl) -> &'static str {
    let url = t.as_str();
    url.strip_prefix("type.googleapis.com/").unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_go_to_the_server_of_the_stream() {
        let servers = [
            crate::ClientConfig::new("primary:1", "n").servers[0].clone(),
            crate::ClientConfig::new("fallback:2", "n").servers[0].clone(),
        ];
        let m = Metrics::new(&servers);
        m.set_connected(0, true);
        m.valid(TypeUrl::Listener);
        m.set_connected(0, false);
        m.server_failure();
        m.set_connected(1, true);
        m.invalid(TypeUrl::Cluster);
        let s = m.snapshot(&[]);
        assert_eq!(s.servers[0].uri, "primary:1");
        assert_eq!(s.servers[0].resource_updates_valid[0].1, 1);
        assert_eq!(s.servers[0].server_failure, 1);
        assert!(!s.servers[0].connected);
        assert!(s.servers[1].connected);
        assert_eq!(s.servers[1].resource_updates_invalid[2].1, 1);
        assert_eq!(s.invalid(TypeUrl::Cluster), 1);
        assert_eq!(s.valid(TypeUrl::Listener), 1);
        assert_eq!(s.server, 1);
        assert_eq!(
            resource_type_label(TypeUrl::ClusterLoadAssignment),
            "envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
    }
}
