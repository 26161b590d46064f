//! The config store: one per process, lock-free to read.
//!
//! Sources (a YAML file, an xDS subscription, code) each *publish* their
//! whole set of resources; the store merges the sources, validates the
//! result as one [`Snapshot`] and swaps it in atomically. Readers on the
//! request path do a single `ArcSwap` load. Writers are serialized by a
//! mutex that readers never touch.
//!
//! A publish is all-or-nothing per source: when the merged config would be
//! invalid, nothing changes, the last good snapshot stays, and the
//! rejection is recorded in the source's [`SourceStatus`] (the file-source
//! rule of Envoy's xDS protocol: "the last valid configuration will
//! continue to apply").

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::error::InvalidConfig;
use crate::model::{Cluster, EndpointSet, Listener, RouteTable};
use crate::snapshot::{ResourceKind, Resources, Snapshot, Version};

/// The name of a config source, such as `file:/etc/mesh/mesh.yaml` or
/// `xds`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(Arc<str>);

impl SourceId {
    /// A source name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SourceId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// A rejected update and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// When it was rejected (wall clock, for display).
    pub at: SystemTime,
    /// Why, naming the place of the bad value.
    pub reason: String,
}

/// What the store knows about one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    /// The source.
    pub source: SourceId,
    /// The store version at which this source's current resources were
    /// accepted.
    pub accepted_version: Option<Version>,
    /// When they were accepted.
    pub accepted_at: Option<SystemTime>,
    /// The last rejected update, if it came after the last accepted one.
    pub last_rejection: Option<Rejection>,
    /// Config the source read but does not apply, with the reason.
    pub warnings: Arc<[String]>,
}

/// An update a store refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishError {
    source: SourceId,
    reason: String,
}

impl PublishError {
    /// The source whose update was refused.
    pub fn source_id(&self) -> &SourceId {
        &self.source
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.reason)
    }
}

impl std::error::Error for PublishError {}

/// The process's config: the current [`Snapshot`] and its sources.
///
/// Cloning gives another handle to the same store. Create one per process
/// and hand it to every client and server, so that per-cluster state
/// (balancers, and later breakers and budgets) is shared process-wide.
///
/// ```
/// use mesh_core::{ConfigStore, Resources, Version};
/// use mesh_core::model::Cluster;
///
/// let store = ConfigStore::new();
/// assert_eq!(store.version(), Version(0));
/// let v = store
///     .publish("code".into(), Resources::new().with_cluster(Cluster::new("c")))
///     .unwrap();
/// assert_eq!(v, Version(1));
/// assert!(store.snapshot().cluster("c").is_some());
/// ```
#[derive(Clone)]
pub struct ConfigStore {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Snapshot>,
    changes: watch::Sender<Arc<Snapshot>>,
    writers: Mutex<Writers>,
}

#[derive(Default)]
struct Writers {
    sources: BTreeMap<SourceId, SourceEntry>,
    updates: BTreeMap<SourceId, UpdateCounts>,
}

/// How many updates a source offered the store: accepted (published,
/// whether or not they changed the config) and rejected (invalid, or not
/// even readable). Counted under the writers' lock, which every update
/// takes anyway; kept after the source is removed. The admin endpoint
/// renders them as `mesh_config_updates_total{source,result}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateCounts {
    /// Updates accepted.
    pub accepted: u64,
    /// Updates rejected.
    pub rejected: u64,
}

struct SourceEntry {
    resources: Resources,
    status: SourceStatus,
}

