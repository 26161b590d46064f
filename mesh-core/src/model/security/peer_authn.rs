//! A `PeerAuthentication` (security.istio.io/v1) and the transport mode it
//! gives a workload's port.
//!
//! Semantics are Istio's (istio.io, "PeerAuthentication" reference and
//! "Authentication policy" concepts; istiod's
//! `pilot/pkg/security/authn` `ComposePeerAuthentication`):
//!
//! - Three levels: **mesh-wide** (in the root namespace, no selector),
//!   **namespace-wide** (in the workload's namespace, no selector) and
//!   **workload-specific** (in the workload's namespace, with a selector
//!   that matches the workload's labels). The most specific level that has
//!   a policy decides. A selector with no labels counts as no selector. A
//!   policy with a selector in the root namespace is ignored, as istiod
//!   ignores it.
//! - `UNSET` inherits from the next level up; a `portLevelMtls` entry that
//!   is `UNSET` inherits the workload level's (already resolved) mode.
//! - With no policy at all (or only `UNSET` ones) the mode is
//!   `PERMISSIVE`.
//! - Two policies at one level: Istio takes the oldest by creation time. A
//!   file has no creation time, so this project takes the **first in
//!   snapshot order** (document order within a file; sources in the
//!   store's order) and the file source warns about the conflict where it
//!   can see it (two namespace-wide or mesh-wide policies in one
//!   namespace, or two policies with the same selector).

use std::sync::Arc;

use super::{PolicyScope, SecurityPolicies, Workload};

/// `PeerAuthentication.mtls.mode` as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MtlsMode {
    /// `UNSET`: inherit from the parent level (the default).
    #[default]
    Unset,
    /// `DISABLE`: plaintext only.
    Disable,
    /// `PERMISSIVE`: mutual TLS and plaintext.
    Permissive,
    /// `STRICT`: mutual TLS only.
    Strict,
}

impl MtlsMode {
    /// The mode named as in Istio's API (`UNSET`, `DISABLE`, `PERMISSIVE`,
    /// `STRICT`; case-sensitive, as protobuf enum names are).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "UNSET" => Self::Unset,
            "DISABLE" => Self::Disable,
            "PERMISSIVE" => Self::Permissive,
            "STRICT" => Self::Strict,
            _ => return None,
        })
    }

    fn resolved(self) -> Option<EffectiveMtlsMode> {
        match self {
            Self::Unset => None,
            Self::Disable => Some(EffectiveMtlsMode::Disable),
            Self::Permissive => Some(EffectiveMtlsMode::Permissive),
            Self::Strict => Some(EffectiveMtlsMode::Strict),
        }
    }
}

/// The transport mode a port ends up with after precedence and
/// inheritance: never `UNSET`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EffectiveMtlsMode {
    /// Plaintext only.
    Disable,
    /// Mutual TLS and plaintext on one port.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

/// A `PeerAuthentication` (security.istio.io/v1).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerAuthentication {
    /// Where the policy applies.
    pub scope: PolicyScope,
    /// `mtls.mode` (`UNSET` when `mtls` is absent).
    pub mode: MtlsMode,
    /// `portLevelMtls`: the mode of single ports of the selected workload,
    /// sorted by port, each port once. Only a policy with a selector may
    /// have entries (Istio's validation).
    pub port_level: Arc<[(u16, MtlsMode)]>,
}

impl PeerAuthentication {
    /// A policy with `scope` and `mode` and no port-level entries.
    pub fn new(scope: PolicyScope, mode: MtlsMode) -> Self {
        Self {
            scope,
            mode,
            port_level: Arc::from([]),
        }
    }

    /// Sets the port-level modes (sorted here; a later entry for the same
    /// port replaces an earlier one).
    pub fn with_port_level(mut self, ports: impl IntoIterator<Item = (u16, MtlsMode)>) -> Self {
        let mut ports: Vec<(u16, MtlsMode)> = ports.into_iter().collect();
        ports.reverse();
        ports.sort_by_key(|(p, _)| *p);
        ports.dedup_by_key(|(p, _)| *p);
        self.port_level = ports.into();
        self
    }

