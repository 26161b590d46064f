//! Istio `networking.istio.io` resources translated into the model.
//!
//! The translation produces what istiod would send a sidecar for the same
//! objects:
//!
//! - per service port, an outbound listener `0.0.0.0_<port>` and a route
//!   table named `<port>`, holding one virtual host per service with the
//!   names a client may use for it (`reviews`, `reviews.default`,
//!   `reviews.default.svc.cluster.local`, each with and without the port);
//! - per service port, a cluster `outbound|<port>||<fqdn>` over every
//!   endpoint, and one `outbound|<port>|<subset>|<fqdn>` per
//!   DestinationRule subset over the endpoints its labels select;
//! - a VirtualService's `http` routes, in order, on the virtual host of
//!   each of its hosts (first match wins; a request that matches none gets
//!   no route, as Envoy answers 404 `NR`); a service without a
//!   VirtualService gets one catch-all route to its cluster.
//!
//! Short host names (without a dot) resolve within the namespace of the
//! resource that names them, to `<name>.<namespace>.svc.<domain suffix>`.
//! Istio applies that rule to VirtualService and DestinationRule hosts;
//! this translation applies it to ServiceEntry hosts too, so that a file
//! can declare the services that would be Kubernetes Services in a cluster
//! (a documented choice; an FQDN is always taken as written).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde_json::Value;

use super::traffic_policy::{self, TrafficPolicy};
use super::yaml::{Fields, Obj, RawDocument};
use super::{duration, envoyfilter, linkerd, security, telemetry, traffic};
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{
    Cluster, Endpoint, EndpointAddress, EndpointSet, FaultPolicy, ForwardAction, Fraction,
    HeaderMatch, HeaderMutations, HeaderRule, Labels, Listener, Locality, Mirror, PathMatch,
    Protocol, Regex, RetryPolicy, Rewrite, Route, RouteAction, RouteMatch, RouteTable,
    SecurityPolicies, ServerPolicy, ServerVerification, ServiceAccount, StringMatch, UpstreamTls,
    VirtualHost, WeightedCluster, WeightedClusters,
};
use crate::snapshot::Resources;

/// Where a problem is: the document and the resource in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DocRef {
    pub(crate) index: usize,
    /// `Kind name`, once known.
    pub(crate) resource: Option<String>,
}

/// One error or warning, with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) doc: Option<DocRef>,
    pub(crate) error: InvalidConfig,
}

pub(crate) struct Translator<'o> {
    namespace: &'o str,
    domain_suffix: &'o str,
    pub(crate) errors: Vec<Problem>,
    pub(crate) warnings: Vec<Problem>,
    services: BTreeMap<String, Service>,
    rules: BTreeMap<String, DestinationRule>,
    virtual_services: BTreeMap<String, Arc<VirtualService>>,
    // (document, `namespace/name`, local rate limit patches)
    envoy_filters: Vec<(DocRef, String, Vec<envoyfilter::RateLimitPatch>)>,
    // Linkerd ServiceProfiles and SMI TrafficSplits, by the service FQDN.
    profiles: BTreeMap<String, (DocRef, linkerd::ServiceProfile)>,
    splits: BTreeMap<String, (DocRef, linkerd::TrafficSplit)>,
    // `security.istio.io` policies, in document order.
    security: SecurityPolicies,
    // `Telemetry` resources, in document order.
    telemetry: Vec<crate::model::TelemetryPolicy>,
}

struct Service {
    doc: DocRef,
    namespace: String,
    ports: Vec<ServicePort>,
    // Per port number: the endpoints on that port.
    endpoints: BTreeMap<u16, Vec<Endpoint>>,
    // The service accounts its endpoints run as (`serviceAccount`) and
    // its `subjectAltNames`: the server identities TLS expects by default.
    accounts: Arc<[ServiceAccount]>,
    sans: Arc<[Arc<str>]>,
}

#[derive(Clone)]
struct ServicePort {
    number: u16,
    protocol: Protocol,
}

struct DestinationRule {
    doc: DocRef,
    policy: TrafficPolicy,
    subsets: Vec<Subset>,
}

struct Subset {
    name: String,
    labels: Labels,
    policy: TrafficPolicy,
}

struct VirtualService {
    doc: DocRef,
    routes: Vec<HttpRoute>,
}

struct HttpRoute {
    index: usize,
    name: Option<Arc<str>>,
    // (clause, port the clause is limited to)
    matches: Vec<(RouteMatch, Option<u16>)>,
    destinations: Vec<Destination>,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    // Traffic shaping (see `traffic.rs`).
    shaping: Shaping,
    mirrors: Vec<(Destination, Fraction)>,
    // A redirect or direct response: the route answers itself.
    local: Option<RouteAction>,
}

#[derive(Default)]
struct Shaping {
    fault: Option<FaultPolicy>,
    rewrite: Option<Rewrite>,
    request_headers: HeaderMutations,
    response_headers: HeaderMutations,
}

struct Destination {
    path: FieldPath,
    host: String,
    subset: Option<String>,
    port: Option<u16>,
    weight: u32,
    // `route[].headers`: request and response edits for this destination.
    headers: Option<(HeaderMutations, HeaderMutations)>,
}

const ISTIO_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

impl<'o> Translator<'o> {
    pub(crate) fn new(namespace: &'o str, domain_suffix: &'o str) -> Self {
        Self {
            namespace,
            domain_suffix,
            errors: Vec::new(),
            warnings: Vec::new(),
            services: BTreeMap::new(),
            rules: BTreeMap::new(),
            virtual_services: BTreeMap::new(),
            envoy_filters: Vec::new(),
            profiles: BTreeMap::new(),
            splits: BTreeMap::new(),
            security: SecurityPolicies::default(),
            telemetry: Vec::new(),
        }
    }

    fn error(&mut self, doc: &DocRef, error: InvalidConfig) {
        self.errors.push(Problem {
            doc: Some(doc.clone()),
            error,
        });
    }

    fn collect(&mut self, doc: &DocRef, errors: Vec<InvalidConfig>, warnings: Vec<InvalidConfig>) {
        for e in errors {
            self.error(doc, e);
        }
        for w in warnings {
            self.warnings.push(Problem {
                doc: Some(doc.clone()),
                error: w,
            });
        }
    }

