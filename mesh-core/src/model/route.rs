//! Route tables: virtual hosts, ordered routes, matches and actions.
//!
//! The shape is Envoy's `RouteConfiguration` (and so what istiod sends to
//! sidecars and to proxyless gRPC): a route table holds virtual hosts
//! selected by the request's authority, each virtual host holds routes
//! tried in order, and the first route whose match succeeds decides where
//! the request goes. Istio's `VirtualService.http[]` translates one to one
//! into these routes.

use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;
use std::time::Duration;

use crate::error::{FieldPath, InvalidConfig};
use crate::model::matcher::{HeaderMatch, PathMatch, StringMatch};
use crate::model::policy::{
    DirectResponse, FaultPolicy, HashKey, HeaderMutations, HedgePolicy, Mirror, Redirect,
    ResponseClass, RetryPolicy, Rewrite,
};
use crate::name::{ClusterName, RouteTableName};
use crate::request::RouteRequest;

/// The conditions of one match clause; all of them must hold.
///
/// Istio's `HTTPMatchRequest`: within one clause the conditions are ANDed,
/// and a route with several clauses matches when any clause does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    /// The path condition (without the query string).
    pub path: PathMatch,
    /// Compare the path case-insensitively (Istio `ignoreUriCase`).
    pub ignore_case: bool,
    /// Header conditions, all of which must hold.
    pub headers: Arc<[HeaderMatch]>,
    /// The request method.
    pub method: Option<StringMatch>,
    /// The request authority (`:authority` or `Host`).
    pub authority: Option<StringMatch>,
}

impl RouteMatch {
    /// A clause that matches every request.
    pub fn any() -> Self {
        Self {
            path: PathMatch::Any,
            ignore_case: false,
            headers: Arc::from([]),
            method: None,
            authority: None,
        }
    }

    /// A clause on the path alone.
    pub fn path(path: PathMatch) -> Self {
        Self {
            path,
            ..Self::any()
        }
    }

    /// Whether the request satisfies every condition of this clause.
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        self.path.matches(req.path, self.ignore_case)
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.matches(req.method.as_str(), false))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| m.matches(req.authority, false))
            && self.headers.iter().all(|h| h.matches(req.headers))
    }
}

/// One route of a virtual host.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// A name for status output and metrics (Istio `http[].name`).
    pub name: Option<Arc<str>>,
    /// Match clauses; the route applies when any one matches. An empty
    /// list matches every request (Istio: a route without `match`).
    pub matches: Arc<[RouteMatch]>,
    /// What happens to a matching request.
    pub action: RouteAction,
}

impl Route {
    /// Whether the request is taken by this route.
    pub fn matches(&self, req: &RouteRequest<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }
}

/// What a route does with a request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum RouteAction {
    /// Forward to one of the route's weighted clusters (boxed: it is by
    /// far the largest action).
    Forward(Box<ForwardAction>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer with a fixed response.
    DirectResponse(DirectResponse),
}

/// Forwarding to weighted clusters, with the route's policies.
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardAction {
    /// Where requests go, with their shares.
    pub clusters: WeightedClusters,
    /// The route timeout: how long the whole call may take until response
    /// headers arrive. `None` means no timeout, Istio's default for
    /// `VirtualService.http[].timeout` ("disabled by default").
    pub timeout: Option<Duration>,
    /// Retries, if any.
    pub retry: Option<RetryPolicy>,
    /// Hedging, if any (a route has retries or hedging, gRFC A6).
    pub hedge: Option<HedgePolicy>,
    /// Fault injection, if any.
    pub fault: Option<FaultPolicy>,
    /// Rewrites before forwarding.
    pub rewrite: Option<Rewrite>,
    /// Edits of request headers.
    pub request_headers: HeaderMutations,
    /// Edits of response headers.
    pub response_headers: HeaderMutations,
    /// Copies sent elsewhere.
    pub mirrors: Arc<[Mirror]>,
    /// Header edits per target of `clusters`, in the same order (Istio
    /// `route[].headers`, Envoy's weighted-cluster header edits): request
    /// and response edits applied before the route's own. Empty when no
    /// target edits headers.
    pub target_headers: Arc<[(HeaderMutations, HeaderMutations)]>,
    /// What counts as a failure, in order (Linkerd `responseClasses`);
    /// empty means the default: a 5xx, a reset or a connect failure.
    pub response_classes: Arc<[ResponseClass]>,
    /// What a consistent-hash cluster hashes for requests of this route
    /// (Envoy `RouteAction.hash_policy`, gRFC A42: in xDS the key belongs
    /// to the route). `None`: the cluster's own key (Istio's
    /// `consistentHash`, which the file source puts on the cluster).
    pub hash_policy: Option<HashKey>,
}

