//! The `mesh-core` model → Envoy v3 resources: what the ADS server
//! ([`crate::server`]) sends, so that one mesh YAML file can configure Envoy,
//! proxyless gRPC and this crate's own client alike.
//!
//! The whole [`Snapshot`] is encoded at once into an [`EncodedSnapshot`]:
//! every resource as a protobuf [`Any`], by type and name, with a content
//! hash as its delta-xDS version. The choices per consumer (documented in
//! `docs/ARCHITECTURE.md`, "xDS server and serve-xds"):
//!
//! - a client listener of the model (Istio's outbound `0.0.0.0_<port>` with
//!   route table `<port>`) becomes an Envoy listener bound to
//!   `0.0.0.0:<port>` with an `HttpConnectionManager` that fetches its routes
//!   over RDS through ADS (what istiod sends a sidecar);
//! - for every virtual-host domain `<host>:<port>` of that route table there
//!   is also an API listener named `<host>:<port>` (gRFC A27: proxyless gRPC
//!   resolves `xds:///<host>:<port>` by asking LDS for exactly that name, the
//!   way istiod names its listeners for gRPC). API listeners are served
//!   only when asked for by name, never to a wildcard LDS subscription:
//!   Envoy does not accept an `api_listener` over LDS;
//! - clusters are EDS clusters whose endpoints come over ADS (gRFC A27
//!   requires `eds_config.ads`), except clusters whose endpoints are host
//!   names, which become `LOGICAL_DNS` clusters with an inline
//!   `load_assignment` (EDS accepts only IP addresses).
//!
//! Server listeners (inbound policies) and the security policies are not
//! encoded: Envoy's inbound listener needs the local application's address,
//! which the model does not have, and a security policy must never be sent
//! in a weakened form.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as PbDuration, UInt32Value};
use mesh_core::Snapshot;
use mesh_core::model::EndpointAddress;
use prost::{Message, Name};

use crate::TypeUrl;

mod cluster;
mod endpoint;
mod listener;
mod route;

pub use cluster::cluster;
pub use endpoint::cluster_load_assignment;
pub use listener::{api_listener, api_listener_names, socket_listener};
pub use route::route_configuration;

/// One encoded resource.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedResource {
    /// The resource, as sent in a response.
    pub any: Any,
    /// A hash of its bytes, as the delta-xDS resource version: equal
    /// content has an equal version across snapshots and server restarts.
    pub version: String,
}

impl EncodedResource {
    pub(crate) fn new<M: Message + Name>(message: &M) -> Self {
        let any = any(message);
        let mut h = Fnv64::default();
        any.value.hash(&mut h);
        Self {
            version: format!("{:016x}", h.finish()),
            any,
        }
    }
}

/// Every resource of a snapshot, encoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedSnapshot {
    /// The store version the resources come from; the SotW `version_info`.
    pub version: u64,
    /// Envoy listeners (`0.0.0.0_<port>`): what a wildcard LDS subscription
    /// gets.
    pub listeners: BTreeMap<String, EncodedResource>,
    /// API listeners (`<host>:<port>`), served only by name.
    pub api_listeners: BTreeMap<String, EncodedResource>,
    /// `RouteConfiguration`s by name.
    pub routes: BTreeMap<String, EncodedResource>,
    /// `Cluster`s by name.
    pub clusters: BTreeMap<String, EncodedResource>,
    /// `ClusterLoadAssignment`s by cluster name (EDS clusters only).
    pub endpoints: BTreeMap<String, EncodedResource>,
    /// SDS `Secret`s by name: not from the store (the model has none) but
    /// set on the server ([`AdsServer::set_secrets`](crate::server::AdsServer::set_secrets)).
    pub secrets: BTreeMap<String, EncodedResource>,
}

impl EncodedSnapshot {
    /// Encodes every resource of `snapshot`.
    pub fn encode(snapshot: &Snapshot) -> Self {
        let mut out = Self {
            version: snapshot.version().0,
            ..Self::default()
        };
        for l in snapshot.listeners() {
            let Some(rt) = l.route_table() else { continue };
            out.listeners.insert(
                l.name.as_str().to_owned(),
                EncodedResource::new(&socket_listener(l, rt)),
            );
            if let Some(table) = snapshot.route_table(rt.as_str()) {
                for name in api_listener_names(table, l.port) {
                    out.api_listeners
                        .entry(name.clone())
                        .or_insert_with(|| EncodedResource::new(&api_listener(&name, rt)));
                }
            }
        }
        for t in snapshot.route_tables() {
            let hash_key = |c: &mesh_core::ClusterName| {
                snapshot
                    .cluster(c.as_str())
                    .and_then(|c| match &c.lb_policy {
                        mesh_core::model::LbPolicy::RingHash { key, .. }
                        | mesh_core::model::LbPolicy::Maglev { key, .. } => Some(key.clone()),
                        _ => None,
                    })
            };
            out.routes.insert(
                t.name().as_str().to_owned(),
                EncodedResource::new(&route_configuration(t, hash_key)),
            );
        }
        for c in snapshot.clusters() {
            let endpoints = snapshot.endpoints(c.name.as_str());
            let dns = endpoints.is_some_and(|e| {
                e.endpoints()
                    .iter()
                    .any(|ep| matches!(ep.address, EndpointAddress::Dns { .. }))
            });
            let inline = if dns { endpoints.map(|e| &**e) } else { None };
            out.clusters.insert(
                c.name.as_str().to_owned(),
                EncodedResource::new(&cluster(c, inline)),
            );
            if !dns {
                let cla = match endpoints {
                    Some(e) => cluster_load_assignment(e),
                    None => cluster_load_assignment(&mesh_core::model::EndpointSet::empty(
                        c.name.clone(),
                    )),
                };
                out.endpoints
                    .insert(c.name.as_str().to_owned(), EncodedResource::new(&cla));
            }
        }
        out
    }

    /// The resources of one type; for LDS the Envoy listeners (what a
    /// wildcard gets). Secrets are never served.
    pub fn of(&self, type_url: TypeUrl) -> Option<&BTreeMap<String, EncodedResource>> {
        match type_url {
            TypeUrl::Listener => Some(&self.listeners),
            TypeUrl::RouteConfiguration => Some(&self.routes),
            TypeUrl::Cluster => Some(&self.clusters),
            TypeUrl::ClusterLoadAssignment => Some(&self.endpoints),
            TypeUrl::Secret => Some(&self.secrets),
        }
    }

    /// The resource of `type_url` named `name`, looking at API listeners
    /// too for LDS.
    pub fn get(&self, type_url: TypeUrl, name: &str) -> Option<&EncodedResource> {
        self.of(type_url)?.get(name).or_else(|| match type_url {
            TypeUrl::Listener => self.api_listeners.get(name),
            _ => None,
        })
    }

    /// Whether `type_url` may be subscribed to with a wildcard (LDS and
    /// CDS only: xDS protocol, "How the client specifies what resources to
    /// return").
    pub fn wildcard_allowed(type_url: TypeUrl) -> bool {
        matches!(type_url, TypeUrl::Listener | TypeUrl::Cluster)
    }
}

/// Wraps `message` in an `Any` of its own type URL.
pub(crate) fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

pub(crate) fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub(crate) fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub(crate) fn boolv(value: bool) -> BoolValue {
    BoolValue { value }
}

pub(crate) fn string(s: &Arc<str>) -> String {
    String::from(&**s)
}

/// FNV-1a: a stable hash (the std hasher is seeded per process, and
/// versions must not change across server restarts).
#[derive(Clone, Copy, Debug)]
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests;
