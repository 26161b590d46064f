//! One State-of-the-World ADS stream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{AdsStream, PUSH_ORDER, StreamCore};
use crate::TypeUrl;
use crate::encode::EncodedSnapshot;

/// What the client asked for, per type.
#[derive(Debug, Default)]
pub(super) struct Subscription {
    /// Every resource of the type (LDS/CDS only).
    wildcard: bool,
    /// Names asked for explicitly.
    names: BTreeSet<String>,
    /// Whether this stream ever named a resource of the type: from then on
    /// an empty list unsubscribes instead of meaning wildcard (A7.2).
    ever_named: bool,
    /// The nonce of the latest response; requests carrying another
    /// (non-empty) nonce are stale (A7.8).
    nonce: String,
    /// The content of the latest response: name → resource version.
    sent: Option<BTreeMap<String, String>>,
    /// The `version_info` of the latest response.
    version: String,
}

/// One State-of-the-World stream.
pub(super) type SotwStream = StreamCore<DiscoveryResponse, Subscription>;

impl AdsStream for SotwStream {
    type Request = DiscoveryRequest;
    const DELTA: bool = false;

    fn node_of(req: &DiscoveryRequest) -> Option<&str> {
        req.node.as_ref().map(|n| n.id.as_str())
    }

    /// Handles one request; false when the client is gone.
    async fn on_request(&mut self, req: DiscoveryRequest, stream: u64) -> bool {
        let Some(type_url) = TypeUrl::parse(&req.type_url) else {
            tracing::warn!(node = %self.node, type_url = %req.type_url, "request for an unknown type ignored");
            return true;
        };
        let sub = self.types.entry(type_url).or_default();
        if !req.response_nonce.is_empty() && req.response_nonce != sub.nonce {
            tracing::debug!(
                node = %self.node, type_url = %req.type_url, nonce = %req.response_nonce,
                "stale request ignored"
            );
            return true;
        }
        if !req.response_nonce.is_empty() {
            self.registry.answer(
                stream,
                &self.node,
                &req.type_url,
                &req.response_nonce,
                req.version_info.clone(),
                req.error_detail.as_ref().map(|e| e.message.as_str()),
                false,
            );
        }
        let wildcard_ok = EncodedSnapshot::wildcard_allowed(type_url);
        let star = req.resource_names.iter().any(|n| n == "*");
        sub.names = req
            .resource_names
            .iter()
            .filter(|n| *n != "*")
            .cloned()
            .collect();
        if !sub.names.is_empty() {
            sub.ever_named = true;
        }
        sub.wildcard = wildcard_ok && (star || (req.resource_names.is_empty() && !sub.ever_named));
        // The first request of a type (empty nonce) always gets an answer
        // for LDS/CDS, even an empty one: it is the full set.
        let initial = req.response_nonce.is_empty();
        self.respond(type_url, initial).await
    }

    async fn push_all(&mut self) -> bool {
        for t in PUSH_ORDER {
            if self.types.contains_key(&t) && !self.respond(t, false).await {
                return false;
            }
        }
        true
    }
}

impl SotwStream {
    /// Sends the current content of `type_url` if it differs from what the
    /// client has (or `force`); false when the client is gone.
    async fn respond(&mut self, type_url: TypeUrl, force: bool) -> bool {
        let snapshot = Arc::clone(&self.snapshots.borrow());
        let Some(sub) = self.types.get_mut(&type_url) else {
            return true;
        };
        let mut content: BTreeMap<&str, &crate::encode::EncodedResource> = BTreeMap::new();
        if sub.wildcard
            && let Some(all) = snapshot.of(type_url)
        {
            content.extend(all.iter().map(|(k, v)| (k.as_str(), v)));
        }
        for name in &sub.names {
            if let Some(r) = snapshot.get(type_url, name) {
                content.insert(name.as_str(), r);
            }
        }
        let versions: BTreeMap<String, String> = content
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.version.clone()))
            .collect();
        let full_set = EncodedSnapshot::wildcard_allowed(type_url);
        let changed = sub.sent.as_ref() != Some(&versions);
        let send = if full_set {
            force || changed
        } else {
            !content.is_empty() && (force || changed)
        };
        if !send {
            return true;
        }
        self.nonce += 1;
        let response = DiscoveryResponse {
            version_info: snapshot.version.to_string(),
            resources: content.values().map(|r| r.any.clone()).collect(),
            type_url: type_url.as_str().to_owned(),
            nonce: self.nonce.to_string(),
            ..DiscoveryResponse::default()
        };
        sub.nonce = response.nonce.clone();
        sub.version = response.version_info.clone();
        sub.sent = Some(versions);
        tracing::debug!(
            node = %self.node, type_url = %response.type_url, version = %response.version_info,
            nonce = %response.nonce, resources = response.resources.len(), "sotw response"
        );
        self.tx.send(Ok(response)).await.is_ok()
    }
}