    /// Reads one document.
    pub(crate) fn read(&mut self, raw: &RawDocument<'_>) {
        let mut doc = DocRef {
            index: raw.index,
            resource: None,
        };
        if super::yaml::is_blank(raw.text) {
            return;
        }
        let value = match super::yaml::parse(raw) {
            Ok(v) => v,
            Err(msg) => return self.error(&doc, InvalidConfig::new(FieldPath::root(), msg)),
        };
        if value.is_null() {
            return;
        }
        let root_path = FieldPath::root();
        let root = match Obj::new(&value, &root_path) {
            Ok(o) => o,
            Err(e) => return self.error(&doc, e),
        };
        let meta_path = FieldPath::root().field("metadata");
        let head = (|| -> Result<_, InvalidConfig> {
            let api_version = root.req_str("apiVersion")?;
            let kind = root.req_str("kind")?;
            let meta = root
                .obj("metadata", &meta_path)?
                .ok_or_else(|| InvalidConfig::new(meta_path.clone(), "required"))?;
            let name = meta.req_str("name")?;
            let namespace = meta.str("namespace")?.unwrap_or(self.namespace).to_owned();
            Ok((api_version, kind, name, namespace, meta))
        })();
        let (api_version, kind, name, namespace, meta) = match head {
            Ok(h) => h,
            Err(e) => return self.error(&doc, e),
        };
        doc.resource = Some(format!("{kind} {name}"));

        let group = api_version.split('/').next().unwrap_or_default();
        let supported_kind = matches!(
            kind,
            "ServiceEntry" | "VirtualService" | "DestinationRule" | "EnvoyFilter"
        );
        let is_linkerd = linkerd::is_linkerd_group(group);
        let is_security = group == "security.istio.io" && security::SECURITY_KINDS.contains(&kind);
        let is_telemetry = group == "telemetry.istio.io" && kind == "Telemetry";
        if is_telemetry {
            if !telemetry::TELEMETRY_VERSIONS.contains(&api_version) {
                return self.error(
                    &doc,
                    InvalidConfig::new(
                        FieldPath::root().field("apiVersion"),
                        format!(
                            "unsupported version {api_version:?} (expected one of {})",
                            telemetry::TELEMETRY_VERSIONS.join(", ")
                        ),
                    ),
                );
            }
        } else if is_security {
            if !security::SECURITY_VERSIONS.contains(&api_version) {
                return self.error(
                    &doc,
                    InvalidConfig::new(
                        FieldPath::root().field("apiVersion"),
                        format!(
                            "unsupported version {api_version:?} (expected one of {})",
                            security::SECURITY_VERSIONS.join(", ")
                        ),
                    ),
                );
            }
        } else if is_linkerd {
            if let Err(e) = linkerd::check_kind(api_version, kind) {
                return self.error(&doc, e);
            }
        } else if group != "networking.istio.io" || !supported_kind {
            self.warnings.push(Problem {
                doc: Some(doc),
                error: InvalidConfig::new(
                    FieldPath::root(),
                    format!("kind {kind} ({api_version}) is not supported yet; document ignored"),
                ),
            });
            return;
        }
        if !is_linkerd && !is_security && !is_telemetry && !ISTIO_VERSIONS.contains(&api_version) {
            return self.error(
                &doc,
                InvalidConfig::new(
                    FieldPath::root().field("apiVersion"),
                    format!(
                        "unsupported version {api_version:?} (expected one of {})",
                        ISTIO_VERSIONS.join(", ")
                    ),
                ),
            );
        }
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        root.check_fields(
            &Fields {
                supported: &["apiVersion", "kind", "metadata", "spec"],
                unsupported: &[],
                ignored: &["status"],
            },
            &mut errors,
            &mut warnings,
        );
        self.collect(&doc, errors, warnings);
        let spec_path = FieldPath::root();
        let spec = match root.get("spec") {
            Some(v) => match Obj::new(v, &spec_path) {
                Ok(s) => s,
                Err(_) => {
                    return self.error(
                        &doc,
                        InvalidConfig::new(FieldPath::root().field("spec"), "expected a mapping"),
                    );
                }
            },
            None => {
                return self.error(
                    &doc,
                    InvalidConfig::new(FieldPath::root().field("spec"), "required"),
                );
            }
        };
        match kind {
            "ServiceEntry" => self.service_entry(doc, &namespace, spec),
            "VirtualService" => self.virtual_service(doc, &namespace, spec),
            "EnvoyFilter" => self.envoy_filter(doc, &namespace, name, spec),
            "ServiceProfile" | "TrafficSplit" => self.linkerd(doc, &namespace, name, kind, spec),
            "Telemetry" if is_telemetry => {
                let (mut errors, mut warnings) = (Vec::new(), Vec::new());
                match telemetry::translate(name, &namespace, spec, &mut errors, &mut warnings) {
                    Ok(p) => self.telemetry.push(p),
                    Err(e) => errors.push(e),
                }
                self.collect(&doc, errors, warnings);
            }
            _ if is_security => {
                let (mut errors, mut warnings) = (Vec::new(), Vec::new());
                security::translate(
                    kind,
                    name,
                    &namespace,
                    Some(meta),
                    spec,
                    &mut self.security,
                    &mut errors,
                    &mut warnings,
                );
                self.collect(&doc, errors, warnings);
            }
            _ => self.destination_rule(doc, &namespace, spec),
        }
    }