impl Default for ConfigStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigStore")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl ConfigStore {
    /// An empty store at version 0.
    pub fn new() -> Self {
        let empty = Arc::new(Snapshot::default());
        let (changes, _) = watch::channel(Arc::clone(&empty));
        Self {
            inner: Arc::new(Inner {
                current: ArcSwap::new(empty),
                changes,
                writers: Mutex::new(Writers::default()),
            }),
        }
    }

    /// The current snapshot, for keeping.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// The current snapshot, for a short look (no reference-count
    /// increment on the fast path).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.inner.current.load()
    }

    /// The current version.
    pub fn version(&self) -> Version {
        self.inner.current.load().version()
    }

    /// Replaces everything `source` contributes with `resources`.
    ///
    /// The merged config of all sources is validated as a whole; on
    /// success it becomes the current snapshot and the new version is
    /// returned. When nothing changed, the version stays the same. On
    /// failure nothing changes and the rejection is recorded.
    ///
    /// A resource name may be defined by one source only: a publish that
    /// would define a name another source already defines is rejected.
    pub fn publish(&self, source: SourceId, resources: Resources) -> Result<Version, PublishError> {
        let mut w = self.writers();
        let warnings: Arc<[String]> = resources.warnings.clone().into();
        let previous = w.sources.insert(
            source.clone(),
            SourceEntry {
                resources,
                status: SourceStatus {
                    source: source.clone(),
                    accepted_version: None,
                    accepted_at: None,
                    last_rejection: None,
                    warnings: Arc::clone(&warnings),
                },
            },
        );
        let current = self.inner.current.load_full();
        let next = Version(current.version().0 + 1);
        match merge(&w.sources, next, &current) {
            Ok(snapshot) => {
                let version = if snapshot.same_resources(&current) {
                    current.version()
                } else {
                    let snapshot = Arc::new(snapshot);
                    self.inner.current.store(Arc::clone(&snapshot));
                    self.inner.changes.send_replace(snapshot);
                    next
                };
                if let Some(entry) = w.sources.get_mut(&source) {
                    entry.status.accepted_version = Some(match &previous {
                        Some(p) if p.resources == entry.resources => {
                            p.status.accepted_version.unwrap_or(version)
                        }
                        _ => version,
                    });
                    entry.status.accepted_at = Some(SystemTime::now());
                }
                w.updates.entry(source.clone()).or_default().accepted += 1;
                tracing::debug!(%source, %version, "config accepted");
                Ok(version)
            }
            Err(err) => {
                let reason = err.to_string();
                w.updates.entry(source.clone()).or_default().rejected += 1;
                match previous {
                    Some(mut p) => {
                        p.status.last_rejection = Some(Rejection {
                            at: SystemTime::now(),
                            reason: reason.clone(),
                        });
                        w.sources.insert(source.clone(), p);
                    }
                    None => {
                        w.sources.remove(&source);
                    }
                }
                tracing::warn!(%source, %reason, "config rejected; keeping the last good config");
                Err(PublishError { source, reason })
            }
        }
    }

    /// Records that an update from `source` could not even be read (for
    /// example a YAML syntax error). The config does not change.
    pub fn reject(&self, source: SourceId, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(%source, %reason, "config rejected; keeping the last good config");
        let mut w = self.writers();
        w.updates.entry(source.clone()).or_default().rejected += 1;
        let entry = w
            .sources
            .entry(source.clone())
            .or_insert_with(|| SourceEntry {
                resources: Resources::default(),
                status: SourceStatus {
                    source,
                    accepted_version: None,
                    accepted_at: None,
                    last_rejection: None,
                    warnings: Arc::from([]),
                },
            });
        entry.status.last_rejection = Some(Rejection {
            at: SystemTime::now(),
            reason,
        });
    }

    /// Removes everything `source` contributed.
    pub fn remove_source(&self, source: &SourceId) -> Result<Version, PublishError> {
        let mut w = self.writers();
        let Some(old) = w.sources.remove(source) else {
            return Ok(self.version());
        };
        let current = self.inner.current.load_full();
        let next = Version(current.version().0 + 1);
        match merge(&w.sources, next, &current) {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.inner.current.store(Arc::clone(&snapshot));
                self.inner.changes.send_replace(snapshot);
                Ok(next)
            }
            Err(err) => {
                w.sources.insert(source.clone(), old);
                Err(PublishError {
                    source: source.clone(),
                    reason: err.to_string(),
                })
            }
        }
    }

    /// The status of every source, by name.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.writers()
            .sources
            .values()
            .map(|e| e.status.clone())
            .collect()
    }

    /// The updates every source offered so far, by source name (see
    /// [`UpdateCounts`]).
    pub fn update_counts(&self) -> Vec<(SourceId, UpdateCounts)> {
        self.writers()
            .updates
            .iter()
            .map(|(s, c)| (s.clone(), *c))
            .collect()
    }

    /// The status of one source.
    pub fn source_status(&self, source: &SourceId) -> Option<SourceStatus> {
        self.writers().sources.get(source).map(|e| e.status.clone())
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.changes.subscribe()
    }

    /// Waits until the store is at `version` or later and returns that
    /// snapshot.
    pub async fn wait_for(&self, version: Version) -> Arc<Snapshot> {
        let mut rx = self.subscribe();
        loop {
            let snap = rx.borrow_and_update().clone();
            if snap.version() >= version {
                return snap;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `self`, so this cannot happen.
                return self.snapshot();
            }
        }
    }

    /// Watches one listener; see [`ResourceWatch`].
    pub fn watch_listener(&self, name: &str) -> ResourceWatch<Listener> {
        ResourceWatch::new(self.subscribe(), name, |s, n| s.listener(n).cloned())
    }

    /// Watches one route table; see [`ResourceWatch`].
    pub fn watch_route_table(&self, name: &str) -> ResourceWatch<RouteTable> {
        ResourceWatch::new(self.subscribe(), name, |s, n| s.route_table(n).cloned())
    }

    /// Watches one cluster; see [`ResourceWatch`].
    pub fn watch_cluster(&self, name: &str) -> ResourceWatch<Cluster> {
        ResourceWatch::new(self.subscribe(), name, |s, n| s.cluster(n).cloned())
    }

    /// Watches the endpoints of one cluster; see [`ResourceWatch`].
    pub fn watch_endpoints(&self, cluster: &str) -> ResourceWatch<EndpointSet> {
        ResourceWatch::new(self.subscribe(), cluster, |s, n| s.endpoints(n).cloned())
    }

    fn writers(&self) -> MutexGuard<'_, Writers> {
        // A panic while holding the lock cannot leave `Writers` half-updated
        // in a way that matters: every field is replaced whole.
        self.inner.writers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn merge(
    sources: &BTreeMap<SourceId, SourceEntry>,
    version: Version,
    previous: &Snapshot,
) -> Result<Snapshot, InvalidConfig> {
    let mut merged = Resources::default();
    let mut owner: HashMap<(ResourceKind, String), SourceId> = HashMap::new();
    let mut claim =
        |kind: ResourceKind, name: &str, source: &SourceId| -> Result<(), InvalidConfig> {
            if let Some(other) = owner.insert((kind, name.to_owned()), source.clone())
                && &other != source
            {
                return Err(InvalidConfig::new(
                    crate::error::FieldPath::root(),
                    format!("{kind} {name:?} is defined by both {other} and {source}"),
                ));
            }
            Ok(())
        };
    for (id, entry) in sources {
        let r = &entry.resources;
        for l in &r.listeners {
            claim(ResourceKind::Listener, l.name.as_str(), id)?;
        }
        for t in &r.route_tables {
            claim(ResourceKind::RouteTable, t.name().as_str(), id)?;
        }
        for c in &r.clusters {
            claim(ResourceKind::Cluster, c.name.as_str(), id)?;
        }
        for e in &r.endpoints {
            claim(ResourceKind::EndpointSet, e.cluster().as_str(), id)?;
        }
        merged.listeners.extend(r.listeners.iter().cloned());
        merged.route_tables.extend(r.route_tables.iter().cloned());
        merged.clusters.extend(r.clusters.iter().cloned());
        merged.endpoints.extend(r.endpoints.iter().cloned());
        merged.security.extend(r.security.clone());
        merged.telemetry.extend(r.telemetry.iter().cloned());
    }
    Snapshot::build_with(
        version,
        merged,
        |kind, name| owner.get(&(kind, name.to_owned())).cloned(),
        Some(previous),
    )
}