    /// The level of this policy for `workload`, or `None` when it does not
    /// apply to it (see the module docs).
    pub fn level_for(&self, workload: &Workload) -> Option<PeerAuthnLevel> {
        let scope = &self.scope;
        let selector = scope.selector.as_ref().filter(|s| !s.is_empty());
        match selector {
            None if scope.namespace == workload.root_namespace => Some(PeerAuthnLevel::Mesh),
            None if scope.namespace == workload.namespace => Some(PeerAuthnLevel::Namespace),
            Some(labels)
                if scope.namespace == workload.namespace
                    && scope.namespace != workload.root_namespace
                    && workload.labels.matches(labels) =>
            {
                Some(PeerAuthnLevel::Workload)
            }
            _ => None,
        }
    }

    fn port_mode(&self, port: u16) -> Option<MtlsMode> {
        self.port_level
            .binary_search_by_key(&port, |(p, _)| *p)
            .ok()
            .map(|i| self.port_level[i].1)
    }
}

/// The level a `PeerAuthentication` applies at, least specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerAuthnLevel {
    /// Root namespace, no selector.
    Mesh,
    /// The workload's namespace, no selector.
    Namespace,
    /// The workload's namespace, a selector matching the workload.
    Workload,
}

/// The effective `PeerAuthentication` mode of `workload` on `port` (the
/// port the server listens on), from every policy in `policies`: see the
/// module docs for precedence, inheritance and the default.
///
/// Pure and allocation-free: a scan over the policies, meant to run once
/// per accepted connection.
pub fn effective_mtls_mode(
    policies: &SecurityPolicies,
    workload: &Workload,
    port: u16,
) -> EffectiveMtlsMode {
    // The first policy of each level wins (see the module docs).
    let mut chosen: [Option<&PeerAuthentication>; 3] = [None; 3];
    for policy in &policies.peer_authentications {
        if let Some(level) = policy.level_for(workload) {
            chosen[level as usize].get_or_insert(policy);
        }
    }
    let [mesh, namespace, workload_level] = chosen;
    let mut mode = EffectiveMtlsMode::Permissive;
    for policy in [mesh, namespace, workload_level].into_iter().flatten() {
        if let Some(m) = policy.mode.resolved() {
            mode = m;
        }
    }
    if let Some(m) = workload_level
        .and_then(|p| p.port_mode(port))
        .and_then(MtlsMode::resolved)
    {
        mode = m;
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    const ROOT: &str = "istio-system";

    fn workload() -> Workload {
        Workload::new("shop", Labels::new([("app", "cart"), ("version", "v1")]))
    }

    fn mesh(mode: MtlsMode) -> PeerAuthentication {
        PeerAuthentication::new(PolicyScope::new("default", ROOT), mode)
    }

    fn namespace(mode: MtlsMode) -> PeerAuthentication {
        PeerAuthentication::new(PolicyScope::new("default", "shop"), mode)
    }

    fn selecting(labels: &[(&str, &str)], mode: MtlsMode) -> PeerAuthentication {
        let scope = PolicyScope::new("cart", "shop").with_selector(Labels::new(labels.to_vec()));
        PeerAuthentication::new(scope, mode)
    }

    fn cart(mode: MtlsMode) -> PeerAuthentication {
        selecting(&[("app", "cart")], mode)
    }

    fn mode_of(policies: Vec<PeerAuthentication>, port: u16) -> EffectiveMtlsMode {
        let policies = SecurityPolicies {
            peer_authentications: policies,
            ..SecurityPolicies::default()
        };
        effective_mtls_mode(&policies, &workload(), port)
    }

    use EffectiveMtlsMode as E;
    use MtlsMode::*;

    #[test]
    fn no_policy_is_permissive() {
        assert_eq!(mode_of(vec![], 8080), E::Permissive);
    }

    #[test]
    fn unset_everywhere_is_permissive() {
        assert_eq!(
            mode_of(vec![mesh(Unset), namespace(Unset), cart(Unset)], 8080),
            E::Permissive
        );
    }

    #[test]
    fn mesh_wide_applies_to_every_namespace() {
        for m in [
            (Strict, E::Strict),
            (Disable, E::Disable),
            (Permissive, E::Permissive),
        ] {
            assert_eq!(mode_of(vec![mesh(m.0)], 8080), m.1);
        }
    }

    #[test]
    fn namespace_wide_overrides_mesh_wide() {
        assert_eq!(
            mode_of(vec![mesh(Strict), namespace(Disable)], 1),
            E::Disable
        );
        assert_eq!(
            mode_of(vec![namespace(Strict), mesh(Disable)], 1),
            E::Strict
        );
    }

    #[test]
    fn namespace_unset_inherits_mesh() {
        assert_eq!(mode_of(vec![mesh(Strict), namespace(Unset)], 1), E::Strict);
    }

    #[test]
    fn workload_overrides_namespace_and_mesh() {
        assert_eq!(
            mode_of(vec![mesh(Disable), namespace(Disable), cart(Strict)], 1),
            E::Strict
        );
        assert_eq!(
            mode_of(vec![mesh(Strict), namespace(Strict), cart(Permissive)], 1),
            E::Permissive
        );
    }

    #[test]
    fn workload_unset_inherits_namespace_then_mesh() {
        assert_eq!(mode_of(vec![namespace(Strict), cart(Unset)], 1), E::Strict);
        assert_eq!(mode_of(vec![mesh(Disable), cart(Unset)], 1), E::Disable);
        assert_eq!(
            mode_of(vec![mesh(Disable), namespace(Unset), cart(Unset)], 1),
            E::Disable
        );
    }

    #[test]
    fn port_level_overrides_the_workload_mode_on_that_port_only() {
        let p = cart(Strict).with_port_level([(8080, Disable), (9090, Permissive)]);
        assert_eq!(mode_of(vec![p.clone()], 8080), E::Disable);
        assert_eq!(mode_of(vec![p.clone()], 9090), E::Permissive);
        assert_eq!(mode_of(vec![p], 7070), E::Strict);
    }

    #[test]
    fn port_level_unset_inherits_the_resolved_workload_mode() {
        let p = cart(Unset).with_port_level([(8080, Unset)]);
        assert_eq!(mode_of(vec![namespace(Strict), p.clone()], 8080), E::Strict);
        assert_eq!(mode_of(vec![p], 8080), E::Permissive);
    }

    #[test]
    fn port_level_of_a_workload_policy_that_does_not_select_is_ignored() {
        let web = selecting(&[("app", "web")], Disable).with_port_level([(8080, Disable)]);
        assert_eq!(mode_of(vec![namespace(Strict), web], 8080), E::Strict);
    }

    #[test]
    fn other_namespaces_do_not_apply() {
        let other = PeerAuthentication::new(PolicyScope::new("default", "other"), Disable);
        assert_eq!(mode_of(vec![mesh(Strict), other], 1), E::Strict);
    }

    #[test]
    fn a_selector_in_the_root_namespace_is_ignored() {
        let scope = PolicyScope::new("cart", ROOT).with_selector(Labels::new([("app", "cart")]));
        let p = PeerAuthentication::new(scope, Disable);
        assert_eq!(mode_of(vec![mesh(Strict), p], 1), E::Strict);
    }

    #[test]
    fn an_empty_selector_is_namespace_wide() {
        let p = selecting(&[], Strict);
        assert_eq!(p.level_for(&workload()), Some(PeerAuthnLevel::Namespace));
        assert_eq!(mode_of(vec![p], 1), E::Strict);
    }

    #[test]
    fn the_first_policy_of_a_level_wins() {
        assert_eq!(
            mode_of(vec![namespace(Strict), namespace(Disable)], 1),
            E::Strict
        );
        assert_eq!(mode_of(vec![mesh(Disable), mesh(Strict)], 1), E::Disable);
        let version = selecting(&[("version", "v1")], Disable);
        assert_eq!(mode_of(vec![cart(Strict), version.clone()], 1), E::Strict);
        assert_eq!(mode_of(vec![version, cart(Strict)], 1), E::Disable);
    }

    #[test]
    fn the_root_namespace_workload_is_governed_by_mesh_wide_policies() {
        let w = Workload::new(ROOT, Labels::new([("app", "gw")]));
        let policies = SecurityPolicies {
            peer_authentications: vec![mesh(Strict)],
            ..SecurityPolicies::default()
        };
        assert_eq!(effective_mtls_mode(&policies, &w, 1), E::Strict);
    }

    #[test]
    fn mode_names_are_istios() {
        assert_eq!(MtlsMode::from_name("STRICT"), Some(Strict));
        assert_eq!(MtlsMode::from_name("UNSET"), Some(Unset));
        assert_eq!(MtlsMode::from_name("strict"), None);
    }

    #[test]
    fn later_port_entries_replace_earlier_ones() {
        let p = cart(Strict).with_port_level([(80, Disable), (80, Permissive), (1, Strict)]);
        assert_eq!(&*p.port_level, &[(1, Strict), (80, Permissive)]);
    }
}
