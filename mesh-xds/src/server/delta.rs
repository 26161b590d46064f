//! One incremental (delta) ADS stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::{AdsStream, PUSH_ORDER, StreamCore};
use crate::TypeUrl;
use crate::encode::{EncodedResource, EncodedSnapshot};

/// What the client asked for and has, per type.
#[derive(Debug, Default)]
pub(super) struct Subscription {
    /// Every resource of the type (LDS/CDS only).
    wildcard: bool,
    /// Names subscribed explicitly.
    names: BTreeSet<String>,
    /// What the client has: name → version, or `None` once it was told the
    /// resource does not exist.
    known: HashMap<String, Option<String>>,
    /// The latest response's nonce and system version, to pair ACKs.
    nonces: BTreeMap<u64, String>,
}

/// One delta stream.
pub(super) type DeltaStream = StreamCore<DeltaDiscoveryResponse, Subscription>;

impl AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    const DELTA: bool = true;

    fn node_of(req: &DeltaDiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    async fn on_request(&mut self, req: DeltaDiscoveryRequest, stream: u64) -> bool {
        let Some(type_url) = TypeUrl::parse(&req.type_url) else {
            tracing::warn!(node = %self.node, type_url = %req.type_url, "request for an unknown type ignored");
            return true;
        };
        let first = !self.types.contains_key(&type_url);
        let sub = self.types.entry(type_url).or_default();
        if let Ok(nonce) = req.response_nonce.parse::<u64>()
            && let Some(version) = sub.nonces.remove(&nonce)
        {
            self.registry.answer(
                stream,
                &self.node,
                &req.type_url,
                &req.response_nonce,
                version,
                req.error_detail.as_ref().map(|e| e.message.as_str()),
                true,
            );
        }
        let wildcard_ok = EncodedSnapshot::wildcard_allowed(type_url);
        if first {
            // A7.6: what a reconnecting client already has.
            sub.known = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            // Legacy wildcard: a first request naming nothing (A7.2).
            sub.wildcard = wildcard_ok && req.resource_names_subscribe.is_empty();
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = wildcard_ok;
            } else {
                sub.names.insert(name.clone());
                // A re-subscription asks for the resource again.
                if !first {
                    sub.known.remove(name);
                }
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(name);
                sub.known.remove(name);
            }
        }
        self.respond(type_url).await
    }

    async fn push_all(&mut self) -> bool {
        for t in PUSH_ORDER {
            if self.types.contains_key(&t) && !self.respond(t).await {
                return false;
            }
        }
        true
    }
}

impl DeltaStream {
    /// Sends what changed for `type_url` since what the client has, if
    /// anything; false when the client is gone.
    async fn respond(&mut self, type_url: TypeUrl) -> bool {
        let snapshot = Arc::clone(&self.snapshots.borrow());
        let Some(sub) = self.types.get_mut(&type_url) else {
            return true;
        };
        let mut wanted: BTreeMap<&str, Option<&EncodedResource>> = BTreeMap::new();
        if sub.wildcard
            && let Some(all) = snapshot.of(type_url)
        {
            wanted.extend(all.iter().map(|(k, v)| (k.as_str(), Some(v))));
        }
        for name in &sub.names {
            wanted.insert(name.as_str(), snapshot.get(type_url, name));
        }
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for (name, r) in &wanted {
            match r {
                Some(r) => {
                    if sub.known.get(*name) != Some(&Some(r.version.clone())) {
                        resources.push(Resource {
                            name: (*name).to_owned(),
                            version: r.version.clone(),
                            resource: Some(r.any.clone()),
                            ..Resource::default()
                        });
                    }
                }
                // Subscribed by name and absent: say so once (A7.7).
                None => {
                    if sub.known.get(*name) != Some(&None) {
                        removed.push((*name).to_owned());
                    }
                }
            }
        }
        // What the client has that is no longer wanted or no longer exists.
        for (name, v) in &sub.known {
            if v.is_some() && !wanted.contains_key(name.as_str()) {
                removed.push(name.clone());
            }
        }
        if resources.is_empty() && removed.is_empty() {
            return true;
        }
        for r in &resources {
            sub.known.insert(r.name.clone(), Some(r.version.clone()));
        }
        for name in &removed {
            if sub.names.contains(name) {
                sub.known.insert(name.clone(), None);
            } else {
                sub.known.remove(name);
            }
        }
        self.nonce += 1;
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.version.to_string(),
            resources,
            type_url: type_url.as_str().to_owned(),
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            ..DeltaDiscoveryResponse::default()
        };
        // Unanswered nonces are bounded by the responses in flight; keep a
        // few in case a client ACKs late.
        if sub.nonces.len() >= 16 {
            sub.nonces.pop_first();
        }
        sub.nonces
            .insert(self.nonce, response.system_version_info.clone());
        tracing::debug!(
            node = %self.node, type_url = %response.type_url, version = %response.system_version_info,
            nonce = %response.nonce, resources = response.resources.len(),
            removed = response.removed_resources.len(), "delta response"
        );
        self.tx.send(Ok(response)).await.is_ok()
    }
}
