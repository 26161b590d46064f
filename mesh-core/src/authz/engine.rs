//! The evaluator: a workload's policies against one request.

use std::net::IpAddr;

use http::HeaderMap;
use serde_json::Value;

use crate::model::security::{
    AuthorizationPolicy, AuthzAction, AuthzRule, Condition, ConditionKey, ConditionValues, OneOf,
    Operation, PolicyScope, SecurityPolicies, Source, StrPattern, VerifiedJwt, Workload,
};

/// What authorization reads of one request, borrowed from it and its
/// connection.
#[derive(Clone, Copy, Debug)]
pub struct AuthzRequest<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The `:authority` (HTTP/2) or `Host` (HTTP/1.1), with its port if
    /// the client sent one.
    pub host: Option<&'a str>,
    /// The path, normalized (see [`normalize_path`](super::normalize_path)),
    /// without query or fragment.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The connection's peer address (`source.ip`, `ipBlocks`).
    pub source_ip: Option<IpAddr>,
    /// The verified peer SPIFFE ID without `spiffe://`
    /// (`cluster.local/ns/default/sa/web`): Istio's principal. `None`
    /// without mTLS.
    pub source_principal: Option<&'a str>,
    /// The namespace of an Istio-form principal (`source.namespace`).
    pub source_namespace: Option<&'a str>,
    /// The service account of an Istio-form principal.
    pub source_account: Option<&'a str>,
    /// The address the connection was accepted on (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
    /// The port the connection was accepted on (`ports`,
    /// `destination.port`).
    pub destination_port: Option<u16>,
    /// The JWT `RequestAuthentication` verified, if any.
    pub jwt: Option<&'a VerifiedJwt>,
}

impl<'a> AuthzRequest<'a> {
    /// A request with a method, path and headers and nothing else known:
    /// no host, no peer, no JWT.
    pub fn new(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            host: None,
            path,
            headers,
            source_ip: None,
            source_principal: None,
            source_namespace: None,
            source_account: None,
            destination_ip: None,
            destination_port: None,
            jwt: None,
        }
    }

    /// Sets the verified peer principal (a SPIFFE ID with or without
    /// `spiffe://`), and the namespace and account when it has Istio's
    /// `<trust domain>/ns/<namespace>/sa/<account>` form.
    pub fn with_principal(mut self, principal: &'a str) -> Self {
        let principal = principal.strip_prefix("spiffe://").unwrap_or(principal);
        self.source_principal = Some(principal);
        let parts = istio_namespace_and_account(principal);
        self.source_namespace = parts.map(|p| p.0);
        self.source_account = parts.map(|p| p.1);
        self
    }
}

/// The namespace and service account of an Istio principal
/// `<trust domain>/ns/<namespace>/sa/<account>` (SPIFFE ID without
/// `spiffe://`).
pub fn istio_namespace_and_account(principal: &str) -> Option<(&str, &str)> {
    let mut parts = principal.split('/');
    let _trust_domain = parts.next()?;
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !ns.is_empty() && !sa.is_empty() => {
            Some((ns, sa))
        }
        _ => None,
    }
}

/// The outcome of authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'p> {
    /// The request may proceed.
    Allow,
    /// The request is denied.
    Deny {
        /// The DENY policy that matched; `None` when the workload has
        /// ALLOW policies and none matched. For logs only: never sent to
        /// the client.
        policy: Option<&'p PolicyScope>,
    },
}

impl Verdict<'_> {
    /// Whether the request may proceed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// What [`PolicySet::evaluate`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'p> {
    /// The enforced verdict.
    pub verdict: Verdict<'p>,
    /// The first AUDIT policy that matched, if any.
    pub audit: Option<&'p PolicyScope>,
    /// The verdict with the dry-run policies enforced too; `None` when
    /// the workload has no dry-run policy.
    pub dry_run: Option<Verdict<'p>>,
}