    /// The FQDN of a host named in a resource of `namespace`.
    fn fqdn(&self, host: &str, namespace: &str, path: FieldPath) -> Result<String, InvalidConfig> {
        let h = host.trim().to_ascii_lowercase();
        if h.is_empty() {
            return Err(InvalidConfig::new(path, "empty host"));
        }
        if h.contains('*') {
            return Err(InvalidConfig::new(
                path,
                format!("wildcard host {host:?} is not supported yet"),
            ));
        }
        if !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(InvalidConfig::new(path, format!("invalid host {host:?}")));
        }
        Ok(if h.contains('.') {
            h
        } else {
            format!("{h}.{namespace}.svc.{}", self.domain_suffix)
        })
    }

    fn service_entry(&mut self, doc: DocRef, namespace: &str, spec: Obj<'_>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        spec.check_fields(
            &Fields {
                supported: &[
                    "hosts",
                    "ports",
                    "resolution",
                    "endpoints",
                    "subjectAltNames",
                ],
                unsupported: &["addresses", "exportTo", "location", "workloadSelector"],
                ignored: &[],
            },
            &mut errors,
            &mut warnings,
        );
        let result = (|| -> Result<(), InvalidConfig> {
            let hosts = spec.str_list("hosts")?;
            if hosts.is_empty() {
                return Err(InvalidConfig::new(
                    FieldPath::root().field("hosts"),
                    "at least one host is required",
                ));
            }
            let resolution = spec.str("resolution")?;
            let dns = match resolution {
                Some("STATIC") => false,
                Some("DNS") | Some("DNS_ROUND_ROBIN") => true,
                Some("NONE") | None => {
                    return Err(InvalidConfig::new(
                        FieldPath::root().field("resolution"),
                        format!(
                            "{} is not supported: the mesh client needs endpoints to balance over; use STATIC or DNS",
                            if resolution.is_some() {
                                "NONE"
                            } else {
                                "the default, NONE,"
                            }
                        ),
                    ));
                }
                Some(other) => {
                    return Err(InvalidConfig::new(
                        FieldPath::root().field("resolution"),
                        format!(
                            "unknown resolution {other:?} (expected STATIC, DNS or DNS_ROUND_ROBIN)"
                        ),
                    ));
                }
            };

            // Ports.
            let mut ports: Vec<(ServicePort, String, Option<u16>)> = Vec::new();
            let ports_path = FieldPath::root().field("ports");
            let port_values = spec.list("ports")?;
            if port_values.is_empty() {
                return Err(InvalidConfig::new(
                    ports_path,
                    "at least one port is required",
                ));
            }
            for (i, v) in port_values.iter().enumerate() {
                let path = ports_path.index(i);
                let p = Obj::new(v, &path)?;
                p.check_fields(
                    &Fields {
                        supported: &["number", "name", "protocol", "targetPort"],
                        unsupported: &[],
                        ignored: &[],
                    },
                    &mut errors,
                    &mut warnings,
                );
                let number = p
                    .int("number", 1, 65535)?
                    .ok_or_else(|| InvalidConfig::new(path.field("number"), "required"))?
                    as u16;
                let name = p.req_str("name")?.to_owned();
                let target = p.int("targetPort", 1, 65535)?.map(|t| t as u16);
                if ports
                    .iter()
                    .any(|(q, n, _)| q.number == number || *n == name)
                {
                    return Err(InvalidConfig::new(
                        path,
                        format!("duplicate port {number} or name {name:?}"),
                    ));
                }
                let proto = p.str("protocol")?;
                let protocol = match proto.map(str::to_ascii_uppercase).as_deref() {
                    Some("HTTP") => Protocol::Http1,
                    Some("HTTP2") | Some("GRPC") | Some("GRPC-WEB") => Protocol::Http2,
                    Some(
                        other @ ("TCP" | "HTTPS" | "TLS" | "MONGO" | "REDIS" | "MYSQL" | "UDP"
                        | "THRIFT"),
                    ) => {
                        warnings.push(InvalidConfig::new(
                            path.field("protocol"),
                            format!("protocol {other} is not supported yet; port ignored"),
                        ));
                        continue;
                    }
                    Some(other) => {
                        return Err(InvalidConfig::new(
                            path.field("protocol"),
                            format!("unknown protocol {other:?}"),
                        ));
                    }
                    // Istio's protocol selection by port name: `<protocol>[-<suffix>]`.
                    None => match name.split('-').next().unwrap_or_default() {
                        "http2" | "grpc" | "grpc-web" => Protocol::Http2,
                        _ => Protocol::Http1,
                    },
                };
                ports.push((ServicePort { number, protocol }, name, target));
            }

            // Endpoints.
            let mut endpoints: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
            let mut accounts = BTreeSet::new();
            let ep_values = spec.list("endpoints")?;
            for (i, v) in ep_values.iter().enumerate() {
                let path = FieldPath::root().field("endpoints").index(i);
                let e = Obj::new(v, &path)?;
                e.check_fields(
                    &Fields {
                        supported: &[
                            "address",
                            "ports",
                            "labels",
                            "weight",
                            "locality",
                            "serviceAccount",
                        ],
                        unsupported: &["network"],
                        ignored: &[],
                    },
                    &mut errors,
                    &mut warnings,
                );
                let address = e.req_str("address")?;
                // In the ServiceEntry's namespace (Istio `WorkloadEntry.serviceAccount`).
                if let Some(sa) = e.str("serviceAccount")? {
                    if sa.is_empty() || sa.contains('/') {
                        return Err(InvalidConfig::new(
                            path.field("serviceAccount"),
                            format!("invalid service account {sa:?}"),
                        ));
                    }
                    accounts.insert(ServiceAccount {
                        namespace: namespace.into(),
                        name: sa.into(),
                    });
                }
                let ip: Option<IpAddr> = address.parse().ok();
                if !dns && ip.is_none() {
                    return Err(InvalidConfig::new(
                        path.field("address"),
                        format!(
                            "{address:?} is not an IP address, which resolution STATIC requires"
                        ),
                    ));
                }
                let weight = e.int("weight", 1, i64::from(u32::MAX))?.unwrap_or(1) as u32;
                let labels = Labels::new(e.str_map("labels")?);
                // `region/zone/subzone`, as Istio writes endpoint localities.
                let locality = e.str("locality")?.map(Locality::parse).unwrap_or_default();
                let port_map_path = path.field("ports");
                let port_map: BTreeMap<&str, u16> = match e.get("ports") {
                    None => BTreeMap::new(),
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| {
                            super::yaml::int_value(v, &port_map_path.key(k), 1, 65535)
                                .map(|n| (k.as_str(), n as u16))
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => {
                        return Err(InvalidConfig::new(
                            port_map_path,
                            "expected a mapping of port names to numbers",
                        ));
                    }
                };
                for name in port_map.keys() {
                    if !ports.iter().any(|(_, n, _)| n == name) {
                        return Err(InvalidConfig::new(
                            port_map_path.key(name),
                            format!("no port named {name:?} in ports"),
                        ));
                    }
                }
                for (sp, name, target) in &ports {
                    let port = port_map
                        .get(name.as_str())
                        .copied()
                        .or(*target)
                        .unwrap_or(sp.number);
                    let address = match ip {
                        Some(ip) => EndpointAddress::Socket(SocketAddr::new(ip, port)),
                        None => EndpointAddress::Dns {
                            host: address.to_ascii_lowercase().into(),
                            port,
                        },
                    };
                    endpoints.entry(sp.number).or_default().push(Endpoint {
                        locality: locality.clone(),
                        ..Endpoint::new(address)
                            .with_weight(weight)
                            .with_labels(labels.clone())
                    });
                }
            }

            let accounts: Arc<[ServiceAccount]> = accounts.into_iter().collect();
            let sans = spec.str_list("subjectAltNames")?;
            if let Some(i) = sans.iter().position(|s| s.is_empty()) {
                return Err(InvalidConfig::new(
                    FieldPath::root().field("subjectAltNames").index(i),
                    "empty subject alt name",
                ));
            }
            let sans: Arc<[Arc<str>]> = sans.into_iter().map(Arc::from).collect();
            for (hi, host) in hosts.iter().enumerate() {
                let fqdn =
                    self.fqdn(host, namespace, FieldPath::root().field("hosts").index(hi))?;
                let mut eps = endpoints.clone();
                if dns && ep_values.is_empty() {
                    // DNS without endpoints: the host itself is resolved.
                    for (sp, _, target) in &ports {
                        eps.entry(sp.number).or_default().push(Endpoint::new(
                            EndpointAddress::Dns {
                                host: host.to_ascii_lowercase().into(),
                                port: target.unwrap_or(sp.number),
                            },
                        ));
                    }
                }
                if let Some(other) = self.services.get(&fqdn) {
                    return Err(InvalidConfig::new(
                        FieldPath::root().field("hosts").index(hi),
                        format!(
                            "host {fqdn:?} is already declared by document {} ({})",
                            other.doc.index,
                            other.doc.resource.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                self.services.insert(
                    fqdn,
                    Service {
                        doc: doc.clone(),
                        namespace: namespace.to_owned(),
                        ports: ports.iter().map(|(p, _, _)| p.clone()).collect(),
                        endpoints: eps,
                        accounts: accounts.clone(),
                        sans: sans.clone(),
                    },
                );
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(e);
        }
        self.collect(&doc, errors, warnings);
    }

    fn linkerd(&mut self, doc: DocRef, namespace: &str, name: &str, kind: &str, spec: Obj<'_>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        let result = if kind == "ServiceProfile" {
            self.fqdn(
                name,
                namespace,
                FieldPath::root().field("metadata").field("name"),
            )
            .and_then(|fqdn| {
                let sp = linkerd::service_profile(spec, &mut errors, &mut warnings)?;
                Ok((fqdn, Some(sp), None))
            })
        } else {
            let resolve = |h: &str, p: FieldPath| self.fqdn(h, namespace, p);
            linkerd::traffic_split(spec, &resolve, &mut errors, &mut warnings)
                .map(|(apex, ts)| (apex, None, Some(ts)))
        };
        match result {
            Ok((fqdn, profile, split)) => {
                let existing = if profile.is_some() {
                    self.profiles.get(&fqdn).map(|(d, _)| d)
                } else {
                    self.splits.get(&fqdn).map(|(d, _)| d)
                };
                if let Some(other) = existing {
                    let path = if profile.is_some() {
                        FieldPath::root().field("metadata").field("name")
                    } else {
                        FieldPath::root().field("service")
                    };
                    errors.push(InvalidConfig::new(
                        path,
                        format!(
                            "host {fqdn:?} already has a {kind} (document {}, {})",
                            other.index,
                            other.resource.as_deref().unwrap_or("?")
                        ),
                    ));
                } else if let Some(sp) = profile {
                    self.profiles.insert(fqdn, (doc.clone(), sp));
                } else if let Some(ts) = split {
                    self.splits.insert(fqdn, (doc.clone(), ts));
                }
            }
            Err(e) => errors.push(e),
        }
        self.collect(&doc, errors, warnings);
    }

    /// The routes of a service without a VirtualService: its
    /// ServiceProfile routes and TrafficSplit, if it has either.
    fn linkerd_routes(&self, fqdn: &str, port: u16) -> Option<Result<Vec<Route>, Problem>> {
        let profile = self.profiles.get(fqdn);
        let split = self.splits.get(fqdn);
        if profile.is_none() && split.is_none() {
            return None;
        }
        let clusters = match split {
            None => Ok(WeightedClusters::single(
                cluster_name(port, None, fqdn).into(),
            )),
            Some((doc, ts)) => (|| {
                let mut targets = Vec::new();
                for b in &ts.backends {
                    let svc = &self.services[&b.service];
                    let bport = if svc.ports.iter().any(|p| p.number == port) {
                        port
                    } else if svc.ports.len() == 1 {
                        svc.ports[0].number
                    } else {
                        return Err(InvalidConfig::new(
                            b.path.field("service"),
                            format!(
                                "service {:?} has several ports and none is {port}, the apex's",
                                b.service
                            ),
                        ));
                    };
                    targets.push(WeightedCluster {
                        cluster: cluster_name(bport, None, &b.service).into(),
                        weight: b.weight,
                    });
                }
                WeightedClusters::try_new(targets)
                    .map_err(|e| e.within(&FieldPath::root().field("backends")))
            })()
            .map_err(|e| Problem {
                doc: Some(doc.clone()),
                error: e,
            }),
        };
        Some(clusters.map(|c| linkerd::routes(profile.map(|(_, p)| p), &c)))
    }

    fn envoy_filter(&mut self, doc: DocRef, namespace: &str, name: &str, spec: Obj<'_>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        match envoyfilter::parse(spec, &mut errors, &mut warnings) {
            Ok(patches) => {
                self.envoy_filters
                    .push((doc.clone(), format!("{namespace}/{name}"), patches));
            }
            Err(e) => errors.push(e),
        }
        self.collect(&doc, errors, warnings);
    }

    /// Applies the EnvoyFilter local rate limits: outbound ones to the
    /// clusters on their port, inbound ones as server listeners.
    fn apply_envoy_filters(&mut self, resources: &mut Resources) {
        let mut owner: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for (doc, name, patches) in &self.envoy_filters {
            for (i, p) in patches.iter().enumerate() {
                let path = FieldPath::root().field("configPatches").index(i);
                let Some(bucket) = p.bucket else { continue };
                match &p.side {
                    envoyfilter::Side::Inbound { selector } => {
                        let port = p.port.unwrap_or(0);
                        resources.listeners.push(Listener::server(
                            format!("inbound|{port}|{name}|{i}"),
                            port,
                            ServerPolicy {
                                rate_limit: Some(bucket),
                                workload_selector: selector.clone(),
                            },
                        ));
                    }
                    envoyfilter::Side::Outbound => {
                        let mut matched = 0;
                        for c in &mut resources.clusters {
                            let port = c
                                .name
                                .as_str()
                                .split('|')
                                .nth(1)
                                .and_then(|p| p.parse().ok());
                            if p.port.is_some() && p.port != port {
                                continue;
                            }
                            matched += 1;
                            if let Some((other_doc, other)) = owner.get(c.name.as_str()) {
                                self.errors.push(Problem {
                                    doc: Some(doc.clone()),
                                    error: InvalidConfig::new(
                                        path.clone(),
                                        format!(
                                            "cluster {:?} already has a local rate limit from document {other_doc} ({other})",
                                            c.name.as_str()
                                        ),
                                    ),
                                });
                                continue;
                            }
                            owner.insert(
                                c.name.as_str().to_owned(),
                                (doc.index, format!("EnvoyFilter {name}")),
                            );
                            c.rate_limit = Some(bucket);
                        }
                        if matched == 0 {
                            self.errors.push(Problem {
                                doc: Some(doc.clone()),
                                error: InvalidConfig::new(
                                    path.field("match"),
                                    "matches no cluster (no service has the port)",
                                ),
                            });
                        }
                    }
                }
            }
        }
    }

    fn destination_rule(&mut self, doc: DocRef, namespace: &str, spec: Obj<'_>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        spec.check_fields(
            &Fields {
                supported: &["host", "trafficPolicy", "subsets"],
                unsupported: &["exportTo", "workloadSelector"],
                ignored: &[],
            },
            &mut errors,
            &mut warnings,
        );
        let result = (|| -> Result<(), InvalidConfig> {
            let host = spec.req_str("host")?;
            let fqdn = self.fqdn(host, namespace, FieldPath::root().field("host"))?;
            let tp_path = FieldPath::root().field("trafficPolicy");
            let policy = match spec.obj("trafficPolicy", &tp_path)? {
                Some(tp) => traffic_policy::traffic_policy(tp, &mut errors, &mut warnings)?,
                None => TrafficPolicy::default(),
            };
            let mut subsets: Vec<Subset> = Vec::new();
            for (i, v) in spec.list("subsets")?.iter().enumerate() {
                let path = FieldPath::root().field("subsets").index(i);
                let s = Obj::new(v, &path)?;
                s.check_fields(
                    &Fields {
                        supported: &["name", "labels", "trafficPolicy"],
                        unsupported: &[],
                        ignored: &[],
                    },
                    &mut errors,
                    &mut warnings,
                );
                let name = s.req_str("name")?;
                if name.is_empty() || name.contains('|') {
                    return Err(InvalidConfig::new(
                        path.field("name"),
                        format!("invalid subset name {name:?}"),
                    ));
                }
                if subsets.iter().any(|o| o.name == name) {
                    return Err(InvalidConfig::new(
                        path.field("name"),
                        format!("duplicate subset {name:?}"),
                    ));
                }
                let tp_path = path.field("trafficPolicy");
                let policy = match s.obj("trafficPolicy", &tp_path)? {
                    Some(tp) => traffic_policy::traffic_policy(tp, &mut errors, &mut warnings)?,
                    None => TrafficPolicy::default(),
                };
                subsets.push(Subset {
                    name: name.to_owned(),
                    labels: Labels::new(s.str_map("labels")?),
                    policy,
                });
            }
            if let Some(other) = self.rules.get(&fqdn) {
                return Err(InvalidConfig::new(
                    FieldPath::root().field("host"),
                    format!(
                        "host {fqdn:?} already has a DestinationRule (document {}, {})",
                        other.doc.index,
                        other.doc.resource.as_deref().unwrap_or("?")
                    ),
                ));
            }
            self.rules.insert(
                fqdn,
                DestinationRule {
                    doc: doc.clone(),
                    policy,
                    subsets,
                },
            );
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(e);
        }
        self.collect(&doc, errors, warnings);
    }

    fn virtual_service(&mut self, doc: DocRef, namespace: &str, spec: Obj<'_>) {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        spec.check_fields(
            &Fields {
                supported: &["hosts", "http", "gateways"],
                unsupported: &["exportTo", "tcp", "tls"],
                ignored: &[],
            },
            &mut errors,
            &mut warnings,
        );
        let result = (|| -> Result<(), InvalidConfig> {
            let gateways = spec.str_list("gateways")?;
            if !gateways.is_empty() {
                if !gateways.contains(&"mesh") {
                    warnings.push(InvalidConfig::new(
                        FieldPath::root().field("gateways"),
                        "does not include \"mesh\": the VirtualService applies to gateways only; ignored",
                    ));
                    return Ok(());
                }
                if gateways.len() > 1 {
                    warnings.push(InvalidConfig::new(
                        FieldPath::root().field("gateways"),
                        "gateways other than \"mesh\" are not supported; only the mesh routes apply",
                    ));
                }
            }
            let hosts = spec.str_list("hosts")?;
            if hosts.is_empty() {
                return Err(InvalidConfig::new(
                    FieldPath::root().field("hosts"),
                    "at least one host is required",
                ));
            }
            let mut routes = Vec::new();
            for (i, v) in spec.list("http")?.iter().enumerate() {
                let path = FieldPath::root().field("http").index(i);
                routes.push(self.http_route(i, v, &path, namespace, &mut errors, &mut warnings)?);
            }
            let vs = Arc::new(VirtualService {
                doc: doc.clone(),
                routes,
            });
            for (hi, host) in hosts.iter().enumerate() {
                let path = FieldPath::root().field("hosts").index(hi);
                let fqdn = self.fqdn(host, namespace, path.clone())?;
                if let Some(other) = self.virtual_services.get(&fqdn) {
                    return Err(InvalidConfig::new(
                        path,
                        format!(
                            "host {fqdn:?} is already routed by document {} ({})",
                            other.doc.index,
                            other.doc.resource.as_deref().unwrap_or("?")
                        ),
                    ));
                }
                self.virtual_services.insert(fqdn, Arc::clone(&vs));
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(e);
        }
        self.collect(&doc, errors, warnings);
    }

    fn http_route(
        &self,
        index: usize,
        value: &Value,
        path: &FieldPath,
        namespace: &str,
        errors: &mut Vec<InvalidConfig>,
        warnings: &mut Vec<InvalidConfig>,
    ) -> Result<HttpRoute, InvalidConfig> {
        let h = Obj::new(value, path)?;
        h.check_fields(
            &Fields {
                supported: &[
                    "name",
                    "match",
                    "route",
                    "timeout",
                    "retries",
                    "fault",
                    "rewrite",
                    "headers",
                    "mirror",
                    "mirrors",
                    "mirrorPercentage",
                    "mirrorPercent",
                    "redirect",
                    "directResponse",
                ],
                unsupported: &["corsPolicy"],
                ignored: &[],
            },
            errors,
            warnings,
        );
        for key in ["delegate"] {
            if h.get(key).is_some() {
                // Reported as an error, not a warning: without it the route
                // would forward traffic the author meant to answer locally.
                if let Some(e) = errors.iter_mut().find(|e| e.path() == &path.field(key)) {
                    *e = InvalidConfig::new(path.field(key), "not supported yet");
                }
            }
        }
        let mut matches = Vec::new();
        for (mi, mv) in h.list("match")?.iter().enumerate() {
            let mpath = path.field("match").index(mi);
            matches.push(http_match(mv, &mpath, errors, warnings)?);
        }
        let route_path = path.field("route");
        let dests = h.list("route")?;
        let local = self.local_action(&h, errors, warnings)?;
        if local.is_some() {
            if !dests.is_empty() {
                return Err(InvalidConfig::new(
                    route_path,
                    "cannot be combined with redirect or directResponse",
                ));
            }
        } else if dests.is_empty() {
            return Err(InvalidConfig::new(
                route_path,
                "at least one destination is required",
            ));
        }
        let mut destinations = Vec::new();
        for (di, dv) in dests.iter().enumerate() {
            let dpath = route_path.index(di);
            let d = Obj::new(dv, &dpath)?;
            d.check_fields(
                &Fields {
                    supported: &["destination", "weight", "headers"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            let dest_path = dpath.field("destination");
            let weight = d.int("weight", 0, 100)?;
            let weight = weight.unwrap_or(if dests.len() == 1 { 100 } else { 0 }) as u32;
            let mut dest = self.destination(&d, dest_path, namespace, weight, errors, warnings)?;
            let hpath = dpath.field("headers");
            if let Some(hd) = d.obj("headers", &hpath)? {
                dest.headers = Some(traffic::headers(hd, (errors, warnings))?);
            }
            destinations.push(dest);
        }
        let shaping = self.shaping(&h, errors, warnings)?;
        let mirrors = self.mirrors(&h, namespace, errors, warnings)?;
        if destinations.len() > 1 {
            // Istio: "The sum of weights across destinations should add up
            // to 100." A single destination takes all traffic.
            let sum: u32 = destinations.iter().map(|d| d.weight).sum();
            if sum != 100 {
                return Err(InvalidConfig::new(
                    route_path.index(destinations.len() - 1).field("weight"),
                    format!("weights sum to {sum}, expected 100"),
                ));
            }
        }
        let timeout = match h.str("timeout")? {
            Some(t) => {
                let d =
                    duration::parse(t).map_err(|m| InvalidConfig::new(path.field("timeout"), m))?;
                // Envoy: a zero timeout disables it.
                (!d.is_zero()).then_some(d)
            }
            None => None,
        };
        if local.is_some() {
            for key in [
                "timeout", "fault", "rewrite", "headers", "mirror", "mirrors", "retries",
            ] {
                if h.get(key).is_some() {
                    return Err(InvalidConfig::new(
                        path.field(key),
                        "applies to forwarded requests only; cannot be combined with redirect or directResponse",
                    ));
                }
            }
        }
        let retry = super::retries::http_retry(&h, path, errors, warnings)?;
        Ok(HttpRoute {
            index,
            name: h.str("name")?.map(Arc::from),
            matches,
            destinations,
            timeout,
            retry,
            shaping,
            mirrors,
            local,
        })
    }

    /// `destination` of `d` at `dest_path`.
    fn destination(
        &self,
        d: &Obj<'_>,
        dest_path: FieldPath,
        namespace: &str,
        weight: u32,
        errors: &mut Vec<InvalidConfig>,
        warnings: &mut Vec<InvalidConfig>,
    ) -> Result<Destination, InvalidConfig> {
        let dest = d
            .obj("destination", &dest_path)?
            .ok_or_else(|| InvalidConfig::new(dest_path.clone(), "required"))?;
        dest.check_fields(
            &Fields {
                supported: &["host", "subset", "port"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let host = self.fqdn(dest.req_str("host")?, namespace, dest_path.field("host"))?;
        let subset = dest.str("subset")?.map(str::to_owned);
        let port_path = dest_path.field("port");
        let port = match dest.obj("port", &port_path)? {
            Some(p) => Some(
                p.int("number", 1, 65535)?
                    .ok_or_else(|| InvalidConfig::new(port_path.field("number"), "required"))?
                    as u16,
            ),
            None => None,
        };
        Ok(Destination {
            path: dest_path,
            host,
            subset,
            port,
            weight,
            headers: None,
        })
    }

    /// `fault`, `rewrite` and `headers` of an HTTP route.
    fn shaping(
        &self,
        h: &Obj<'_>,
        errors: &mut Vec<InvalidConfig>,
        warnings: &mut Vec<InvalidConfig>,
    ) -> Result<Shaping, InvalidConfig> {
        let mut shaping = Shaping::default();
        let fpath = h.path.field("fault");
        if let Some(f) = h.obj("fault", &fpath)? {
            shaping.fault = Some(traffic::fault(f, (errors, warnings))?);
        }
        let rpath = h.path.field("rewrite");
        if let Some(r) = h.obj("rewrite", &rpath)? {
            shaping.rewrite = Some(traffic::rewrite(r, (errors, warnings))?);
        }
        let hpath = h.path.field("headers");
        if let Some(hd) = h.obj("headers", &hpath)? {
            (shaping.request_headers, shaping.response_headers) =
                traffic::headers(hd, (errors, warnings))?;
        }
        Ok(shaping)
    }

    /// `mirror` + `mirrorPercentage` (or the deprecated `mirrorPercent`),
    /// and `mirrors`. Without a percentage every request is mirrored
    /// (istio.io VirtualService reference, `HTTPRoute.mirrorPercentage`:
    /// "If this field is absent, all the traffic (100%) will be
    /// mirrored").
    fn mirrors(
        &self,
        h: &Obj<'_>,
        namespace: &str,
        errors: &mut Vec<InvalidConfig>,
        warnings: &mut Vec<InvalidConfig>,
    ) -> Result<Vec<(Destination, Fraction)>, InvalidConfig> {
        let mut out = Vec::new();
        if let Some(v) = h.get("mirror") {
            // `mirror` is a Destination itself; wrap it to reuse the parser.
            let wrapped = serde_json::json!({ "destination": v });
            let wpath = h.path.clone();
            let w = Obj::new(&wrapped, &wpath)?;
            let d = self.destination(&w, h.path.field("mirror"), namespace, 0, errors, warnings)?;
            let fraction = match traffic::percent(h, "mirrorPercentage")? {
                Some(f) => f,
                None => match h.int("mirrorPercent", 0, 100)? {
                    Some(p) => Fraction::from_ppm(p as u32 * 10_000),
                    None => Fraction::ALL,
                },
            };
            out.push((d, fraction));
        } else {
            for key in ["mirrorPercentage", "mirrorPercent"] {
                if h.get(key).is_some() {
                    return Err(InvalidConfig::new(h.path.field(key), "set without mirror"));
                }
            }
        }
        for (i, v) in h.list("mirrors")?.iter().enumerate() {
            let mpath = h.path.field("mirrors").index(i);
            let m = Obj::new(v, &mpath)?;
            m.check_fields(
                &Fields {
                    supported: &["destination", "percentage"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            let d = self.destination(
                &m,
                mpath.field("destination"),
                namespace,
                0,
                errors,
                warnings,
            )?;
            out.push((
                d,
                traffic::percent(&m, "percentage")?.unwrap_or(Fraction::ALL),
            ));
        }
        Ok(out)
    }

    /// `redirect` or `directResponse`, when the route answers itself.
    fn local_action(
        &self,
        h: &Obj<'_>,
        errors: &mut Vec<InvalidConfig>,
        warnings: &mut Vec<InvalidConfig>,
    ) -> Result<Option<RouteAction>, InvalidConfig> {
        let rpath = h.path.field("redirect");
        let dpath = h.path.field("directResponse");
        let redirect = h.obj("redirect", &rpath)?;
        let direct = h.obj("directResponse", &dpath)?;
        Ok(match (redirect, direct) {
            (Some(_), Some(_)) => {
                return Err(InvalidConfig::new(
                    dpath,
                    "cannot be combined with redirect",
                ));
            }
            (Some(r), None) => Some(RouteAction::Redirect(traffic::redirect(
                r,
                (errors, warnings),
            )?)),
            (None, Some(d)) => Some(RouteAction::DirectResponse(traffic::direct_response(
                d,
                (errors, warnings),
            )?)),
            (None, None) => None,
        })
    }

    /// Builds the resources, or returns every error found.
    pub(crate) fn finish(mut self) -> Result<Resources, Vec<Problem>> {
        if !self.errors.is_empty() {
            // Document-level errors first; cross-document checks would
            // only repeat them.
            return Err(self.errors);
        }
        // Cross-document checks: every destination names a declared host,
        // port and subset.
        let mut problems = Vec::new();
        for (fqdn, vs) in &self.virtual_services {
            if !self.services.contains_key(fqdn) {
                problems.push((
                    vs.doc.clone(),
                    InvalidConfig::new(
                        FieldPath::root().field("hosts"),
                        format!("no ServiceEntry declares host {fqdn:?}"),
                    ),
                ));
            }
            for r in &vs.routes {
                for d in r
                    .destinations
                    .iter()
                    .chain(r.mirrors.iter().map(|(d, _)| d))
                {
                    if let Err(e) = self.check_destination(d) {
                        problems.push((vs.doc.clone(), e));
                    }
                }
            }
        }
        for (fqdn, dr) in &self.rules {
            if !self.services.contains_key(fqdn) {
                problems.push((
                    dr.doc.clone(),
                    InvalidConfig::new(
                        FieldPath::root().field("host"),
                        format!("no ServiceEntry declares host {fqdn:?}"),
                    ),
                ));
            }
        }
        let declared = |fqdn: &str, path: FieldPath| -> Option<InvalidConfig> {
            (!self.services.contains_key(fqdn)).then(|| {
                InvalidConfig::new(path, format!("no ServiceEntry declares host {fqdn:?}"))
            })
        };
        for (fqdn, (doc, _)) in &self.profiles {
            if let Some(e) = declared(fqdn, FieldPath::root().field("metadata").field("name")) {
                problems.push((doc.clone(), e));
            }
        }
        for (fqdn, (doc, ts)) in &self.splits {
            if let Some(e) = declared(fqdn, FieldPath::root().field("service")) {
                problems.push((doc.clone(), e));
            }
            for b in &ts.backends {
                if let Some(e) = declared(&b.service, b.path.field("service")) {
                    problems.push((doc.clone(), e));
                }
            }
        }
        for (fqdn, doc) in self
            .profiles
            .iter()
            .map(|(f, (d, _))| (f, d))
            .chain(self.splits.iter().map(|(f, (d, _))| (f, d)))
        {
            if let Some(vs) = self.virtual_services.get(fqdn) {
                problems.push((
                    doc.clone(),
                    InvalidConfig::new(
                        FieldPath::root(),
                        format!(
                            "host {fqdn:?} is also routed by document {} ({}); use either Istio or Linkerd routing for a host",
                            vs.doc.index,
                            vs.doc.resource.as_deref().unwrap_or("?")
                        ),
                    ),
                ));
            }
        }
        // A VirtualService named by several hosts is checked once.
        problems.dedup();
        for (doc, e) in problems {
            self.error(&doc, e);
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }

        let mut resources = Resources::new();
        let mut vhosts_by_port: BTreeMap<u16, Vec<VirtualHost>> = BTreeMap::new();
        let mut seen_route_errors = BTreeSet::new();
        for (fqdn, svc) in &self.services {
            let rule = self.rules.get(fqdn);
            for port in &svc.ports {
                let endpoints = svc.endpoints.get(&port.number).cloned().unwrap_or_default();
                let mut clusters = vec![(None, endpoints.clone(), None)];
                if let Some(rule) = rule {
                    for s in &rule.subsets {
                        let selected = endpoints
                            .iter()
                            .filter(|e| e.labels.matches(&s.labels))
                            .cloned()
                            .collect();
                        clusters.push((Some(s.name.as_str()), selected, Some(&s.policy)));
                    }
                }
                for (subset, eps, subset_policy) in clusters {
                    let name = cluster_name(port.number, subset, fqdn);
                    let mut cluster = Cluster::new(name.as_str()).with_protocol(port.protocol);
                    if let Err(e) = traffic_policy::apply(
                        &mut cluster,
                        subset_policy,
                        rule.map(|r| &r.policy),
                        port.number,
                    ) && let Some(r) = rule
                    {
                        let problem = Problem {
                            doc: Some(r.doc.clone()),
                            error: e,
                        };
                        // Once, however many subsets share the setting.
                        if !self.errors.contains(&problem) {
                            self.errors.push(problem);
                        }
                    }
                    cluster.service = Some(fqdn.as_str().into());
                    cluster.subset = subset.map(Arc::from);
                    // The service's identities, where the DestinationRule
                    // names none (Istio: ISTIO_MUTUAL expects the service's
                    // accounts; SIMPLE/MUTUAL take the ServiceEntry's
                    // `subjectAltNames` too, the stricter reading).
                    match &mut cluster.tls {
                        Some(UpstreamTls::IstioMutual(m)) => {
                            m.service_accounts = svc.accounts.clone();
                            m.service_subject_alt_names = svc.sans.clone();
                        }
                        Some(
                            UpstreamTls::Simple(o) | UpstreamTls::Mutual { origination: o, .. },
                        ) => {
                            if let ServerVerification::Verify {
                                subject_alt_names, ..
                            } = &mut o.verify
                                && subject_alt_names.is_empty()
                            {
                                *subject_alt_names = svc.sans.clone();
                            }
                        }
                        None => {}
                    }
                    if let Some(budget) = self.profiles.get(fqdn).and_then(|(_, p)| p.budget) {
                        cluster.retry_budget = budget;
                    }
                    resources.clusters.push(cluster);
                    match EndpointSet::try_new(name.as_str(), eps) {
                        Ok(set) => resources.endpoints.push(set),
                        Err(e) => self.errors.push(Problem {
                            doc: Some(svc.doc.clone()),
                            error: e,
                        }),
                    }
                }

                let routes = match self.virtual_services.get(fqdn) {
                    Some(vs) => match self.vs_routes(vs, port.number) {
                        Ok(r) => r,
                        Err(e) => {
                            if seen_route_errors.insert(e.to_string()) {
                                self.errors.push(Problem {
                                    doc: Some(vs.doc.clone()),
                                    error: e,
                                });
                            }
                            continue;
                        }
                    },
                    None if self.profiles.contains_key(fqdn) || self.splits.contains_key(fqdn) => {
                        match self.linkerd_routes(fqdn, port.number) {
                            Some(Ok(r)) => r,
                            Some(Err(p)) => {
                                if seen_route_errors.insert(p.error.to_string()) {
                                    self.errors.push(p);
                                }
                                continue;
                            }
                            None => Vec::new(),
                        }
                    }
                    None => vec![Route {
                        name: Some("default".into()),
                        matches: Arc::from([]),
                        // Istio gives the default route its default
                        // retry policy too (`BuildDefaultHTTPOutboundRoute`).
                        action: RouteAction::Forward(Box::new(
                            ForwardAction::to(cluster_name(port.number, None, fqdn))
                                .with_retry(Some(RetryPolicy::istio_default())),
                        )),
                    }],
                };
                vhosts_by_port
                    .entry(port.number)
                    .or_default()
                    .push(VirtualHost {
                        name: format!("{fqdn}:{}", port.number).into(),
                        domains: self
                            .domains(fqdn, &svc.namespace, port.number)
                            .into_iter()
                            .map(Arc::from)
                            .collect(),
                        routes: routes.into(),
                    });
            }
        }
        self.apply_envoy_filters(&mut resources);
        for (port, vhosts) in vhosts_by_port {
            match RouteTable::try_new(port.to_string(), vhosts) {
                Ok(t) => {
                    resources
                        .listeners
                        .push(Listener::client(port, port.to_string()));
                    resources.route_tables.push(t);
                }
                Err(e) => self.errors.push(Problem {
                    doc: None,
                    error: InvalidConfig::new(
                        FieldPath::root(),
                        format!("route table for port {port}: {e}"),
                    ),
                }),
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        resources.security = std::mem::take(&mut self.security);
        resources.telemetry = std::mem::take(&mut self.telemetry);
        Ok(resources)
    }

    fn check_destination(&self, d: &Destination) -> Result<(), InvalidConfig> {
        let Some(svc) = self.services.get(&d.host) else {
            return Err(InvalidConfig::new(
                d.path.field("host"),
                format!("no ServiceEntry declares host {:?}", d.host),
            ));
        };
        if let Some(port) = d.port
            && !svc.ports.iter().any(|p| p.number == port)
        {
            return Err(InvalidConfig::new(
                d.path.field("port").field("number"),
                format!("host {:?} has no port {port}", d.host),
            ));
        }
        if let Some(subset) = &d.subset {
            let known = self
                .rules
                .get(&d.host)
                .is_some_and(|r| r.subsets.iter().any(|s| &s.name == subset));
            if !known {
                return Err(InvalidConfig::new(
                    d.path.field("subset"),
                    format!("unknown subset {subset:?} for host {:?}", d.host),
                ));
            }
        }
        Ok(())
    }

    /// The routes a VirtualService gives the virtual host on `port`.
    fn vs_routes(&self, vs: &VirtualService, port: u16) -> Result<Vec<Route>, InvalidConfig> {
        let mut routes = Vec::new();
        for r in &vs.routes {
            let matches: Vec<RouteMatch> = r
                .matches
                .iter()
                .filter(|(_, p)| p.is_none_or(|p| p == port))
                .map(|(m, _)| m.clone())
                .collect();
            if !r.matches.is_empty() && matches.is_empty() {
                continue; // every clause is for other ports
            }
            if let Some(local) = &r.local {
                routes.push(Route {
                    name: r.name.clone(),
                    matches: matches.into(),
                    action: local.clone(),
                });
                continue;
            }
            let mut targets = Vec::new();
            for d in &r.destinations {
                targets.push(WeightedCluster {
                    cluster: self.destination_cluster(d, port)?.into(),
                    weight: d.weight,
                });
            }
            let mut mirrors = Vec::new();
            for (d, fraction) in &r.mirrors {
                mirrors.push(Mirror {
                    cluster: self.destination_cluster(d, port)?.into(),
                    fraction: *fraction,
                });
            }
            let clusters = WeightedClusters::try_new(targets).map_err(|e| {
                e.within(
                    &FieldPath::root()
                        .field("http")
                        .index(r.index)
                        .field("route"),
                )
            })?;
            routes.push(Route {
                name: r.name.clone(),
                matches: matches.into(),
                action: RouteAction::Forward(Box::new(ForwardAction {
                    fault: r.shaping.fault,
                    rewrite: r.shaping.rewrite.clone(),
                    request_headers: r.shaping.request_headers.clone(),
                    response_headers: r.shaping.response_headers.clone(),
                    mirrors: mirrors.into(),
                    target_headers: if r.destinations.iter().any(|d| d.headers.is_some()) {
                        r.destinations
                            .iter()
                            .map(|d| d.headers.clone().unwrap_or_default())
                            .collect()
                    } else {
                        Arc::from([])
                    },
                    ..ForwardAction::new(clusters)
                        .with_timeout(r.timeout)
                        .with_retry(r.retry.clone())
                })),
            });
        }
        Ok(routes)
    }

    /// The cluster a destination names for a request on `port`.
    fn destination_cluster(&self, d: &Destination, port: u16) -> Result<String, InvalidConfig> {
        let svc = &self.services[&d.host];
        let dport = match d.port {
            Some(p) => p,
            None if svc.ports.iter().any(|p| p.number == port) => port,
            None if svc.ports.len() == 1 => svc.ports[0].number,
            None => {
                return Err(InvalidConfig::new(
                    d.path.field("port"),
                    format!(
                        "required: host {:?} has several ports and none is {port}, the port of the request",
                        d.host
                    ),
                ));
            }
        };
        Ok(cluster_name(dport, d.subset.as_deref(), &d.host))
    }

    /// The names a client in `self.namespace` may use for a service, as
    /// istiod lists them in a sidecar's virtual host.
    fn domains(&self, fqdn: &str, namespace: &str, port: u16) -> Vec<String> {
        let mut names = vec![fqdn.to_owned()];
        let suffix = format!(".svc.{}", self.domain_suffix);
        if let Some(short) = fqdn.strip_suffix(&suffix) {
            names.push(format!("{short}.svc"));
            names.push(short.to_owned());
            if namespace == self.namespace
                && let Some(name) = short.strip_suffix(&format!(".{namespace}"))
            {
                names.push(name.to_owned());
            }
        }
        let mut out = Vec::with_capacity(names.len() * 2);
        for n in names {
            out.push(format!("{n}:{port}"));
            out.push(n);
        }
        out
    }
}

/// Istio's cluster name: `outbound|<port>|<subset>|<fqdn>`.
pub(crate) fn cluster_name(port: u16, subset: Option<&str>, fqdn: &str) -> String {
    format!("outbound|{port}|{}|{fqdn}", subset.unwrap_or(""))
}

/// One `HTTPMatchRequest`.
fn http_match(
    value: &Value,
    path: &FieldPath,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<(RouteMatch, Option<u16>), InvalidConfig> {
    let m = Obj::new(value, path)?;
    m.check_fields(
        &Fields {
            supported: &[
                "name",
                "uri",
                "headers",
                "withoutHeaders",
                "method",
                "authority",
                "ignoreUriCase",
                "port",
            ],
            unsupported: &["statPrefix"],
            ignored: &[],
        },
        errors,
        warnings,
    );
    // Conditions that narrow a match cannot be ignored: the route would
    // then take requests its author excluded.
    for key in [
        "queryParams",
        "scheme",
        "sourceLabels",
        "sourceNamespace",
        "gateways",
    ] {
        if m.get(key).is_some()
            && let Some(e) = errors.iter_mut().find(|e| e.path() == &path.field(key))
        {
            *e = InvalidConfig::new(
                path.field(key),
                "not supported yet (a route cannot ignore a match condition)",
            );
        }
    }
    let ignore_case = m.bool("ignoreUriCase")?.unwrap_or(false);
    let uri_path = path.field("uri");
    let uri = match m.obj("uri", &uri_path)? {
        Some(u) => match string_match(u, ignore_case, errors, warnings)? {
            None => {
                return Err(InvalidConfig::new(
                    uri_path,
                    "empty match: set exact, prefix or regex",
                ));
            }
            Some(StringMatch::Exact(s)) => PathMatch::Exact(s),
            Some(StringMatch::Prefix(s)) => PathMatch::Prefix(s),
            Some(StringMatch::Regex(r)) => PathMatch::Regex(r),
            Some(_) => return Err(InvalidConfig::new(uri_path, "unsupported match")),
        },
        None => PathMatch::Any,
    };
    let mut headers = Vec::new();
    for (key, invert) in [("headers", false), ("withoutHeaders", true)] {
        let hpath = path.field(key);
        match m.get(key) {
            None => {}
            Some(Value::Object(map)) => {
                for (name, v) in map {
                    let npath = hpath.key(name);
                    let header = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| InvalidConfig::new(npath.clone(), "invalid header name"))?;
                    let rule = match string_match(Obj::new(v, &npath)?, false, errors, warnings)? {
                        // Istio: a header named with an empty match checks presence.
                        None => HeaderRule::Present(true),
                        Some(sm) => HeaderRule::Value(sm),
                    };
                    headers.push(HeaderMatch {
                        name: header,
                        rule,
                        invert,
                    });
                }
            }
            Some(_) => {
                return Err(InvalidConfig::new(
                    hpath,
                    "expected a mapping of header names to matches",
                ));
            }
        }
    }
    let method_path = path.field("method");
    let method = match m.obj("method", &method_path)? {
        Some(o) => Some(string_match(o, false, errors, warnings)?.ok_or_else(|| {
            InvalidConfig::new(
                method_path.clone(),
                "empty match: set exact, prefix or regex",
            )
        })?),
        None => None,
    };
    let auth_path = path.field("authority");
    let authority = match m.obj("authority", &auth_path)? {
        Some(o) => Some(string_match(o, false, errors, warnings)?.ok_or_else(|| {
            InvalidConfig::new(auth_path.clone(), "empty match: set exact, prefix or regex")
        })?),
        None => None,
    };
    let port = m.int("port", 1, 65535)?.map(|p| p as u16);
    Ok((
        RouteMatch {
            path: uri,
            ignore_case,
            headers: headers.into(),
            method,
            authority,
        },
        port,
    ))
}

/// An Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex`, or
/// nothing (`None`).
fn string_match(
    o: Obj<'_>,
    ignore_case: bool,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Option<StringMatch>, InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["exact", "prefix", "regex"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let set: Vec<&str> = ["exact", "prefix", "regex"]
        .into_iter()
        .filter(|k| o.get(k).is_some())
        .collect();
    if set.len() > 1 {
        return Err(InvalidConfig::new(
            o.path.clone(),
            format!(
                "only one of exact, prefix and regex may be set, found {}",
                set.join(" and ")
            ),
        ));
    }
    Ok(match set.first() {
        None => None,
        Some(&"exact") => Some(StringMatch::Exact(o.req_str("exact")?.into())),
        Some(&"prefix") => Some(StringMatch::Prefix(o.req_str("prefix")?.into())),
        Some(_) => {
            let pattern = o.req_str("regex")?;
            Some(StringMatch::Regex(
                Regex::try_new(pattern, ignore_case)
                    .map_err(|e| e.within(&o.path.field("regex")))?,
            ))
        }
    })
}

/// Groups problems by document for stable output.
pub(crate) fn sort_problems(problems: &mut [Problem]) {
    let key = |p: &Problem| p.doc.as_ref().map_or(usize::MAX, |d| d.index);
    problems.sort_by_key(key);
}