impl ForwardAction {
    /// Forwarding to `clusters` with no other policy.
    pub fn new(clusters: WeightedClusters) -> Self {
        Self {
            clusters,
            timeout: None,
            retry: None,
            hedge: None,
            fault: None,
            rewrite: None,
            request_headers: HeaderMutations::default(),
            response_headers: HeaderMutations::default(),
            mirrors: Arc::from([]),
            response_classes: Arc::from([]),
            target_headers: Arc::from([]),
            hash_policy: None,
        }
    }

    /// Whether a response with `status` is a failure: decided by the
    /// first response class whose condition matches, else by the default
    /// (Linkerd's and Envoy's: any 5xx is a failure).
    pub fn is_failure(&self, status: u16) -> bool {
        self.response_classes
            .iter()
            .find(|c| c.condition.matches(status))
            .map_or(status >= 500, |c| c.is_failure)
    }

    /// Forwarding to a single cluster with no other policy.
    pub fn to(cluster: impl Into<ClusterName>) -> Self {
        Self::new(WeightedClusters::single(cluster.into()))
    }

    /// Sets the route timeout.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: Option<RetryPolicy>) -> Self {
        self.retry = retry;
        self
    }
}

/// One target of a traffic split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedCluster {
    /// The cluster.
    pub cluster: ClusterName,
    /// Its share, relative to the sum of the split's weights.
    pub weight: u32,
}

/// A traffic split: clusters with relative weights.
///
/// A request goes to cluster *i* with probability `weight_i / total`, the
/// semantics of Envoy's `weighted_clusters` and Istio's `route[].weight`.
/// Zero weights are allowed (a cluster that gets nothing), a zero total is
/// not (gRFC A28 and Envoy reject it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedClusters {
    targets: Arc<[WeightedCluster]>,
    // Running sums of the weights, for picking without allocation.
    cumulative: Arc<[u32]>,
}

impl WeightedClusters {
    /// All traffic to one cluster.
    pub fn single(cluster: ClusterName) -> Self {
        Self {
            targets: Arc::from([WeightedCluster { cluster, weight: 1 }]),
            cumulative: Arc::from([1]),
        }
    }

    /// A split over `targets`. Fails when the list is empty, when the
    /// weights sum to zero or overflow `u32`.
    pub fn try_new(targets: Vec<WeightedCluster>) -> Result<Self, InvalidConfig> {
        if targets.is_empty() {
            return Err(InvalidConfig::new(FieldPath::root(), "no clusters"));
        }
        let mut sum: u32 = 0;
        let mut cumulative = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            sum = sum.checked_add(t.weight).ok_or_else(|| {
                InvalidConfig::new(
                    FieldPath::root().index(i).field("weight"),
                    "weights overflow a 32-bit sum",
                )
            })?;
            cumulative.push(sum);
        }
        if sum == 0 {
            return Err(InvalidConfig::new(FieldPath::root(), "weights sum to 0"));
        }
        Ok(Self {
            targets: targets.into(),
            cumulative: cumulative.into(),
        })
    }

    /// The targets in config order.
    pub fn targets(&self) -> &[WeightedCluster] {
        &self.targets
    }

    /// The sum of the weights (never zero).
    pub fn total(&self) -> u32 {
        self.cumulative.last().copied().unwrap_or(1)
    }

    /// The index of the target for a uniformly random `ticket` in
    /// `0..total()`. Zero-weight targets are never chosen.
    pub fn index_for(&self, ticket: u32) -> usize {
        let ticket = ticket % self.total();
        if self.cumulative.len() <= 8 {
            self.cumulative
                .iter()
                .position(|&c| ticket < c)
                .unwrap_or(self.cumulative.len() - 1)
        } else {
            self.cumulative.partition_point(|&c| c <= ticket)
        }
    }

    /// Picks a target at random, in proportion to the weights.
    pub fn pick(&self) -> usize {
        if self.targets.len() == 1 {
            0
        } else {
            self.index_for(fastrand::u32(0..self.total()))
        }
    }
}

