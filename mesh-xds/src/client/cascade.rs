//! The LDS → RDS → CDS → EDS cascade (gRFC A74): which resources the
//! watched listeners need, and the complete configs published to the
//! store.
//!
//! The wanted set of every type is recomputed from the watched listeners
//! and the cached values after each change. That is reference counting by
//! use (A8.5): a cluster stays subscribed while any route of any watched
//! listener names it, and is unsubscribed (SotW: the reduced name list is
//! resent) when the last one stops naming it.
//!
//! A listener is published only with its route table, every cluster its
//! routes name and each cluster's endpoints (A8.1). While a dependency is
//! still awaited, the previous complete version of that listener stays
//! published (A8.7 warming, make-before-break: a route to a cluster not
//! received yet never reaches the data plane).

use std::collections::{BTreeMap, BTreeSet};

use mesh_core::Resources;
use mesh_core::model::{Cluster, EndpointSet, Listener, RouteAction, RouteTable, SecurityPolicies};

use super::state::State;
use crate::TypeUrl;
use crate::resource::{ClusterEndpoints, Decoded, XdsResource};

/// One listener with everything it needs, as last published.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bundle {
    listener: Listener,
    route_table: Option<RouteTable>,
    clusters: Vec<Cluster>,
    endpoints: Vec<EndpointSet>,
    security: SecurityPolicies,
    warnings: Vec<String>,
}

/// What assembling one listener gave.
enum Assembled {
    /// Every dependency is resolved.
    Complete(Box<Bundle>),
    /// A dependency is still awaited: keep what was published.
    Pending,
    /// The listener failed (does not exist, or rejected without a cached
    /// value): it is not published.
    Failed,
}

/// The clusters a route table sends to (forwarding targets and mirrors).
pub(crate) fn route_clusters(table: &RouteTable, out: &mut BTreeSet<String>) {
    for vh in table.virtual_hosts() {
        for route in vh.routes.iter() {
            if let RouteAction::Forward(f) = &route.action {
                for t in f.clusters.targets() {
                    out.insert(t.cluster.as_str().to_owned());
                }
                for m in f.mirrors.iter() {
                    out.insert(m.cluster.as_str().to_owned());
                }
            }
        }
    }
}

/// Recomputes the wanted names of every type from the watched listeners
/// down the cascade. Returns whether any wanted set changed.
pub(crate) fn recompute(state: &mut State) -> bool {
    let listeners: BTreeSet<String> = state.interest.keys().cloned().collect();
    let mut routes = BTreeSet::new();
    let mut clusters = BTreeSet::new();
    for l in &listeners {
        if let Some(XdsResource::Listener(lr)) = state.value(TypeUrl::Listener, l) {
            match (&lr.inline_route, lr.rds_name()) {
                (Some(table), _) => route_clusters(table, &mut clusters),
                (None, Some(rds)) => {
                    routes.insert(rds.to_owned());
                }
                (None, None) => {}
            }
        }
    }
    for r in &routes {
        if let Some(XdsResource::RouteConfiguration(table)) =
            state.value(TypeUrl::RouteConfiguration, r)
        {
            route_clusters(table, &mut clusters);
        }
    }
    let mut eds = BTreeSet::new();
    for c in &clusters {
        if let Some(XdsResource::Cluster(cr)) = state.value(TypeUrl::Cluster, c)
            && let Some(name) = cr.eds_name()
        {
            eds.insert(name.to_owned());
        }
    }
    let mut changed = state.set_wanted(TypeUrl::Listener, listeners);
    changed |= state.set_wanted(TypeUrl::RouteConfiguration, routes);
    changed |= state.set_wanted(TypeUrl::Cluster, clusters);
    changed |= state.set_wanted(TypeUrl::ClusterLoadAssignment, eds);
    changed
}

/// Recomputes the wanted names until they settle (a change may expose
/// cached values further down). Returns whether anything changed.
pub(crate) fn recompute_all(state: &mut State) -> bool {
    let mut any = false;
    // At most one round per cascade level.
    for _ in 0..4 {
        if !recompute(state) {
            break;
        }
        any = true;
    }
    any
}

fn ignored_warnings(state: &State, t: TypeUrl, name: &str, what: &str, out: &mut Vec<String>) {
    if let Some(e) = state.entry(t, name)
        && let Some(c) = &e.value
    {
        for f in &c.decoded.ignored {
            out.push(format!(
                "xds {what} {name:?} (version {}): field {f} is not applied",
                e.version.as_deref().unwrap_or("")
            ));
        }
    }
}

/// The cluster `c` with its endpoints as `prev` published it, if it did
/// (A8.7: a cluster whose update still waits for a dependency keeps
/// serving as it was).
fn warm_copy(prev: Option<&Bundle>, c: &str) -> Option<(Cluster, EndpointSet)> {
    let prev = prev?;
    let cluster = prev.clusters.iter().find(|x| x.name.as_str() == c)?;
    let eps = prev.endpoints.iter().find(|e| e.cluster().as_str() == c)?;
    Some((cluster.clone(), eps.clone()))
}

