//! Snapshots: one complete, validated, immutable version of the config.

use std::fmt;
use std::sync::Arc;

// Keys are names from config, never from requests, so a fast hasher
// without HashDoS resistance is safe here.
use rustc_hash::FxHashMap as HashMap;

use crate::error::{FieldPath, InvalidConfig};
use crate::model::{
    Cluster, EndpointSet, Listener, Route, RouteAction, RouteTable, SecurityPolicies,
    TelemetryPolicy, VirtualHost,
};
use crate::name::{ClusterName, ListenerName, RouteTableName};
use crate::request::RouteRequest;
use crate::store::SourceId;

/// A store version. Every accepted change increases it by one; version 0
/// is the empty config a store starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The kinds of resources in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// A [`Listener`].
    Listener,
    /// A [`RouteTable`].
    RouteTable,
    /// A [`Cluster`].
    Cluster,
    /// An [`EndpointSet`].
    EndpointSet,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Listener => "listener",
            Self::RouteTable => "route table",
            Self::Cluster => "cluster",
            Self::EndpointSet => "endpoint set",
        })
    }
}

/// The resources one source contributes, before merging and validation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Route tables.
    pub route_tables: Vec<RouteTable>,
    /// Clusters.
    pub clusters: Vec<Cluster>,
    /// Endpoint sets.
    pub endpoints: Vec<EndpointSet>,
    /// Server-side security policies (`PeerAuthentication`,
    /// `RequestAuthentication`, `AuthorizationPolicy`).
    pub security: SecurityPolicies,
    /// `Telemetry` resources (their tracing part), in source order.
    pub telemetry: Vec<TelemetryPolicy>,
    /// Config the source read but does not apply (unsupported fields or
    /// kinds), one line each, recorded in the store's status.
    pub warnings: Vec<String>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a listener.
    pub fn with_listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Adds a route table.
    pub fn with_route_table(mut self, table: RouteTable) -> Self {
        self.route_tables.push(table);
        self
    }

    /// Adds a cluster.
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.clusters.push(cluster);
        self
    }

    /// Adds an endpoint set.
    pub fn with_endpoints(mut self, endpoints: EndpointSet) -> Self {
        self.endpoints.push(endpoints);
        self
    }
}

/// Where a resource in a snapshot came from and when it last changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// The source that defines it.
    pub source: SourceId,
    /// The store version at which its value last changed.
    pub version: Version,
}

/// A complete, validated version of the config.
///
/// Every route points at a cluster the same snapshot holds and every
/// client listener at a route table it holds: a snapshot never tears
/// (gRFC A74). Readers get it from [`ConfigStore`](crate::ConfigStore) with
/// one atomic load and keep it as long as they like; it never changes.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: Version,
    listeners: HashMap<ListenerName, Arc<Listener>>,
    route_tables: HashMap<RouteTableName, Arc<RouteTable>>,
    clusters: HashMap<ClusterName, Arc<Cluster>>,
    endpoints: HashMap<ClusterName, Arc<EndpointSet>>,
    security: Arc<SecurityPolicies>,
    telemetry: Arc<[TelemetryPolicy]>,
    provenance: HashMap<(ResourceKind, Arc<str>), Provenance>,
    // Derived: the route table of the client listener on each port.
    client_ports: HashMap<u16, Arc<RouteTable>>,
}

/// Why a request has no route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoRoute {
    /// No client listener for the request's port.
    NoListener {
        /// The port.
        port: u16,
    },
    /// The named listener does not exist.
    UnknownListener {
        /// The listener name.
        listener: ListenerName,
    },
    /// The route table has no virtual host for the authority.
    NoVirtualHost {
        /// The route table.
        route_table: RouteTableName,
    },
    /// The virtual host has no route matching the request (Envoy answers
    /// 404 with response flag `NR`).
    NoMatchingRoute {
        /// The route table.
        route_table: RouteTableName,
        /// The virtual host.
        virtual_host: Arc<str>,
    },
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoListener { port } => write!(f, "no client listener for port {port}"),
            Self::UnknownListener { listener } => write!(f, "listener {listener:?} does not exist"),
            Self::NoVirtualHost { route_table } => {
                write!(
                    f,
                    "no virtual host in route table {route_table:?} serves this authority"
                )
            }
            Self::NoMatchingRoute {
                route_table,
                virtual_host,
            } => write!(
                f,
                "no route of virtual host {virtual_host:?} (route table {route_table:?}) matches"
            ),
        }
    }
}

impl std::error::Error for NoRoute {}

/// The route that takes a request: where it was found and what it says.
#[derive(Clone, Copy, Debug)]
pub struct RouteHit<'a> {
    /// The route table.
    pub table: &'a Arc<RouteTable>,
    /// The index of the virtual host in the table.
    pub virtual_host_index: usize,
    /// The index of the route in the virtual host.
    pub route_index: usize,
}