/// A set of routes selected by the request authority (Envoy
/// `VirtualHost`).
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost {
    /// A name for status output.
    pub name: Arc<str>,
    /// The authorities this virtual host serves, lowercase: exact names
    /// (`reviews`, `reviews:9080`), suffix wildcards (`*.example.com`),
    /// prefix wildcards (`reviews.*`) or `*`.
    pub domains: Arc<[Arc<str>]>,
    /// Routes tried in order; the first that matches wins.
    pub routes: Arc<[Route]>,
}

impl VirtualHost {
    /// The first route that takes the request, with its index.
    pub fn route(&self, req: &RouteRequest<'_>) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, r)| r.matches(req))
    }
}

/// A route table (an xDS `RouteConfiguration`): virtual hosts selected by
/// authority.
#[derive(Clone, Debug)]
pub struct RouteTable {
    name: RouteTableName,
    virtual_hosts: Arc<[VirtualHost]>,
    index: Arc<DomainIndex>,
    // One per virtual host: which routes a path can match.
    paths: Arc<[PathIndex]>,
}

impl PartialEq for RouteTable {
    fn eq(&self, other: &Self) -> bool {
        // The index is derived from the virtual hosts.
        self.name == other.name && self.virtual_hosts == other.virtual_hosts
    }
}

impl RouteTable {
    /// A route table over `virtual_hosts`.
    ///
    /// Fails, as Envoy does, when a domain is empty, has a wildcard other
    /// than a leading `*.`/`*-` style prefix or a trailing suffix, or
    /// appears in two virtual hosts.
    pub fn try_new(
        name: impl Into<RouteTableName>,
        virtual_hosts: Vec<VirtualHost>,
    ) -> Result<Self, InvalidConfig> {
        let index = DomainIndex::build(&virtual_hosts)?;
        let paths = virtual_hosts
            .iter()
            .map(|vh| PathIndex::build(&vh.routes))
            .collect();
        Ok(Self {
            name: name.into(),
            virtual_hosts: virtual_hosts.into(),
            index: Arc::new(index),
            paths,
        })
    }

    /// The table's name.
    pub fn name(&self) -> &RouteTableName {
        &self.name
    }

    /// The virtual hosts in config order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The index of the virtual host serving `authority`, following
    /// Envoy's search order: exact name, then the longest suffix wildcard,
    /// then the longest prefix wildcard, then `*`. Case-insensitive.
    pub fn virtual_host_index(&self, authority: &str) -> Option<usize> {
        self.index.lookup(authority)
    }

    /// The virtual host serving `authority`.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        self.virtual_host_index(authority)
            .map(|i| &self.virtual_hosts[i])
    }

    /// The index of the first route of virtual host `vhost` that takes
    /// the request: the same answer as [`VirtualHost::route`], found
    /// through a path trie, so that the cost grows with the path's length
    /// and the few routes whose literal path could match rather than with
    /// the number of routes.
    pub fn route_index(&self, vhost: usize, req: &RouteRequest<'_>) -> Option<usize> {
        let routes = &self.virtual_hosts.get(vhost)?.routes;
        self.paths[vhost].first_match(routes, req)
    }
}

