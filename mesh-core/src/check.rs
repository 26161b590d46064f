//! Offline route checks: where would this request go?
//!
//! [`check_route`] answers from a snapshot alone, without sockets, which
//! route, clusters and subsets a request would take, using the same
//! matching code as the data path. It is what junction-client's
//! `check_route` and Envoy's `router_check_tool` offer, and what the admin
//! endpoint's `/check_route` serves on the live config.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::model::RouteAction;
use crate::name::{ClusterName, RouteTableName};
use crate::request::RouteRequest;
use crate::snapshot::{NoRoute, Snapshot};

/// A request described by strings, for [`check_route`].
#[derive(Clone, Debug)]
pub struct CheckRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// A [`CheckRequest`] that could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCheckRequest(String);

impl fmt::Display for InvalidCheckRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidCheckRequest {}

impl CheckRequest {
    /// A request with `method` to `url` (`http://reviews:9080/path`, or an
    /// origin-form path plus a `host` header).
    pub fn new(method: &str, url: &str) -> Result<Self, InvalidCheckRequest> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| InvalidCheckRequest(format!("invalid method {method:?}")))?;
        let uri = url
            .parse::<Uri>()
            .map_err(|e| InvalidCheckRequest(format!("invalid url {url:?}: {e}")))?;
        Ok(Self {
            method,
            uri,
            headers: HeaderMap::new(),
        })
    }

    /// A GET to `url`.
    pub fn get(url: &str) -> Result<Self, InvalidCheckRequest> {
        Self::new("GET", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, InvalidCheckRequest> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| InvalidCheckRequest(format!("invalid header name {name:?}")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| InvalidCheckRequest(format!("invalid value for header {name:?}")))?;
        self.headers.append(n, v);
        Ok(self)
    }
}

/// One possible destination of a checked request.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedDestination {
    /// The cluster.
    pub cluster: ClusterName,
    /// The service the cluster belongs to.
    pub service: Option<Arc<str>>,
    /// The subset, when the cluster is one.
    pub subset: Option<Arc<str>>,
    /// The configured weight.
    pub weight: u32,
    /// The share of requests, from 0 to 1.
    pub share: f64,
    /// How many endpoints the cluster has.
    pub endpoints: usize,
}

/// Where a request would go.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteCheck {
    /// The route table.
    pub route_table: RouteTableName,
    /// The virtual host.
    pub virtual_host: Arc<str>,
    /// The index of the route in the virtual host.
    pub route_index: usize,
    /// The route's name.
    pub route_name: Option<Arc<str>>,
    /// The route timeout.
    pub timeout: Option<Duration>,
    /// The destinations, with their shares (empty when the route answers
    /// itself).
    pub destinations: Vec<CheckedDestination>,
    /// The status the route answers with itself (a redirect or a direct
    /// response), if it does not forward.
    pub local_response: Option<u16>,
}

impl fmt::Display for RouteCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route table {:?}, virtual host {:?}, route #{}",
            self.route_table.as_str(),
            &*self.virtual_host,
            self.route_index
        )?;
        if let Some(name) = &self.route_name {
            write!(f, " ({name})")?;
        }
        for d in &self.destinations {
            write!(f, "; {:.1}% -> {}", d.share * 100.0, d.cluster)?;
        }
        if let Some(status) = self.local_response {
            write!(f, "; answered by the route with {status}")?;
        }
        Ok(())
    }
}

/// Why [`check_route`] found no destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// The request names no authority.
    NoAuthority,
    /// Routing found no route.
    NoRoute(NoRoute),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAuthority => {
                f.write_str("the request names no authority (use an absolute URL or a host header)")
            }
            Self::NoRoute(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CheckError {}

/// Which route, clusters and subsets `req` would take under `snapshot`.
///
/// ```
/// use mesh_core::{check_route, CheckRequest, file::FileSource};
///
/// let yaml = r#"
/// apiVersion: networking.istio.io/v1
/// kind: ServiceEntry
/// metadata: { name: reviews, namespace: default }
/// spec:
///   hosts: [reviews]
///   ports: [{ number: 9080, name: http, protocol: HTTP }]
///   resolution: STATIC
///   endpoints: [{ address: 10.0.0.1 }]
/// "#;
/// let snapshot = FileSource::parse_str("mesh.yaml", yaml).unwrap().snapshot().unwrap();
/// let check = check_route(&snapshot, &CheckRequest::get("http://reviews:9080/").unwrap()).unwrap();
/// assert_eq!(check.destinations[0].cluster.as_str(), "outbound|9080||reviews.default.svc.cluster.local");
/// ```
pub fn check_route(snapshot: &Snapshot, req: &CheckRequest) -> Result<RouteCheck, CheckError> {
    let rr = RouteRequest::from_parts(&req.method, &req.uri, &req.headers)
        .ok_or(CheckError::NoAuthority)?;
    let hit = snapshot.route(&rr).map_err(CheckError::NoRoute)?;
    let route = hit.route();
    let fwd = match &route.action {
        RouteAction::Forward(fwd) => fwd,
        RouteAction::Redirect(r) => return Ok(local(&hit, r.status)),
        RouteAction::DirectResponse(d) => return Ok(local(&hit, d.status)),
    };
    let total = f64::from(fwd.clusters.total());
    let destinations = fwd
        .clusters
        .targets()
        .iter()
        .map(|t| {
            let cluster = snapshot.cluster(t.cluster.as_str());
            CheckedDestination {
                cluster: t.cluster.clone(),
                service: cluster.and_then(|c| c.service.clone()),
                subset: cluster.and_then(|c| c.subset.clone()),
                weight: t.weight,
                share: f64::from(t.weight) / total,
                endpoints: snapshot
                    .endpoints(t.cluster.as_str())
                    .map_or(0, |e| e.endpoints().len()),
            }
        })
        .collect();
    Ok(RouteCheck {
        route_table: hit.table.name().clone(),
        virtual_host: Arc::clone(&hit.virtual_host().name),
        route_index: hit.route_index,
        route_name: route.name.clone(),
        timeout: fwd.timeout,
        destinations,
        local_response: None,
    })
}

fn local(hit: &crate::RouteHit<'_>, status: u16) -> RouteCheck {
    RouteCheck {
        route_table: hit.table.name().clone(),
        virtual_host: Arc::clone(&hit.virtual_host().name),
        route_index: hit.route_index,
        route_name: hit.route().name.clone(),
        timeout: None,
        destinations: Vec::new(),
        local_response: Some(status),
    }
}
