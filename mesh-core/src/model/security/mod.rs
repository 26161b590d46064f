//! Security policies of the server side, as Istio's security API defines
//! them: `PeerAuthentication` (transport mode), `RequestAuthentication`
//! (JWT rules) and `AuthorizationPolicy` (who may call what).
//!
//! Every policy has a [`PolicyScope`]: the namespace it lives in and an
//! optional workload selector. A process serving requests declares its own
//! [`Workload`] (namespace and labels) and applies the policies whose
//! scope selects it, with Istio's rule that a policy in the root namespace
//! (`istio-system` by default, `meshConfig.rootNamespace`) applies mesh
//! wide (istio.io, "Authorization Policy", "Peer Authentication").

mod authz;
mod peer_authn;
mod request_authn;

use std::sync::Arc;

pub use authz::{
    AuthorizationPolicy, AuthzAction, AuthzRule, Condition, ConditionKey, ConditionValues,
    InvalidPattern, IpBlock, OneOf, Operation, ServiceAccount, Source, StrPattern,
};
pub use peer_authn::{
    EffectiveMtlsMode, MtlsMode, PeerAuthentication, PeerAuthnLevel, effective_mtls_mode,
};
pub use request_authn::{
    ClaimToHeader, DEFAULT_JWKS_FETCH_TIMEOUT, EcCurve, Jwk, JwkKey, JwkSet, JwksSource,
    JwtAlgorithm, JwtHeader, JwtRule, RequestAuthentication,
};

use crate::model::endpoint::Labels;

/// Istio's default root namespace (`meshConfig.rootNamespace`).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The workload a server process runs as: what policy selectors match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// The workload's namespace.
    pub namespace: Arc<str>,
    /// The workload's labels.
    pub labels: Labels,
    /// The namespace whose policies apply mesh wide.
    pub root_namespace: Arc<str>,
}

impl Workload {
    /// A workload in `namespace` with `labels` and Istio's default root
    /// namespace.
    pub fn new(namespace: impl Into<Arc<str>>, labels: Labels) -> Self {
        Self {
            namespace: namespace.into(),
            labels,
            root_namespace: Arc::from(DEFAULT_ROOT_NAMESPACE),
        }
    }

    /// Sets the root namespace.
    pub fn with_root_namespace(mut self, root: impl Into<Arc<str>>) -> Self {
        self.root_namespace = root.into();
        self
    }
}

/// Where a policy applies: its name, namespace and workload selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyScope {
    /// The policy's name (`metadata.name`).
    pub name: Arc<str>,
    /// The policy's namespace (`metadata.namespace`).
    pub namespace: Arc<str>,
    /// `selector.matchLabels`; `None` selects every workload in scope.
    pub selector: Option<Labels>,
}

impl PolicyScope {
    /// A scope with no selector.
    pub fn new(name: impl Into<Arc<str>>, namespace: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            selector: None,
        }
    }

    /// Sets the workload selector.
    pub fn with_selector(mut self, labels: Labels) -> Self {
        self.selector = Some(labels);
        self
    }

    /// Whether the policy applies to `workload`: it lives in the
    /// workload's namespace or in the root namespace, and its selector (if
    /// any) matches the workload's labels.
    pub fn applies_to(&self, workload: &Workload) -> bool {
        let namespace_ok =
            self.namespace == workload.namespace || self.namespace == workload.root_namespace;
        namespace_ok
            && self
                .selector
                .as_ref()
                .is_none_or(|s| workload.labels.matches(s))
    }

    /// Whether the policy is mesh wide for `workload` (root namespace, no
    /// selector), namespace wide (no selector), or workload specific:
    /// Istio's precedence for `PeerAuthentication`, the most specific wins.
    pub fn specificity(&self, workload: &Workload) -> Specificity {
        match (&self.selector, self.namespace == workload.root_namespace) {
            (Some(_), _) => Specificity::Workload,
            (None, false) => Specificity::Namespace,
            (None, true) => Specificity::Mesh,
        }
    }
}

/// How specific a policy's scope is, least specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Specificity {
    /// Root namespace, no selector.
    Mesh,
    /// A namespace, no selector.
    Namespace,
    /// A selector.
    Workload,
}

/// The security policies one source contributes or one snapshot holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecurityPolicies {
    /// `PeerAuthentication` resources.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// `RequestAuthentication` resources.
    pub request_authentications: Vec<RequestAuthentication>,
    /// `AuthorizationPolicy` resources.
    pub authorization_policies: Vec<AuthorizationPolicy>,
}

impl SecurityPolicies {
    /// Whether there are no policies at all.
    pub fn is_empty(&self) -> bool {
        self.peer_authentications.is_empty()
            && self.request_authentications.is_empty()
            && self.authorization_policies.is_empty()
    }

    /// Appends every policy of `other`.
    pub fn extend(&mut self, other: SecurityPolicies) {
        self.peer_authentications.extend(other.peer_authentications);
        self.request_authentications
            .extend(other.request_authentications);
        self.authorization_policies
            .extend(other.authorization_policies);
    }
}

/// A JWT that `RequestAuthentication` verified: what authorization's
/// `requestPrincipals` and `request.auth.*` conditions read. The
/// authentication layer puts it into the request extensions.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedJwt {
    /// `<iss>/<sub>`, Istio's request principal.
    pub principal: String,
    /// The `iss` claim.
    pub issuer: String,
    /// The `sub` claim.
    pub subject: String,
    /// The `aud` claim (a string becomes one entry).
    pub audiences: Vec<String>,
    /// The `azp` claim.
    pub presenter: Option<String>,
    /// Every claim of the payload.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_selects_by_namespace_root_and_labels() {
        let w = Workload::new("shop", Labels::new([("app", "cart")]));
        assert!(PolicyScope::new("p", "shop").applies_to(&w));
        assert!(PolicyScope::new("p", "istio-system").applies_to(&w));
        assert!(!PolicyScope::new("p", "other").applies_to(&w));
        let cart = PolicyScope::new("p", "shop").with_selector(Labels::new([("app", "cart")]));
        let web = PolicyScope::new("p", "shop").with_selector(Labels::new([("app", "web")]));
        assert!(cart.applies_to(&w));
        assert!(!web.applies_to(&w));
        assert_eq!(cart.specificity(&w), Specificity::Workload);
        assert_eq!(
            PolicyScope::new("p", "istio-system").specificity(&w),
            Specificity::Mesh
        );
        assert_eq!(
            PolicyScope::new("p", "shop").specificity(&w),
            Specificity::Namespace
        );
    }
}