/// The routes of a virtual host indexed by their literal path conditions.
///
/// Routes whose every match clause has a case-sensitive exact or prefix
/// path are filed in a byte trie under those strings; the rest (regex,
/// case-insensitive, no path condition, no clauses) are "always"
/// candidates. A lookup walks the trie along the path, fully evaluates each
/// route found there, keeps the lowest index that matches, then tries the
/// "always" routes below that index in order. First match wins exactly as
/// in a linear scan.
#[derive(Debug, Default)]
struct PathIndex {
    nodes: Vec<TrieNode>,
    always: Box<[u32]>,
}

#[derive(Debug, Default)]
struct TrieNode {
    // Sorted by byte.
    children: Vec<(u8, u32)>,
    // Routes with a prefix ending at this node, ascending.
    prefix: Vec<u32>,
    // Routes with an exact path ending at this node, ascending.
    exact: Vec<u32>,
}

impl PathIndex {
    fn build(routes: &[Route]) -> Self {
        let mut index = Self {
            nodes: vec![TrieNode::default()],
            always: Box::new([]),
        };
        let mut always = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let i = i as u32;
            let literal = !route.matches.is_empty()
                && route.matches.iter().all(|m| {
                    !m.ignore_case && matches!(m.path, PathMatch::Exact(_) | PathMatch::Prefix(_))
                });
            if !literal {
                always.push(i);
                continue;
            }
            for m in route.matches.iter() {
                let (s, exact) = match &m.path {
                    PathMatch::Exact(s) => (s, true),
                    PathMatch::Prefix(s) => (s, false),
                    _ => continue,
                };
                let node = index.insert(s.as_bytes());
                let list = if exact {
                    &mut index.nodes[node].exact
                } else {
                    &mut index.nodes[node].prefix
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        index.always = always.into();
        index
    }

    fn insert(&mut self, key: &[u8]) -> usize {
        let mut node = 0;
        for &b in key {
            node = match self.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                Ok(k) => self.nodes[node].children[k].1 as usize,
                Err(k) => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[node].children.insert(k, (b, next as u32));
                    next
                }
            };
        }
        node
    }

    fn first_match(&self, routes: &[Route], req: &RouteRequest<'_>) -> Option<usize> {
        let mut best = u32::MAX;
        let mut consider = |candidates: &[u32]| {
            for &i in candidates {
                if i >= best {
                    break;
                }
                if routes[i as usize].matches(req) {
                    best = i;
                    break;
                }
            }
        };
        let mut node = &self.nodes[0];
        consider(&node.prefix);
        let mut whole = true;
        for &b in req.path.as_bytes() {
            match node.children.binary_search_by_key(&b, |c| c.0) {
                Ok(k) => {
                    node = &self.nodes[node.children[k].1 as usize];
                    consider(&node.prefix);
                }
                Err(_) => {
                    whole = false;
                    break;
                }
            }
        }
        if whole {
            consider(&node.exact);
        }
        consider(&self.always);
        (best != u32::MAX).then_some(best as usize)
    }
}

#[derive(Debug, Default)]
struct DomainIndex {
    exact: HashMap<Box<str>, usize>,
    // (suffix after '*', vhost), longest first.
    suffix: Vec<(Box<str>, usize)>,
    // (prefix before '*', vhost), longest first.
    prefix: Vec<(Box<str>, usize)>,
    any: Option<usize>,
}