/// Notification of changes to one resource.
///
/// Built on the store's snapshot channel: [`changed`](Self::changed)
/// returns only when the watched resource's value differs from the last
/// one seen (appears, changes or disappears), not on every snapshot.
pub struct ResourceWatch<T> {
    rx: watch::Receiver<Arc<Snapshot>>,
    name: Arc<str>,
    get: fn(&Snapshot, &str) -> Option<Arc<T>>,
    last: Option<Arc<T>>,
}

impl<T: PartialEq> ResourceWatch<T> {
    fn new(
        mut rx: watch::Receiver<Arc<Snapshot>>,
        name: &str,
        get: fn(&Snapshot, &str) -> Option<Arc<T>>,
    ) -> Self {
        let last = get(&rx.borrow_and_update(), name);
        Self {
            rx,
            name: name.into(),
            get,
            last,
        }
    }

    /// The value as of the last snapshot seen.
    pub fn current(&self) -> Option<Arc<T>> {
        self.last.clone()
    }

    /// Waits for the next change and returns the new value (`None` when
    /// the resource was removed). Returns immediately with the current
    /// value if the store is gone.
    pub async fn changed(&mut self) -> Option<Arc<T>> {
        loop {
            if self.rx.changed().await.is_err() {
                return self.last.clone();
            }
            let next = (self.get)(&self.rx.borrow_and_update(), &self.name);
            let same = match (&next, &self.last) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.last = next.clone();
                return next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardAction, Route, RouteAction, RouteMatch, VirtualHost};

    fn routes_to(cluster: &str) -> Resources {
        Resources::new()
            .with_listener(Listener::client(80, "80"))
            .with_route_table(
                RouteTable::try_new(
                    "80",
                    vec![VirtualHost {
                        name: "svc".into(),
                        domains: Arc::from([Arc::from("svc")]),
                        routes: Arc::from([Route {
                            name: None,
                            matches: Arc::from([RouteMatch::any()]),
                            action: RouteAction::Forward(Box::new(ForwardAction::to(cluster))),
                        }]),
                    }],
                )
                .unwrap(),
            )
    }

    #[test]
    fn invalid_publish_keeps_last_good_config_and_records_why() {
        let store = ConfigStore::new();
        let good = routes_to("c").with_cluster(Cluster::new("c"));
        let v1 = store.publish("file".into(), good).unwrap();
        let err = store.publish("file".into(), routes_to("gone")).unwrap_err();
        assert_eq!(store.version(), v1);
        assert!(store.snapshot().cluster("c").is_some());
        let status = store.source_status(&"file".into()).unwrap();
        assert_eq!(status.accepted_version, Some(v1));
        assert_eq!(status.last_rejection.unwrap().reason, err.reason());
        assert!(
            err.to_string().starts_with("file: route table \"80\""),
            "{err}"
        );
    }

    #[test]
    fn unchanged_publish_keeps_the_version() {
        let store = ConfigStore::new();
        let r = Resources::new().with_cluster(Cluster::new("c"));
        let v1 = store.publish("a".into(), r.clone()).unwrap();
        assert_eq!(store.publish("a".into(), r).unwrap(), v1);
    }

    #[test]
    fn a_change_to_security_policies_alone_is_a_new_version() {
        use crate::model::{PeerAuthentication, PolicyScope};
        let store = ConfigStore::new();
        let r = Resources::new().with_cluster(Cluster::new("c"));
        let v1 = store.publish("a".into(), r.clone()).unwrap();
        let mut with_policy = r;
        with_policy
            .security
            .peer_authentications
            .push(PeerAuthentication::new(
                PolicyScope::new("default", "istio-system"),
                crate::model::security::MtlsMode::Strict,
            ));
        let v2 = store.publish("a".into(), with_policy).unwrap();
        assert!(v2 > v1, "a security-only change must reach readers");
        assert_eq!(store.snapshot().security().peer_authentications.len(), 1);
    }

    #[test]
    fn unchanged_resources_stay_pointer_equal() {
        let store = ConfigStore::new();
        let r = Resources::new().with_cluster(Cluster::new("c"));
        store.publish("a".into(), r.clone()).unwrap();
        let before = Arc::clone(store.snapshot().cluster("c").unwrap());
        store
            .publish("a".into(), r.with_cluster(Cluster::new("d")))
            .unwrap();
        let after = store.snapshot();
        assert!(Arc::ptr_eq(&before, after.cluster("c").unwrap()));
        let prov = after.provenance(ResourceKind::Cluster, "c").unwrap();
        assert_eq!(prov.version, Version(1), "c last changed at version 1");
        assert_eq!(prov.source.as_str(), "a");
        assert_eq!(
            after
                .provenance(ResourceKind::Cluster, "d")
                .unwrap()
                .version,
            Version(2)
        );
    }

    #[test]
    fn two_sources_cannot_define_the_same_name() {
        let store = ConfigStore::new();
        store
            .publish("a".into(), Resources::new().with_cluster(Cluster::new("c")))
            .unwrap();
        let err = store
            .publish("b".into(), Resources::new().with_cluster(Cluster::new("c")))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "b: cluster \"c\" is defined by both a and b"
        );
        assert!(store.source_status(&"b".into()).is_none());
    }