/// Assembles the listener `name`. `prev` is its last published bundle: a
/// cluster whose new version still waits for its cluster or EDS resource
/// is taken from it (per-cluster warming, A8.7), so one warming cluster
/// does not hold back the rest of the listener; a cluster it lacks makes
/// the whole listener wait (A8.1: no route to a cluster not received).
fn assemble(state: &State, name: &str, prev: Option<&Bundle>) -> Assembled {
    let Some(entry) = state.entry(TypeUrl::Listener, name) else {
        return Assembled::Pending;
    };
    let Some(XdsResource::Listener(lr)) = state.value(TypeUrl::Listener, name) else {
        return if entry.pending() {
            Assembled::Pending
        } else {
            Assembled::Failed
        };
    };
    let mut warnings = Vec::new();
    ignored_warnings(state, TypeUrl::Listener, name, "Listener", &mut warnings);
    let route_table = match (&lr.inline_route, lr.rds_name()) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(rds)) => match state.value(TypeUrl::RouteConfiguration, rds) {
            Some(XdsResource::RouteConfiguration(_)) if !lr.http.is_default() => {
                // The listener's HTTP connection manager differs from
                // istiod's defaults the RDS cache was translated with:
                // translate the route configuration again for it.
                let raw = state
                    .entry(TypeUrl::RouteConfiguration, rds)
                    .and_then(|e| e.value.as_ref())
                    .map(|c| std::sync::Arc::clone(&c.raw));
                let table = raw.and_then(|raw| {
                    match crate::translate::route_configuration(
                        &raw.value,
                        state.decode_context(),
                        &lr.http,
                    ) {
                        Ok(Decoded {
                            resource: XdsResource::RouteConfiguration(t),
                            ..
                        }) => Some(t),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(route_configuration = rds, listener = name, error = %e, "xDS route configuration rejected for this listener's HTTP connection manager; the listener is not published");
                            None
                        }
                    }
                });
                match table {
                    Some(t) => Some(t),
                    None => return Assembled::Failed,
                }
            }
            Some(XdsResource::RouteConfiguration(t)) => {
                ignored_warnings(
                    state,
                    TypeUrl::RouteConfiguration,
                    rds,
                    "RouteConfiguration",
                    &mut warnings,
                );
                Some(t.clone())
            }
            _ => {
                // A8.2: an RDS error without a cached value fails the
                // listener; still awaited means not complete yet.
                return match state.entry(TypeUrl::RouteConfiguration, rds) {
                    Some(e) if !e.pending() => Assembled::Failed,
                    // Warming (A8.7): the listener's previous version
                    // keeps serving, with its clusters' current versions.
                    _ => match prev.and_then(|p| refresh(state, p)) {
                        Some(b) => Assembled::Complete(Box::new(b)),
                        None => Assembled::Pending,
                    },
                };
            }
        },
        (None, None) => None,
    };
    let bundle = Bundle {
        listener: lr.listener.clone(),
        route_table,
        clusters: Vec::new(),
        endpoints: Vec::new(),
        security: lr.security.clone(),
        warnings,
    };
    match with_clusters(state, bundle, prev) {
        Some(b) => Assembled::Complete(Box::new(b)),
        // A route names a cluster not received yet: the previous version
        // of the listener (its route table) keeps serving, with the
        // current versions of its clusters (make-before-break, A8.1).
        None => match prev.and_then(|p| refresh(state, p)) {
            Some(b) => Assembled::Complete(Box::new(b)),
            None => Assembled::Pending,
        },
    }
}

/// `prev` with the current versions of its clusters (every one of them
/// is in `prev`, so this only fails if `prev` is itself incomplete).
fn refresh(state: &State, prev: &Bundle) -> Option<Bundle> {
    let mut b = prev.clone();
    b.clusters.clear();
    b.endpoints.clear();
    b.warnings
        .retain(|w| !w.starts_with("xds Cluster") && !w.starts_with("xds ClusterLoadAssignment"));
    with_clusters(state, b, Some(prev))
}

