//! The resource cache: one entry per watched (or still cached) resource,
//! with the gRFC A88 cache-entry state, the last good value and the
//! does-not-exist timer.

use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::google::protobuf::Any;
use tokio::time::Instant;

use crate::TypeUrl;
use crate::resource::Decoded;
use crate::status::{ResourceState, ResourceStatus};

/// The last accepted value of a resource.
#[derive(Clone, Debug)]
pub(crate) struct Cached {
    /// The translated value.
    pub(crate) decoded: Decoded,
    /// The bytes as received (for CSDS config dumps).
    pub(crate) raw: Arc<Any>,
}

/// One resource the client watches or still holds.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The value in use, if any (A2.3: kept across NACKs; gRFC A88: kept
    /// across data errors unless `fail_on_data_errors`).
    pub(crate) value: Option<Cached>,
    /// The cache-entry state (A3.13).
    pub(crate) state: ResourceState,
    /// The version of the value in use: SotW `version_info`, or the delta
    /// resource version.
    pub(crate) version: Option<String>,
    /// When the value in use arrived.
    pub(crate) last_updated: Option<SystemTime>,
    /// The last error (rejection, deletion, timer), for status.
    pub(crate) error: Option<String>,
    /// When the last error happened.
    pub(crate) error_at: Option<SystemTime>,
    /// The version of the rejected update.
    pub(crate) error_version: Option<String>,
    /// The running does-not-exist timer (A3.1), if any.
    pub(crate) timer: Option<Instant>,
    /// When the value in use expires unless the server refreshes it (A5.3:
    /// the TTL of the `Resource` it came in). Runs whether or not a stream
    /// is up: it is meant for when contact is lost.
    pub(crate) ttl: Option<Instant>,
    /// A53: a deletion of this resource was ignored and is still pending
    /// (logged once at WARNING, then once at INFO when it clears).
    pub(crate) deletion_ignored: bool,
}

impl Entry {
    /// A freshly requested resource.
    pub(crate) fn requested() -> Self {
        Self {
            value: None,
            state: ResourceState::Requested,
            version: None,
            last_updated: None,
            error: None,
            error_at: None,
            error_version: None,
            timer: None,
            ttl: None,
            deletion_ignored: false,
        }
    }

    /// Whether the resource was ever received (A3.5: a never-seen
    /// resource missing from an LDS/CDS response is not deleted), or was
    /// concluded not to exist.
    pub(crate) fn seen(&self) -> bool {
        self.value.is_some() || self.state != ResourceState::Requested
    }

    /// Whether the entry is settled for fallback purposes (gRFC A71: a
    /// resource marked does-not-exist counts as cached).
    pub(crate) fn settled(&self) -> bool {
        self.value.is_some()
            || matches!(
                self.state,
                ResourceState::DoesNotExist | ResourceState::Timeout
            )
    }

    /// Whether the resource is still awaited: nothing in use and no
    /// error yet. A listener or cluster waiting on such a dependency is
    /// not complete (gRFC A74).
    pub(crate) fn pending(&self) -> bool {
        self.value.is_none() && self.state == ResourceState::Requested
    }

    /// Records a new valid value. Returns whether the value in use changed
    /// (A2.6: an unchanged value does not re-notify).
    pub(crate) fn accept(
        &mut self,
        decoded: Decoded,
        raw: Any,
        version: &str,
        now: SystemTime,
    ) -> bool {
        let changed = self.value.as_ref().is_none_or(|c| c.decoded != decoded);
        let new_version = self.version.as_deref() != Some(version);
        if (changed || new_version) && !decoded.ignored.is_empty() {
            // Logged once per resource version, not per response.
            tracing::info!(
                resource = %decoded.name,
                version,
                ignored = ?decoded.ignored,
                "xDS resource has fields that are not applied"
            );
        }
        if self.deletion_ignored {
            tracing::info!(resource = %decoded.name, "xDS resource is back; the ignored deletion cleared");
            self.deletion_ignored = false;
        }
        // An error state clears on the next valid value (gRFC A88).
        let state_changed = self.state != ResourceState::Acked;
        self.state = ResourceState::Acked;
        self.error = None;
        self.error_at = None;
        self.error_version = None;
        self.timer = None;
        if changed || new_version {
            self.last_updated = Some(now);
        }
        self.version = Some(version.to_owned());
        self.value = Some(Cached {
            decoded,
            raw: Arc::new(raw),
        });
        changed || state_changed
    }

    /// Records a data error: a rejected update (A2.3, A2.4) or a deletion
    /// (A3.4). With `fail_on_data_errors` the cached value is dropped
    /// (gRFC A88); otherwise it stays in use.
    pub(crate) fn data_error(
        &mut self,
        state: ResourceState,
        reason: String,
        version: Option<&str>,
        fail_on_data_errors: bool,
        now: SystemTime,
    ) {
        self.state = state;
        self.error = Some(reason);
        self.error_at = Some(now);
        self.error_version = version.map(str::to_owned);
        self.timer = None;
        if fail_on_data_errors && self.value.is_some() {
            self.value = None;
            self.version = None;
        }
    }

    /// The TTL of the value in use ran out without a refresh (A5.3): the
    /// value is removed, as Envoy removes it, whatever gRFC A88 says about
    /// keeping cached values — the server asked for the value to live only
    /// while refreshed (A5.2: "unless a TTL is set"). The state becomes
    /// DOES_NOT_EXIST with the reason. Returns whether anything changed.
    pub(crate) fn expire(&mut self, type_url: TypeUrl, name: &str, now: SystemTime) -> bool {
        self.ttl = None;
        if self.value.is_none() {
            return false;
        }
        tracing::warn!(resource = %name, type_url = type_url.as_str(), version = ?self.version, "xDS resource TTL expired without a refresh; removed");
        self.error = Some(format!(
            "the TTL of version {:?} expired without a refresh from the server; removed (Envoy resource TTL)",
            self.version.as_deref().unwrap_or("")
        ));
        self.error_version = self.version.take();
        self.value = None;
        self.state = ResourceState::DoesNotExist;
        self.error_at = Some(now);
        self.timer = None;
        true
    }

    /// The status line of this entry.
    pub(crate) fn status(&self, type_url: TypeUrl, name: &str) -> ResourceStatus {
        ResourceStatus {
            type_url,
            name: name.to_owned(),
            state: self.state,
            version: self.version.clone(),
            last_updated: self.last_updated,
            cached: self.value.is_some(),
            error: self.error.clone(),
            error_at: self.error_at,
            error_version: self.error_version.clone(),
            ignored_fields: self
                .value
                .as_ref()
                .map(|c| c.decoded.ignored.clone())
                .unwrap_or_default(),
        }
    }
}