/// The authorization policies of one workload, ready to evaluate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    deny: Vec<AuthorizationPolicy>,
    allow: Vec<AuthorizationPolicy>,
    audit: Vec<AuthorizationPolicy>,
    dry_deny: Vec<AuthorizationPolicy>,
    dry_allow: Vec<AuthorizationPolicy>,
}

impl PolicySet {
    /// A set of these policies, whatever their scope (code config).
    /// Dry-run AUDIT policies are dropped: auditing never enforces, and a
    /// dry-run one does not even mark.
    pub fn new(policies: impl IntoIterator<Item = AuthorizationPolicy>) -> Self {
        let mut set = Self::default();
        for p in policies {
            let list = match (p.action, p.dry_run) {
                (AuthzAction::Deny, false) => &mut set.deny,
                (AuthzAction::Allow, false) => &mut set.allow,
                (AuthzAction::Audit, false) => &mut set.audit,
                (AuthzAction::Deny, true) => &mut set.dry_deny,
                (AuthzAction::Allow, true) => &mut set.dry_allow,
                (AuthzAction::Audit, true) => continue,
            };
            list.push(p);
        }
        set
    }

    /// The policies of `policies` whose scope selects `workload` (its
    /// namespace or the root namespace, and a matching selector).
    pub fn for_workload(policies: &SecurityPolicies, workload: &Workload) -> Self {
        Self::new(
            policies
                .authorization_policies
                .iter()
                .filter(|p| p.scope.applies_to(workload))
                .cloned(),
        )
    }

    /// Whether there is no policy: every request is allowed.
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && self.dry_deny.is_empty()
            && self.dry_allow.is_empty()
    }

    /// Evaluates `req` in Istio's order (see the [module docs](super)).
    pub fn evaluate<'p>(&'p self, req: &AuthzRequest<'_>) -> Decision<'p> {
        let denied_by = first_match(&self.deny, req);
        let verdict = match denied_by {
            Some(p) => Verdict::Deny { policy: Some(p) },
            None if self.allow.is_empty() || first_match(&self.allow, req).is_some() => {
                Verdict::Allow
            }
            None => Verdict::Deny { policy: None },
        };
        let audit = first_match(&self.audit, req);
        let dry_run = (!self.dry_deny.is_empty() || !self.dry_allow.is_empty()).then(|| {
            match denied_by.or_else(|| first_match(&self.dry_deny, req)) {
                Some(p) => Verdict::Deny { policy: Some(p) },
                None if self.allow.is_empty() && self.dry_allow.is_empty() => Verdict::Allow,
                None if first_match(&self.allow, req).is_some()
                    || first_match(&self.dry_allow, req).is_some() =>
                {
                    Verdict::Allow
                }
                None => Verdict::Deny { policy: None },
            }
        });
        Decision {
            verdict,
            audit,
            dry_run,
        }
    }
}

fn first_match<'p>(
    policies: &'p [AuthorizationPolicy],
    req: &AuthzRequest<'_>,
) -> Option<&'p PolicyScope> {
    policies
        .iter()
        .find(|p| p.rules.iter().any(|r| rule_matches(r, req)))
        .map(|p| &p.scope)
}

fn rule_matches(rule: &AuthzRule, req: &AuthzRequest<'_>) -> bool {
    (rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, req)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, req)))
        && rule.when.iter().all(|c| condition_matches(c, req))
}

#[inline]
fn strings(field: &OneOf<StrPattern>, value: Option<&str>) -> bool {
    field.check(|p| value.is_some_and(|v| p.matches(v)))
}

#[inline]
fn ips(field: &OneOf<crate::model::security::IpBlock>, value: Option<IpAddr>) -> bool {
    field.check(|b| value.is_some_and(|ip| b.contains(ip)))
}

#[inline]
fn ports(field: &OneOf<u16>, value: Option<u16>) -> bool {
    field.check(|p| value == Some(*p))
}