impl DomainIndex {
    fn build(vhosts: &[VirtualHost]) -> Result<Self, InvalidConfig> {
        let mut index = Self::default();
        let mut seen: HashMap<String, usize> = HashMap::default();
        for (vi, vh) in vhosts.iter().enumerate() {
            for (di, domain) in vh.domains.iter().enumerate() {
                let path = FieldPath::root()
                    .field("virtual_hosts")
                    .index(vi)
                    .field("domains")
                    .index(di);
                let d = domain.to_ascii_lowercase();
                if d.is_empty() {
                    return Err(InvalidConfig::new(path, "empty domain"));
                }
                if let Some(prev) = seen.insert(d.clone(), vi) {
                    return Err(InvalidConfig::new(
                        path,
                        format!(
                            "domain {d:?} is already served by virtual host {:?}",
                            vhosts[prev].name
                        ),
                    ));
                }
                let stars = d.matches('*').count();
                if d == "*" {
                    index.any = Some(vi);
                } else if stars == 0 {
                    index.exact.insert(d.into(), vi);
                } else if stars == 1 && d.starts_with('*') {
                    index.suffix.push((d[1..].into(), vi));
                } else if stars == 1 && d.ends_with('*') {
                    index.prefix.push((d[..d.len() - 1].into(), vi));
                } else {
                    return Err(InvalidConfig::new(
                        path,
                        format!(
                            "invalid wildcard in domain {d:?}: only a leading or trailing '*' is allowed"
                        ),
                    ));
                }
            }
        }
        index.suffix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        index.prefix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Ok(index)
    }