    #[test]
    fn rejections_of_unreadable_updates_are_recorded() {
        let store = ConfigStore::new();
        store.reject("file".into(), "bad yaml");
        let st = store.source_status(&"file".into()).unwrap();
        assert_eq!(st.last_rejection.unwrap().reason, "bad yaml");
        assert_eq!(store.version(), Version(0));
    }

    #[tokio::test]
    async fn resource_watch_fires_only_when_its_resource_changes() {
        let store = ConfigStore::new();
        let mut watch = store.watch_cluster("c");
        assert!(watch.current().is_none());
        store
            .publish("a".into(), Resources::new().with_cluster(Cluster::new("c")))
            .unwrap();
        assert!(watch.changed().await.is_some());
        // An unrelated change does not wake the watch; the next change of
        // `c` does.
        store
            .publish(
                "a".into(),
                Resources::new()
                    .with_cluster(Cluster::new("c"))
                    .with_cluster(Cluster::new("d")),
            )
            .unwrap();
        store
            .publish(
                "a".into(),
                Resources::new()
                    .with_cluster(Cluster::new("c").with_lb_policy(crate::model::LbPolicy::Random))
                    .with_cluster(Cluster::new("d")),
            )
            .unwrap();
        let c = watch.changed().await.unwrap();
        assert_eq!(c.lb_policy, crate::model::LbPolicy::Random);
        store.remove_source(&"a".into()).unwrap();
        assert!(watch.changed().await.is_none());
    }
}