fn source_matches(s: &Source, req: &AuthzRequest<'_>) -> bool {
    strings(&s.principals, req.source_principal)
        && strings(&s.request_principals, req.jwt.map(|j| j.principal.as_str()))
        && strings(&s.namespaces, req.source_namespace)
        && s.service_accounts.check(|sa| {
            req.source_namespace == Some(&*sa.namespace) && req.source_account == Some(&*sa.name)
        })
        && ips(&s.ip_blocks, req.source_ip)
        && ips(&s.remote_ip_blocks, req.source_ip)
}

fn operation_matches(o: &Operation, req: &AuthzRequest<'_>) -> bool {
    o.hosts
        .check(|p| req.host.is_some_and(|h| p.matches_ignore_case(h)))
        && ports(&o.ports, req.destination_port)
        && strings(&o.methods, Some(req.method))
        && strings(&o.paths, Some(req.path))
}

fn condition_matches(c: &Condition, req: &AuthzRequest<'_>) -> bool {
    match (&c.key, &c.values) {
        (ConditionKey::SourceIp | ConditionKey::RemoteIp, ConditionValues::Ips(v)) => {
            ips(v, req.source_ip)
        }
        (ConditionKey::DestinationIp, ConditionValues::Ips(v)) => ips(v, req.destination_ip),
        (ConditionKey::DestinationPort, ConditionValues::Ports(v)) => {
            ports(v, req.destination_port)
        }
        (key, ConditionValues::Strings(v)) => string_condition(key, v, req),
        // The translation pairs every key with its value type; a
        // mismatched hand-built condition matches nothing.
        _ => false,
    }
}

fn string_condition(key: &ConditionKey, v: &OneOf<StrPattern>, req: &AuthzRequest<'_>) -> bool {
    match key {
        ConditionKey::RequestHeader(name) => {
            let mut values = req.headers.get_all(name).iter();
            match (values.next(), values.next()) {
                (None, _) => v.check(|_| false),
                (Some(one), None) => {
                    let value = one.as_bytes().trim_ascii();
                    v.check(|p| p.matches_bytes(value, false))
                }
                // Repeated headers are matched joined with `,`, as Envoy
                // does (gRFC A41).
                (Some(_), Some(_)) => {
                    let mut joined = Vec::new();
                    for (i, value) in req.headers.get_all(name).iter().enumerate() {
                        if i > 0 {
                            joined.push(b',');
                        }
                        joined.extend_from_slice(value.as_bytes().trim_ascii());
                    }
                    v.check(|p| p.matches_bytes(&joined, false))
                }
            }
        }
        ConditionKey::SourceNamespace => strings(v, req.source_namespace),
        ConditionKey::SourcePrincipal => strings(v, req.source_principal),
        ConditionKey::AuthPrincipal => strings(v, req.jwt.map(|j| j.principal.as_str())),
        ConditionKey::AuthPresenter => strings(v, req.jwt.and_then(|j| j.presenter.as_deref())),
        ConditionKey::AuthAudiences => v.check(|p| {
            req.jwt
                .is_some_and(|j| j.audiences.iter().any(|a| p.matches(a)))
        }),
        ConditionKey::AuthClaim(path) => {
            let claim = req.jwt.and_then(|j| {
                let (first, rest) = path.split_first()?;
                rest.iter()
                    .try_fold(j.claims.get(&**first)?, |v, k| v.get(&**k))
            });
            v.check(|p| claim.is_some_and(|c| claim_matches(c, p)))
        }
        // Address and port keys carry typed values (handled above).
        ConditionKey::SourceIp
        | ConditionKey::RemoteIp
        | ConditionKey::DestinationIp
        | ConditionKey::DestinationPort => false,
    }
}