    fn lookup(&self, authority: &str) -> Option<usize> {
        // Authorities are almost always lowercase already; lowercase into a
        // stack buffer otherwise so lookups never allocate.
        let mut buf = [0u8; 256];
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            if authority.len() > buf.len() {
                return self.lookup_slow(&authority.to_ascii_lowercase());
            }
            let lower = &mut buf[..authority.len()];
            lower.copy_from_slice(authority.as_bytes());
            lower.make_ascii_lowercase();
            match std::str::from_utf8(lower) {
                Ok(s) => s,
                Err(_) => return None,
            }
        } else {
            authority
        };
        self.lookup_slow(host)
    }

    fn lookup_slow(&self, host: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(host) {
            return Some(i);
        }
        // Envoy requires the wildcard to match at least one character.
        if let Some((_, i)) = self
            .suffix
            .iter()
            .find(|(s, _)| host.len() > s.len() && host.ends_with(&**s))
        {
            return Some(*i);
        }
        if let Some((_, i)) = self
            .prefix
            .iter()
            .find(|(p, _)| host.len() > p.len() && host.starts_with(&**p))
        {
            return Some(*i);
        }
        self.any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| Arc::from(*d)).collect(),
            routes: Arc::from([]),
        }
    }

    #[test]
    fn domain_search_order_follows_envoy() {
        let table = RouteTable::try_new(
            "t",
            vec![
                vh("exact", &["api.example.com"]),
                vh("suffix-long", &["*.eu.example.com"]),
                vh("suffix", &["*.example.com"]),
                vh("prefix", &["api.*"]),
                vh("any", &["*"]),
            ],
        )
        .unwrap();
        let name = |a: &str| {
            table
                .virtual_host(a)
                .map(|v| v.name.to_string())
                .unwrap_or_default()
        };
        assert_eq!(name("api.example.com"), "exact");
        assert_eq!(name("API.Example.COM"), "exact");
        assert_eq!(name("x.eu.example.com"), "suffix-long");
        assert_eq!(name("x.example.com"), "suffix");
        assert_eq!(name("api.other.org"), "prefix");
        assert_eq!(name("elsewhere"), "any");
        // A wildcard must match at least one character.
        assert_eq!(name(".example.com"), "any");
    }

    #[test]
    fn duplicate_domains_are_rejected() {
        let err = RouteTable::try_new("t", vec![vh("a", &["x"]), vh("b", &["X"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "virtual_hosts[1].domains[0]: domain \"x\" is already served by virtual host \"a\""
        );
    }

    #[test]
    fn inner_wildcards_are_rejected() {
        let err = RouteTable::try_new("t", vec![vh("a", &["a.*.com"])]).unwrap_err();
        assert!(err.to_string().contains("invalid wildcard"), "{err}");
    }

    #[test]
    fn weighted_pick_follows_cumulative_weights() {
        let split = WeightedClusters::try_new(vec![
            WeightedCluster {
                cluster: "a".into(),
                weight: 90,
            },
            WeightedCluster {
                cluster: "zero".into(),
                weight: 0,
            },
            WeightedCluster {
                cluster: "b".into(),
                weight: 10,
            },
        ])
        .unwrap();
        assert_eq!(split.total(), 100);
        assert_eq!(split.index_for(0), 0);
        assert_eq!(split.index_for(89), 0);
        assert_eq!(split.index_for(90), 2, "zero-weight targets are skipped");
        assert_eq!(split.index_for(99), 2);
    }

    #[test]
    fn weighted_pick_uses_binary_search_for_long_splits() {
        let targets = (0..20)
            .map(|i| WeightedCluster {
                cluster: format!("c{i}").into(),
                weight: 5,
            })
            .collect();
        let split = WeightedClusters::try_new(targets).unwrap();
        for ticket in 0..100 {
            assert_eq!(split.index_for(ticket), (ticket / 5) as usize);
        }
    }

    /// The trie must give exactly the linear scan's answer.
    #[test]
    fn path_index_agrees_with_a_linear_scan() {
        use crate::model::{ForwardAction, HeaderMatch, HeaderRule, Regex, StringMatch};
        let mut rng = fastrand::Rng::with_seed(7);
        let word = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..5))
                .map(|_| ['/', 'a', 'b'][rng.usize(0..3)])
                .collect()
        };
        let headers = http::HeaderMap::from_iter([(
            http::HeaderName::from_static("x-h"),
            "1".parse().unwrap(),
        )]);
        for _ in 0..300 {
            let routes: Vec<Route> = (0..rng.usize(1..12))
                .map(|_| {
                    let clauses = (0..rng.usize(0..3))
                        .map(|_| {
                            let path = match rng.usize(0..6) {
                                0 => PathMatch::Any,
                                1 => PathMatch::Exact(word(&mut rng).into()),
                                2 => PathMatch::Regex(Regex::try_new("/?a.*", false).unwrap()),
                                _ => PathMatch::Prefix(word(&mut rng).into()),
                            };
                            let headers: Arc<[HeaderMatch]> = if rng.bool() {
                                Arc::from([HeaderMatch {
                                    name: http::HeaderName::from_static("x-h"),
                                    rule: HeaderRule::Value(StringMatch::Exact(
                                        if rng.bool() { "1" } else { "2" }.into(),
                                    )),
                                    invert: false,
                                }])
                            } else {
                                Arc::from([])
                            };
                            RouteMatch {
                                path,
                                ignore_case: rng.usize(0..8) == 0,
                                headers,
                                method: None,
                                authority: None,
                            }
                        })
                        .collect();
                    Route {
                        name: None,
                        matches: clauses,
                        action: RouteAction::Forward(Box::new(ForwardAction::to("c"))),
                    }
                })
                .collect();
            let vh = VirtualHost {
                name: "v".into(),
                domains: Arc::from([Arc::from("v")]),
                routes: routes.into(),
            };
            let table = RouteTable::try_new("t", vec![vh.clone()]).unwrap();
            for _ in 0..40 {
                let path = word(&mut rng);
                let req = RouteRequest {
                    method: &http::Method::GET,
                    authority: "v",
                    port: 80,
                    path: &path,
                    headers: &headers,
                };
                assert_eq!(
                    table.route_index(0, &req),
                    vh.route(&req).map(|(i, _)| i),
                    "path {path:?} in {:#?}",
                    vh.routes
                );
            }
        }
    }

    #[test]
    fn zero_total_weight_is_rejected() {
        let err = WeightedClusters::try_new(vec![WeightedCluster {
            cluster: "a".into(),
            weight: 0,
        }])
        .unwrap_err();
        assert_eq!(err.to_string(), "weights sum to 0");
    }
}
