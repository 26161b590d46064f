//! Endpoints: the addresses behind a cluster, with weight, health and
//! labels.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::{FieldPath, InvalidConfig};
use crate::name::ClusterName;

/// Where an endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name resolved when connecting (Istio `resolution: DNS`),
    /// with Envoy's `LOGICAL_DNS` behaviour: every new connection resolves
    /// the name again and uses the first address.
    Dns {
        /// The host name.
        host: Arc<str>,
        /// The port.
        port: u16,
    },
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(addr) => write!(f, "{addr}"),
            Self::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Health of an endpoint as reported by its source (EDS `health_status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Health {
    /// Not known; treated as healthy (gRFC A27, Envoy).
    #[default]
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy: not picked unless the cluster is in panic mode.
    Unhealthy,
    /// Draining: not picked for new requests unless in panic mode.
    Draining,
}

impl Health {
    /// Whether new requests may be sent to the endpoint.
    pub fn is_routable(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy)
    }
}

/// Endpoint labels (Kubernetes pod labels, ServiceEntry endpoint labels).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<BTreeMap<Arc<str>, Arc<str>>>);

impl Labels {
    /// Labels from key/value pairs.
    pub fn new<K: Into<Arc<str>>, V: Into<Arc<str>>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(Arc::new(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }

    /// The value of a label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| &**v)
    }

    /// Whether every label of `selector` is present here with the same
    /// value (Kubernetes equality-based selection, used by Istio subsets).
    pub fn matches(&self, selector: &Labels) -> bool {
        selector.0.iter().all(|(k, v)| self.0.get(k) == Some(v))
    }

    /// Iterates over the labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where an endpoint runs (Envoy `Locality`; Kubernetes
/// `topology.kubernetes.io/region` / `zone`, Istio `subzone`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// The region.
    pub region: Arc<str>,
    /// The zone.
    pub zone: Arc<str>,
    /// The sub-zone.
    pub sub_zone: Arc<str>,
}

impl Locality {
    /// Parses Istio's `region/zone/subzone` form (trailing parts optional).
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/');
        let mut next = || Arc::from(parts.next().unwrap_or_default());
        Self {
            region: next(),
            zone: next(),
            sub_zone: next(),
        }
    }

    /// Whether no part is set.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.sub_zone)
    }
}

/// One endpoint of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub address: EndpointAddress,
    /// The load-balancing weight, at least 1.
    pub weight: u32,
    /// The health reported by the source.
    pub health: Health,
    /// Labels, used to select subsets and shown in status output.
    pub labels: Labels,
    /// Where the endpoint runs.
    pub locality: Locality,
    /// The failover priority: 0 is used first (EDS `priority`).
    pub priority: u32,
}

impl Endpoint {
    /// A healthy-by-default endpoint of weight 1 without labels.
    pub fn new(address: EndpointAddress) -> Self {
        Self {
            address,
            weight: 1,
            health: Health::Unknown,
            labels: Labels::default(),
            locality: Locality::default(),
            priority: 0,
        }
    }

    /// An endpoint at a socket address.
    pub fn socket(addr: SocketAddr) -> Self {
        Self::new(EndpointAddress::Socket(addr))
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// Whether `other` is the same endpoint for connection purposes: same
    /// address and same metadata. Weight and health may differ; they are
    /// policy, not identity, so a change to them keeps connections and
    /// counters.
    pub fn same_identity(&self, other: &Endpoint) -> bool {
        self.address == other.address
            && self.labels == other.labels
            && self.locality == other.locality
    }
}

/// The endpoints of one cluster (an xDS `ClusterLoadAssignment`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSet {
    cluster: ClusterName,
    endpoints: Arc<[Endpoint]>,
}

impl EndpointSet {
    /// The endpoint set of `cluster`.
    ///
    /// Fails on a zero weight or a duplicate address, as gRPC's EDS
    /// validation does (grpc-go `unmarshal_eds.go`).
    pub fn try_new(
        cluster: impl Into<ClusterName>,
        endpoints: Vec<Endpoint>,
    ) -> Result<Self, InvalidConfig> {
        let mut seen = HashMap::with_capacity(endpoints.len());
        for (i, ep) in endpoints.iter().enumerate() {
            let path = FieldPath::root().field("endpoints").index(i);
            if ep.weight == 0 {
                return Err(InvalidConfig::new(
                    path.field("weight"),
                    "weight must be at least 1",
                ));
            }
            if let Some(prev) = seen.insert(&ep.address, i) {
                return Err(InvalidConfig::new(
                    path.field("address"),
                    format!("duplicate address {} (also endpoints[{prev}])", ep.address),
                ));
            }
        }
        Ok(Self {
            cluster: cluster.into(),
            endpoints: endpoints.into(),
        })
    }

    /// An empty set for `cluster`.
    pub fn empty(cluster: impl Into<ClusterName>) -> Self {
        Self {
            cluster: cluster.into(),
            endpoints: Arc::from([]),
        }
    }

    /// The cluster these endpoints belong to.
    pub fn cluster(&self) -> &ClusterName {
        &self.cluster
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

/// What happened to each endpoint between two versions of a set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointDiff {
    /// For each endpoint of the new set, the index of the same endpoint in
    /// the old set, or `None` when it is new or its identity changed.
    pub kept: Vec<Option<usize>>,
    /// Indexes in the old set of endpoints that are gone (removed, or
    /// replaced because their metadata changed).
    pub removed: Vec<usize>,
}

impl EndpointDiff {
    /// Compares endpoint lists by address and metadata
    /// ([`Endpoint::same_identity`]).
    ///
    /// The runtime keeps the connection pool, in-flight count and other
    /// state of every kept endpoint, so a config push that lists the same
    /// endpoints changes nothing for them; this is the address-and-metadata
    /// diff that Linkerd's balancer does and that tonic-xds's address-only
    /// diff lacks.
    pub fn between(old: &[Endpoint], new: &[Endpoint]) -> Self {
        let by_address: HashMap<&EndpointAddress, usize> = old
            .iter()
            .enumerate()
            .map(|(i, e)| (&e.address, i))
            .collect();
        let mut used = vec![false; old.len()];
        let kept = new
            .iter()
            .map(|e| {
                let i = *by_address.get(&e.address)?;
                (old[i].same_identity(e) && !used[i]).then(|| {
                    used[i] = true;
                    i
                })
            })
            .collect();
        let removed = used
            .iter()
            .enumerate()
            .filter(|(_, u)| !**u)
            .map(|(i, _)| i)
            .collect();
        Self { kept, removed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::socket(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn diff_keeps_same_address_and_metadata() {
        let old = vec![ep(1), ep(2), ep(3)];
        let new = vec![ep(3), ep(4), ep(1).with_weight(5)];
        let d = EndpointDiff::between(&old, &new);
        assert_eq!(d.kept, vec![Some(2), None, Some(0)]);
        assert_eq!(d.removed, vec![1]);
    }

    #[test]
    fn diff_rebuilds_endpoints_whose_labels_changed() {
        let old = vec![ep(1).with_labels(Labels::new([("version", "v1")]))];
        let new = vec![ep(1).with_labels(Labels::new([("version", "v2")]))];
        let d = EndpointDiff::between(&old, &new);
        assert_eq!(d.kept, vec![None]);
        assert_eq!(d.removed, vec![0]);
    }

    #[test]
    fn endpoint_sets_reject_zero_weights_and_duplicates() {
        let err = EndpointSet::try_new("c", vec![ep(1).with_weight(0)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoints[0].weight: weight must be at least 1"
        );
        let err = EndpointSet::try_new("c", vec![ep(1), ep(1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "endpoints[1].address: duplicate address 127.0.0.1:1 (also endpoints[0])"
        );
    }

    #[test]
    fn selectors_match_label_subsets() {
        let labels = Labels::new([("app", "reviews"), ("version", "v1")]);
        assert!(labels.matches(&Labels::new([("version", "v1")])));
        assert!(labels.matches(&Labels::default()));
        assert!(!labels.matches(&Labels::new([("version", "v2")])));
    }
}