/// Fills in the clusters and endpoints `bundle`'s route table names;
/// `None` when one is still awaited and `prev` has no version of it.
fn with_clusters(state: &State, mut bundle: Bundle, prev: Option<&Bundle>) -> Option<Bundle> {
    let node = &state.config.node.id;
    let mut cluster_names = BTreeSet::new();
    if let Some(t) = &bundle.route_table {
        route_clusters(t, &mut cluster_names);
    }
    let warnings = &mut bundle.warnings;
    let mut clusters = Vec::new();
    let mut endpoints = Vec::new();
    for c in &cluster_names {
        let Some(entry) = state.entry(TypeUrl::Cluster, c) else {
            match warm_copy(prev, c) {
                Some((cluster, eps)) => {
                    clusters.push(cluster);
                    endpoints.push(eps);
                    continue;
                }
                None => return None,
            }
        };
        let Some(XdsResource::Cluster(cr)) = state.value(TypeUrl::Cluster, c) else {
            if entry.pending() {
                match warm_copy(prev, c) {
                    Some((cluster, eps)) => {
                        clusters.push(cluster);
                        endpoints.push(eps);
                        continue;
                    }
                    None => return None,
                }
            }
            // A8.3: a failed cluster fails only the calls routed to it: it
            // is published without endpoints, and the warning names it.
            warnings.push(format!(
                "xds Cluster {c:?} (node {node}): {}; calls to it fail UNAVAILABLE",
                entry.error.as_deref().unwrap_or("not available")
            ));
            clusters.push(Cluster::new(c.as_str()));
            endpoints.push(EndpointSet::empty(c.as_str()));
            continue;
        };
        ignored_warnings(state, TypeUrl::Cluster, c, "Cluster", warnings);
        let mut cluster = cr.cluster.clone();
        if cluster.name.as_str() != c {
            cluster.name = c.as_str().into();
        }
        let eps = match &cr.endpoints {
            ClusterEndpoints::Inline(eps) => eps.clone(),
            ClusterEndpoints::Eds(eds) => match state.value(TypeUrl::ClusterLoadAssignment, eds) {
                Some(XdsResource::Endpoints(er)) => {
                    ignored_warnings(
                        state,
                        TypeUrl::ClusterLoadAssignment,
                        eds,
                        "ClusterLoadAssignment",
                        warnings,
                    );
                    er.endpoints.clone()
                }
                _ => match state.entry(TypeUrl::ClusterLoadAssignment, eds) {
                    Some(e) if !e.pending() => {
                        warnings.push(format!(
                            "xds ClusterLoadAssignment {eds:?} of cluster {c:?} (node {node}): {}; the cluster has no endpoints",
                            e.error.as_deref().unwrap_or("not available")
                        ));
                        Vec::new()
                    }
                    // A8.7: a cluster is used only once its EDS arrived;
                    // until then its previous version keeps serving.
                    _ => match warm_copy(prev, c) {
                        Some((cluster, eps)) => {
                            clusters.push(cluster);
                            endpoints.push(eps);
                            continue;
                        }
                        None => return None,
                    },
                },
            },
        };
        match EndpointSet::try_new(c.as_str(), eps) {
            Ok(set) => endpoints.push(set),
            Err(err) => {
                warnings.push(format!("xds Cluster {c:?} (node {node}): endpoints: {err}"));
                endpoints.push(EndpointSet::empty(c.as_str()));
            }
        }
        clusters.push(cluster);
    }
    bundle.clusters = clusters;
    bundle.endpoints = endpoints;
    Some(bundle)
}

/// The complete configs, per listener; kept between updates.
#[derive(Default)]
pub(crate) struct Published {
    bundles: BTreeMap<String, Bundle>,
    last: Option<Resources>,
}

impl Published {
    /// Reassembles every watched listener and returns the resources to
    /// publish when they differ from the last published ones.
    pub(crate) fn update(&mut self, state: &State) -> Option<Resources> {
        self.bundles
            .retain(|name, _| state.interest.contains_key(name));
        for name in state.interest.keys() {
            match assemble(state, name, self.bundles.get(name)) {
                Assembled::Complete(b) => {
                    self.bundles.insert(name.clone(), *b);
                }
                Assembled::Pending => {}
                Assembled::Failed => {
                    self.bundles.remove(name);
                }
            }
        }
        let mut listeners = BTreeMap::new();
        let mut tables = BTreeMap::new();
        let mut clusters = BTreeMap::new();
        let mut endpoints = BTreeMap::new();
        let mut security = SecurityPolicies::default();
        let mut warnings = Vec::new();
        for b in self.bundles.values() {
            listeners
                .entry(b.listener.name.as_str().to_owned())
                .or_insert_with(|| b.listener.clone());
            if let Some(t) = &b.route_table {
                tables
                    .entry(t.name().as_str().to_owned())
                    .or_insert_with(|| t.clone());
            }
            for c in &b.clusters {
                clusters
                    .entry(c.name.as_str().to_owned())
                    .or_insert_with(|| c.clone());
            }
            for e in &b.endpoints {
                endpoints
                    .entry(e.cluster().as_str().to_owned())
                    .or_insert_with(|| e.clone());
            }
            security.extend(b.security.clone());
            for w in &b.warnings {
                if !warnings.contains(w) {
                    warnings.push(w.clone());
                }
            }
        }
        let route_tables: Vec<RouteTable> = tables.into_values().collect();
        let mut clusters: Vec<Cluster> = clusters.into_values().collect();
        // gRFC A42: a ring-hash or Maglev cluster hashes by the key of the
        // routes that send to it (the model keeps the key on the cluster).
        for name in crate::translate::resolve_route_hash_keys(&route_tables, &mut clusters) {
            let w = format!(
                "xds Cluster {name:?}: its routes set different hash policies; \
                 requests to it are hashed at random"
            );
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        let resources = Resources {
            listeners: listeners.into_values().collect(),
            route_tables,
            clusters,
            endpoints: endpoints.into_values().collect(),
            security,
            // xDS carries no Telemetry resource (istiod compiles it into
            // Envoy config): only the file source and code set it.
            telemetry: Vec::new(),
            warnings,
        };
        if self.last.as_ref() == Some(&resources) {
            return None;
        }
        self.last = Some(resources.clone());
        Some(resources)
    }
}