impl<'a> RouteHit<'a> {
    /// The virtual host.
    pub fn virtual_host(&self) -> &'a VirtualHost {
        &self.table.virtual_hosts()[self.virtual_host_index]
    }

    /// The route.
    pub fn route(&self) -> &'a Route {
        &self.virtual_host().routes[self.route_index]
    }
}

impl Snapshot {
    /// Validates `resources` as one complete config at `version`.
    ///
    /// Fails when two resources of a kind share a name, two client
    /// listeners named `0.0.0.0_<port>` share a port, a listener names a missing route table, or a
    /// route names a missing cluster. The error's path names the resource.
    pub fn build(version: Version, resources: Resources) -> Result<Self, InvalidConfig> {
        Self::build_with(version, resources, |_, _| None, None)
    }

    /// Like [`build`](Self::build), recording each resource's source, and
    /// reusing the `Arc`s of `previous` for values that did not change so
    /// that unchanged resources stay pointer-equal across versions.
    pub(crate) fn build_with(
        version: Version,
        resources: Resources,
        source_of: impl Fn(ResourceKind, &str) -> Option<SourceId>,
        previous: Option<&Snapshot>,
    ) -> Result<Self, InvalidConfig> {
        let mut snap = Snapshot {
            version,
            ..Snapshot::default()
        };

        fn insert<N: Clone + Eq + std::hash::Hash + AsRef<str>, T: PartialEq>(
            kind: ResourceKind,
            map: &mut HashMap<N, Arc<T>>,
            prev: Option<&HashMap<N, Arc<T>>>,
            name: N,
            value: T,
        ) -> Result<(), InvalidConfig> {
            if map.contains_key(&name) {
                return Err(InvalidConfig::new(
                    FieldPath::root(),
                    format!("{kind} {:?} is defined twice", name.as_ref()),
                ));
            }
            let arc = match prev.and_then(|p| p.get(&name)) {
                Some(old) if **old == value => Arc::clone(old),
                _ => Arc::new(value),
            };
            map.insert(name, arc);
            Ok(())
        }

        snap.telemetry = match previous {
            Some(p) if *p.telemetry == *resources.telemetry => Arc::clone(&p.telemetry),
            _ => Arc::from(resources.telemetry),
        };
        snap.security = match previous {
            Some(p) if *p.security == resources.security => Arc::clone(&p.security),
            _ => Arc::new(resources.security),
        };
        for l in resources.listeners {
            insert(
                ResourceKind::Listener,
                &mut snap.listeners,
                previous.map(|p| &p.listeners),
                l.name.clone(),
                l,
            )?;
        }
        for t in resources.route_tables {
            insert(
                ResourceKind::RouteTable,
                &mut snap.route_tables,
                previous.map(|p| &p.route_tables),
                t.name().clone(),
                t,
            )?;
        }
        for c in resources.clusters {
            insert(
                ResourceKind::Cluster,
                &mut snap.clusters,
                previous.map(|p| &p.clusters),
                c.name.clone(),
                c,
            )?;
        }
        for e in resources.endpoints {
            insert(
                ResourceKind::EndpointSet,
                &mut snap.endpoints,
                previous.map(|p| &p.endpoints),
                e.cluster().clone(),
                e,
            )?;
        }

        // References: listener -> route table -> cluster.
        let mut listeners: Vec<_> = snap.listeners.values().collect();
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        for l in listeners {
            let Some(rt) = l.route_table() else { continue };
            let table = snap.route_tables.get(rt).ok_or_else(|| {
                InvalidConfig::new(
                    FieldPath::root(),
                    format!(
                        "listener {:?} names route table {:?}, which does not exist",
                        l.name.as_str(),
                        rt.as_str()
                    ),
                )
            })?;
            // Only an outbound listener named as Istio names sidecar ones
            // (`0.0.0.0_<port>`) claims its port: proxyless API listeners
            // (`<fqdn>:<port>`, reached by name through `route_via`)
            // share ports with one another.
            if !l.claims_port() {
                continue;
            }
            if snap
                .client_ports
                .insert(l.port, Arc::clone(table))
                .is_some()
            {
                return Err(InvalidConfig::new(
                    FieldPath::root(),
                    format!(
                        "listener {:?}: another client listener already uses port {}",
                        l.name.as_str(),
                        l.port
                    ),
                ));
            }
        }
        let mut tables: Vec<_> = snap.route_tables.values().collect();
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        for t in tables {
            for (vi, vh) in t.virtual_hosts().iter().enumerate() {
                for (ri, route) in vh.routes.iter().enumerate() {
                    let RouteAction::Forward(fwd) = &route.action else {
                        continue;
                    };
                    let targets = fwd
                        .clusters
                        .targets()
                        .iter()
                        .map(|t| (&t.cluster, "clusters"));
                    let mirrors = fwd.mirrors.iter().map(|m| (&m.cluster, "mirrors"));
                    for (ci, (cluster, field)) in targets.chain(mirrors).enumerate() {
                        if !snap.clusters.contains_key(cluster) {
                            return Err(InvalidConfig::new(
                                FieldPath::root(),
                                format!(
                                    "route table {:?}: virtual_hosts[{vi}].routes[{ri}].{field}[{ci}] names cluster {:?}, which does not exist",
                                    t.name().as_str(),
                                    cluster.as_str()
                                ),
                            ));
                        }
                    }
                }
            }
        }

        // Provenance: a resource keeps the version at which it last changed.
        let mut provenance = HashMap::default();
        let mut record = |kind: ResourceKind, name: &str, unchanged: bool| {
            let key = (kind, Arc::<str>::from(name));
            let version = match previous.and_then(|p| p.provenance.get(&key)) {
                Some(prev) if unchanged => prev.version,
                _ => version,
            };
            if let Some(source) = source_of(kind, name) {
                provenance.insert(key, Provenance { source, version });
            }
        };
        fn same<N: Eq + std::hash::Hash, T>(
            prev: Option<&HashMap<N, Arc<T>>>,
            name: &N,
            v: &Arc<T>,
        ) -> bool {
            prev.and_then(|p| p.get(name))
                .is_some_and(|o| Arc::ptr_eq(o, v))
        }
        for (n, v) in &snap.listeners {
            record(
                ResourceKind::Listener,
                n.as_str(),
                same(previous.map(|p| &p.listeners), n, v),
            );
        }
        for (n, v) in &snap.route_tables {
            record(
                ResourceKind::RouteTable,
                n.as_str(),
                same(previous.map(|p| &p.route_tables), n, v),
            );
        }
        for (n, v) in &snap.clusters {
            record(
                ResourceKind::Cluster,
                n.as_str(),
                same(previous.map(|p| &p.clusters), n, v),
            );
        }
        for (n, v) in &snap.endpoints {
            record(
                ResourceKind::EndpointSet,
                n.as_str(),
                same(previous.map(|p| &p.endpoints), n, v),
            );
        }
        snap.provenance = provenance;
        Ok(snap)
    }

