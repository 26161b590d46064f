//! The client's counters (gRFC A78 names), updated with atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::state::type_index;
use crate::TypeUrl;
use crate::status::{ResourceState, ResourceStatus};

/// Live counters, shared by the task and the handles.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    valid: [AtomicU64; 5],
    invalid: [AtomicU64; 5],
    server_failure: AtomicU64,
    connected: AtomicBool,
    server: AtomicU64,
}

impl Metrics {
    pub(crate) fn valid(&self, t: TypeUrl) {
        self.valid[type_index(t)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn invalid(&self, t: TypeUrl) {
        self.invalid[type_index(t)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn server_failure(&self) {
        self.server_failure.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_connected(&self, server: usize, connected: bool) {
        self.server.store(server as u64, Ordering::Relaxed);
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, statuses: &[ResourceStatus]) -> XdsClientMetrics {
        let load = |a: &[AtomicU64; 5]| {
            TypeUrl::ALL.map(|t| (t, a[type_index(t)].load(Ordering::Relaxed)))
        };
        let mut by_state: Vec<(TypeUrl, ResourceState, u64)> = Vec::new();
        for s in statuses {
            match by_state
                .iter_mut()
                .find(|(t, st, _)| *t == s.type_url && *st == s.state)
            {
                Some(row) => row.2 += 1,
                None => by_state.push((s.type_url, s.state, 1)),
            }
        }
        XdsClientMetrics {
            resource_updates_valid: load(&self.valid),
            resource_updates_invalid: load(&self.invalid),
            server_failure: self.server_failure.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            server: self.server.load(Ordering::Relaxed) as usize,
            resources: by_state,
        }
    }
}

/// A snapshot of the client's counters, named after gRFC A78's
/// `grpc.xds_client.*` metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdsClientMetrics {
    /// `resource_updates_valid`: resources received and accepted, per
    /// type.
    pub resource_updates_valid: [(TypeUrl, u64); 5],
    /// `resource_updates_invalid`: resources received and rejected, per
    /// type.
    pub resource_updates_invalid: [(TypeUrl, u64); 5],
    /// `server_failure`: streams that failed before any response, and
    /// connection attempts that failed.
    pub server_failure: u64,
    /// `connected`: whether a stream to a server is up.
    pub connected: bool,
    /// The index (in the config's server list) of the server of the
    /// current or last stream.
    pub server: usize,
    /// `resources`: how many cached or watched resources are in each
    /// state, per type.
    pub resources: Vec<(TypeUrl, ResourceState, u64)>,
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