/// A string claim matches the pattern; a list claim matches when one of
/// its string entries does (Istio's list-valued claims). Numbers, booleans
/// and objects match nothing.
fn claim_matches(claim: &Value, p: &StrPattern) -> bool {
    match claim {
        Value::String(s) => p.matches(s),
        Value::Array(items) => items
            .iter()
            .any(|i| matches!(i, Value::String(s) if p.matches(s))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pattern(s: &str) -> StrPattern {
        StrPattern::parse(s).unwrap()
    }

    fn policy(action: AuthzAction, rules: Vec<AuthzRule>) -> AuthorizationPolicy {
        AuthorizationPolicy::new(PolicyScope::new("p", "default"))
            .with_action(action)
            .with_rules(rules)
    }

    fn path_rule(path: &str) -> AuthzRule {
        AuthzRule {
            to: Arc::from([Operation {
                paths: OneOf::new([pattern(path)], []),
                ..Operation::default()
            }]),
            ..AuthzRule::default()
        }
    }

    #[test]
    fn no_policy_allows_and_empty_allow_denies() {
        let headers = HeaderMap::new();
        let req = AuthzRequest::new("GET", "/", &headers);
        assert!(PolicySet::default().evaluate(&req).verdict.is_allow());
        let deny_all = PolicySet::new([policy(AuthzAction::Allow, vec![])]);
        assert_eq!(
            deny_all.evaluate(&req).verdict,
            Verdict::Deny { policy: None }
        );
        let allow_all = PolicySet::new([policy(AuthzAction::Allow, vec![AuthzRule::default()])]);
        assert!(allow_all.evaluate(&req).verdict.is_allow());
    }

    #[test]
    fn deny_wins_and_audit_only_marks() {
        let headers = HeaderMap::new();
        let req = AuthzRequest::new("GET", "/admin", &headers);
        let set = PolicySet::new([
            policy(AuthzAction::Allow, vec![AuthzRule::default()]),
            policy(AuthzAction::Deny, vec![path_rule("/admin*")]),
            policy(AuthzAction::Audit, vec![path_rule("*")]),
        ]);
        let d = set.evaluate(&req);
        assert!(matches!(d.verdict, Verdict::Deny { policy: Some(_) }));
        assert!(d.audit.is_some());
        assert!(d.dry_run.is_none());
    }

    #[test]
    fn dry_run_policies_report_without_enforcing() {
        let headers = HeaderMap::new();
        let req = AuthzRequest::new("GET", "/admin", &headers);
        let set = PolicySet::new([
            policy(AuthzAction::Deny, vec![path_rule("/admin")]).with_dry_run(true)
        ]);
        let d = set.evaluate(&req);
        assert!(d.verdict.is_allow());
        assert!(matches!(d.dry_run, Some(Verdict::Deny { policy: Some(_) })));
    }

    #[test]
    fn principals_namespaces_and_claims() {
        let headers = HeaderMap::new();
        let jwt = VerifiedJwt {
            principal: "https://issuer/alice".into(),
            issuer: "https://issuer".into(),
            subject: "alice".into(),
            audiences: vec!["api".into()],
            presenter: None,
            claims: serde_json::json!({"groups": ["dev", "ops"], "org": {"team": "x"}})
                .as_object()
                .unwrap()
                .clone(),
        };
        let mut req = AuthzRequest::new("GET", "/", &headers)
            .with_principal("spiffe://cluster.local/ns/shop/sa/web");
        req.jwt = Some(&jwt);
        assert_eq!(req.source_namespace, Some("shop"));
        assert_eq!(req.source_account, Some("web"));
        let claim = |path: &[&str], value: &str| Condition {
            key: ConditionKey::AuthClaim(path.iter().map(|s| Arc::from(*s)).collect()),
            values: ConditionValues::Strings(OneOf::new([pattern(value)], [])),
        };
        let rule = |c: Condition| AuthzRule {
            when: Arc::from([c]),
            ..AuthzRule::default()
        };
        let allows = |c| {
            PolicySet::new([policy(AuthzAction::Allow, vec![rule(c)])])
                .evaluate(&req)
                .verdict
                .is_allow()
        };
        assert!(allows(claim(&["groups"], "ops")));
        assert!(!allows(claim(&["groups"], "admin")));
        assert!(allows(claim(&["org", "team"], "x")));
        assert!(!allows(claim(&["org", "missing"], "x")));
    }
}