    /// The store version of this snapshot.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether this snapshot holds the same resources as `other`,
    /// regardless of version.
    pub fn same_resources(&self, other: &Snapshot) -> bool {
        self.listeners == other.listeners
            && self.route_tables == other.route_tables
            && self.clusters == other.clusters
            && self.endpoints == other.endpoints
            && self.security == other.security
            && self.telemetry == other.telemetry
    }

    /// The server-side security policies (`PeerAuthentication`,
    /// `RequestAuthentication`, `AuthorizationPolicy`) of every source, in
    /// source order and, within a file, document order.
    pub fn security(&self) -> &Arc<SecurityPolicies> {
        &self.security
    }

    /// The `Telemetry` policies of every source, in source order and,
    /// within a file, document order
    /// ([`effective_tracing`](crate::model::effective_tracing) resolves
    /// them for a workload).
    pub fn telemetry(&self) -> &Arc<[TelemetryPolicy]> {
        &self.telemetry
    }

    /// A listener by name.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name)
    }

    /// A route table by name.
    pub fn route_table(&self, name: &str) -> Option<&Arc<RouteTable>> {
        self.route_tables.get(name)
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The endpoints of a cluster, if any were published.
    pub fn endpoints(&self, cluster: &str) -> Option<&Arc<EndpointSet>> {
        self.endpoints.get(cluster)
    }

    /// All listeners, in no particular order.
    pub fn listeners(&self) -> impl Iterator<Item = &Arc<Listener>> {
        self.listeners.values()
    }

    /// All route tables, in no particular order.
    pub fn route_tables(&self) -> impl Iterator<Item = &Arc<RouteTable>> {
        self.route_tables.values()
    }

    /// All clusters, in no particular order.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }

    /// All endpoint sets, in no particular order.
    pub fn endpoint_sets(&self) -> impl Iterator<Item = &Arc<EndpointSet>> {
        self.endpoints.values()
    }

    /// Where a resource came from and the version at which it last changed.
    pub fn provenance(&self, kind: ResourceKind, name: &str) -> Option<&Provenance> {
        self.provenance.get(&(kind, Arc::from(name)))
    }

    /// The route table of the client listener on `port`.
    pub fn client_route_table(&self, port: u16) -> Option<&Arc<RouteTable>> {
        self.client_ports.get(&port)
    }

    /// Routes a request that is addressed by its authority and port: the
    /// port selects the client listener and so the route table, the
    /// authority the virtual host, and the first matching route wins.
    pub fn route<'a>(&'a self, req: &RouteRequest<'_>) -> Result<RouteHit<'a>, NoRoute> {
        let table = self
            .client_ports
            .get(&req.port)
            .ok_or(NoRoute::NoListener { port: req.port })?;
        Self::route_in(table, req)
    }

    /// Routes a request through the named listener (a proxyless gRPC
    /// `xds:///<listener>` target).
    pub fn route_via<'a>(
        &'a self,
        listener: &str,
        req: &RouteRequest<'_>,
    ) -> Result<RouteHit<'a>, NoRoute> {
        let l = self
            .listeners
            .get(listener)
            .ok_or_else(|| NoRoute::UnknownListener {
                listener: ListenerName::new(listener),
            })?;
        let table = l
            .route_table()
            .and_then(|rt| self.route_tables.get(rt))
            .ok_or_else(|| NoRoute::UnknownListener {
                listener: l.name.clone(),
            })?;
        Self::route_in(table, req)
    }

    /// Routes a request within one route table.
    pub fn route_in<'a>(
        table: &'a Arc<RouteTable>,
        req: &RouteRequest<'_>,
    ) -> Result<RouteHit<'a>, NoRoute> {
        let vi = table
            .virtual_host_index(req.authority)
            .ok_or_else(|| NoRoute::NoVirtualHost {
                route_table: table.name().clone(),
            })?;
        let ri = table
            .route_index(vi, req)
            .ok_or_else(|| NoRoute::NoMatchingRoute {
                route_table: table.name().clone(),
                virtual_host: Arc::clone(&table.virtual_hosts()[vi].name),
            })?;
        Ok(RouteHit {
            table,
            virtual_host_index: vi,
            route_index: ri,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardAction, RouteMatch};

    fn table(cluster: &str) -> RouteTable {
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
        .unwrap()
    }

    #[test]
    fn routes_must_name_existing_clusters() {
        let err = Snapshot::build(
            Version(1),
            Resources::new()
                .with_listener(Listener::client(80, "80"))
                .with_route_table(table("missing")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "route table \"80\": virtual_hosts[0].routes[0].clusters[0] names cluster \"missing\", which does not exist"
        );
    }

    #[test]
    fn listeners_must_name_existing_route_tables() {
        let err = Snapshot::build(
            Version(1),
            Resources::new().with_listener(Listener::client(80, "80")),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "listener \"0.0.0.0_80\" names route table \"80\", which does not exist"
        );
    }

    #[test]
    fn proxyless_api_listeners_share_a_port_and_are_reached_by_name() {
        let api = |name: &str| Listener {
            name: name.into(),
            port: 80,
            kind: crate::model::ListenerKind::Client {
                route_table: "80".into(),
            },
        };
        let snap = Snapshot::build(
            Version(1),
            Resources::new()
                .with_listener(api("svc.ns.svc.cluster.local:80"))
                .with_listener(api("other.ns.svc.cluster.local:80"))
                .with_route_table(table("c"))
                .with_cluster(Cluster::new("c")),
        )
        .unwrap();
        let headers = http::HeaderMap::new();
        let req = RouteRequest {
            method: &http::Method::GET,
            authority: "svc",
            port: 80,
            path: "/",
            headers: &headers,
        };
        assert_eq!(
            snap.route(&req).unwrap_err(),
            NoRoute::NoListener { port: 80 },
            "only 0.0.0.0_<port> listeners claim the port"
        );
        assert!(snap.route_via("svc.ns.svc.cluster.local:80", &req).is_ok());
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = Snapshot::build(
            Version(1),
            Resources::new()
                .with_cluster(Cluster::new("a"))
                .with_cluster(Cluster::new("a")),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "cluster \"a\" is defined twice");
    }

    #[test]
    fn routes_by_port_then_authority_then_match() {
        let snap = Snapshot::build(
            Version(1),
            Resources::new()
                .with_listener(Listener::client(80, "80"))
                .with_route_table(table("c"))
                .with_cluster(Cluster::new("c")),
        )
        .unwrap();
        let headers = http::HeaderMap::new();
        let req = |authority, port| RouteRequest {
            method: &http::Method::GET,
            authority,
            port,
            path: "/",
            headers: &headers,
        };
        let hit = snap.route(&req("svc", 80)).unwrap();
        assert_eq!(hit.virtual_host().name.as_ref(), "svc");
        assert_eq!(
            snap.route(&req("svc", 81)).unwrap_err(),
            NoRoute::NoListener { port: 81 }
        );
        assert!(matches!(
            snap.route(&req("other", 80)).unwrap_err(),
            NoRoute::NoVirtualHost { .. }
        ));
        assert!(snap.route_via("0.0.0.0_80", &req("svc", 1234)).is_ok());
    }
}
