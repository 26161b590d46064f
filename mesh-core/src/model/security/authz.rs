//! An `AuthorizationPolicy` (security.istio.io/v1), compiled for the
//! request path.
//!
//! The shape follows Istio's API (istio.io, "Authorization Policy"
//! reference): a policy has an [`AuthzAction`] and [`AuthzRule`]s; a rule
//! matches when at least one of its `from` sources matches, at least one
//! of its `to` operations matches and every `when` condition matches (an
//! absent list matches everything, so a rule `{}` matches every request).
//! Inside a source or an operation every field that is set must match; a
//! field matches when the request's value matches any of its values, and a
//! `not*` field matches when it matches none of them.
//!
//! Values are compiled once when the config is read: string patterns into
//! [`StrPattern`], CIDRs into [`IpBlock`], ports into integers, condition
//! keys into [`ConditionKey`], so that evaluating a policy allocates
//! nothing (see [`crate::authz`]).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use http::HeaderName;

use super::PolicyScope;

/// An `AuthorizationPolicy` (security.istio.io/v1).
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizationPolicy {
    /// Where the policy applies.
    pub scope: PolicyScope,
    /// What a match does.
    pub action: AuthzAction,
    /// The rules; an empty list matches no request (so `spec: {}`, an
    /// ALLOW policy without rules, denies every request of the workloads
    /// it selects, as Istio documents).
    pub rules: Arc<[AuthzRule]>,
    /// The `istio.io/dry-run: "true"` annotation: evaluated and logged,
    /// never enforced.
    pub dry_run: bool,
}

impl AuthorizationPolicy {
    /// An ALLOW policy without rules (Istio's `spec: {}`: deny all).
    pub fn new(scope: PolicyScope) -> Self {
        Self {
            scope,
            action: AuthzAction::Allow,
            rules: Arc::from([]),
            dry_run: false,
        }
    }

    /// Sets the action.
    pub fn with_action(mut self, action: AuthzAction) -> Self {
        self.action = action;
        self
    }

    /// Sets the rules.
    pub fn with_rules(mut self, rules: impl Into<Arc<[AuthzRule]>>) -> Self {
        self.rules = rules.into();
        self
    }

    /// Marks the policy dry-run.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a matching policy does (Istio `AuthorizationPolicy.Action`).
/// `CUSTOM` (external authorization) is not supported and rejected when
/// the config is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthzAction {
    /// Allow matching requests; when a workload has ALLOW policies, a
    /// request that matches none of them is denied.
    Allow,
    /// Deny matching requests; evaluated before ALLOW.
    Deny,
    /// Mark matching requests for auditing; never changes the decision.
    Audit,
}

impl fmt::Display for AuthzAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
        })
    }
}

/// One rule: `from`, `to` and `when` (Istio `Rule`). Empty lists are
/// unset and match everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthzRule {
    /// Sources; one must match.
    pub from: Arc<[Source]>,
    /// Operations; one must match.
    pub to: Arc<[Operation]>,
    /// Conditions; all must match.
    pub when: Arc<[Condition]>,
}

/// A set of values and a set of excluded values for one request attribute
/// (a field and its `not*` twin): matches when `values` is empty or the
/// attribute matches one of them, and the attribute matches none of
/// `not_values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneOf<T> {
    /// The attribute must match one of these (unset when empty).
    pub values: Arc<[T]>,
    /// The attribute must match none of these.
    pub not_values: Arc<[T]>,
}

impl<T> Default for OneOf<T> {
    fn default() -> Self {
        Self {
            values: Arc::from([]),
            not_values: Arc::from([]),
        }
    }
}

impl<T> OneOf<T> {
    /// `values` and `not_values`.
    pub fn new(values: impl Into<Arc<[T]>>, not_values: impl Into<Arc<[T]>>) -> Self {
        Self {
            values: values.into(),
            not_values: not_values.into(),
        }
    }

    /// Whether neither list is set.
    pub fn is_unset(&self) -> bool {
        self.values.is_empty() && self.not_values.is_empty()
    }

    /// Whether the attribute passes, given a test of one value against it.
    /// An absent attribute matches no value: it fails `values` and passes
    /// `not_values`, as Envoy's generated `not_id` rules do.
    #[inline]
    pub fn check(&self, mut matches: impl FnMut(&T) -> bool) -> bool {
        (self.values.is_empty() || self.values.iter().any(&mut matches))
            && !self.not_values.iter().any(matches)
    }
}

/// `rules[].from[].source` (Istio `Source`): who sends the request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Source {
    /// `principals` / `notPrincipals`: the peer's SPIFFE ID without
    /// `spiffe://` (`cluster.local/ns/default/sa/web`); needs mTLS.
    pub principals: OneOf<StrPattern>,
    /// `requestPrincipals` / `notRequestPrincipals`: the JWT's `iss/sub`.
    pub request_principals: OneOf<StrPattern>,
    /// `namespaces` / `notNamespaces`: the namespace of the peer's
    /// Istio-form SPIFFE ID; needs mTLS.
    pub namespaces: OneOf<StrPattern>,
    /// `serviceAccounts` / `notServiceAccounts`: the namespace and
    /// account of the peer's Istio-form SPIFFE ID; needs mTLS.
    pub service_accounts: OneOf<ServiceAccount>,
    /// `ipBlocks` / `notIpBlocks`: the connection's peer address.
    pub ip_blocks: OneOf<IpBlock>,
    /// `remoteIpBlocks` / `notRemoteIpBlocks`: the original client
    /// address. `X-Forwarded-For` is not trusted (Istio's default
    /// `numTrustedProxies: 0`), so this is the connection's peer address
    /// too.
    pub remote_ip_blocks: OneOf<IpBlock>,
}

/// A service account, `<namespace>/<account>` in Istio's
/// `serviceAccounts` (exact values only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The namespace.
    pub namespace: Arc<str>,
    /// The account's name.
    pub name: Arc<str>,
}

/// `rules[].to[].operation` (Istio `Operation`): what is requested.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operation {
    /// `hosts` / `notHosts`: the `:authority` (or `Host`), compared
    /// case-insensitively and with its port, as Istio does: `foo.com`
    /// does not match `foo.com:8080`; write `foo.com:*` for any port.
    pub hosts: OneOf<StrPattern>,
    /// `ports` / `notPorts`: the port the request was received on.
    pub ports: OneOf<u16>,
    /// `methods` / `notMethods`: the HTTP method (gRPC: always `POST`).
    pub methods: OneOf<StrPattern>,
    /// `paths` / `notPaths`: the normalized path, without query or
    /// fragment.
    pub paths: OneOf<StrPattern>,
}

/// `rules[].when[]` (Istio `Condition`): one attribute and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The attribute.
    pub key: ConditionKey,
    /// What it must (not) be.
    pub values: ConditionValues,
}

/// The attribute a [`Condition`] reads (istio.io, "Authorization Policy
/// Conditions").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConditionKey {
    /// `request.headers[<name>]`.
    RequestHeader(HeaderName),
    /// `source.ip`: the connection's peer address.
    SourceIp,
    /// `remote.ip`: the original client address; `X-Forwarded-For` is not
    /// trusted, so the peer address.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.ip`: the address the connection was accepted on.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `request.auth.principal`: the JWT's `iss/sub`.
    AuthPrincipal,
    /// `request.auth.audiences`: the JWT's `aud` (any entry).
    AuthAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    AuthPresenter,
    /// `request.auth.claims[a][b]..`: a (nested) claim; a list-valued
    /// claim matches when any of its string entries does.
    AuthClaim(Arc<[Arc<str>]>),
}

/// The values of a [`Condition`], typed by its key.
#[derive(Clone, Debug, PartialEq)]
pub enum ConditionValues {
    /// String attributes.
    Strings(OneOf<StrPattern>),
    /// IP attributes (`source.ip`, `remote.ip`, `destination.ip`).
    Ips(OneOf<IpBlock>),
    /// `destination.port`.
    Ports(OneOf<u16>),
}

/// A string value of a policy with Istio's wildcards: exact, `prefix*`,
/// `*suffix`, or `*` (any non-empty value: presence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrPattern {
    /// The whole value.
    Exact(Arc<str>),
    /// `abc*`: starts with `abc`.
    Prefix(Arc<str>),
    /// `*abc`: ends with `abc`.
    Suffix(Arc<str>),
    /// `*`: any non-empty value.
    Presence,
}

/// Why a string is not a valid [`StrPattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidPattern(String);

impl fmt::Display for InvalidPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidPattern {}

impl StrPattern {
    /// Parses Istio's wildcard syntax: `*` alone, or one `*` at the start
    /// or the end. A `*` anywhere else, or an empty value, is an error
    /// (Istio would treat it as a literal that no request carries: an
    /// error says so instead of never matching).
    pub fn parse(s: &str) -> Result<Self, InvalidPattern> {
        if s.is_empty() {
            return Err(InvalidPattern("empty value".into()));
        }
        if s == "*" {
            return Ok(Self::Presence);
        }
        let (kind, body): (fn(Arc<str>) -> Self, &str) = if let Some(b) = s.strip_suffix('*') {
            (Self::Prefix, b)
        } else if let Some(b) = s.strip_prefix('*') {
            (Self::Suffix, b)
        } else {
            (Self::Exact, s)
        };
        if body.contains('*') {
            return Err(InvalidPattern(format!(
                "{s:?}: a wildcard `*` is only allowed alone, at the start or at the end"
            )));
        }
        Ok(kind(body.into()))
    }

    /// The same pattern lowercased, for values compared case-insensitively.
    pub fn to_ascii_lowercase(&self) -> Self {
        match self {
            Self::Exact(s) => Self::Exact(s.to_ascii_lowercase().into()),
            Self::Prefix(s) => Self::Prefix(s.to_ascii_lowercase().into()),
            Self::Suffix(s) => Self::Suffix(s.to_ascii_lowercase().into()),
            Self::Presence => Self::Presence,
        }
    }

    /// Whether `value` matches (case-sensitive).
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        self.matches_bytes(value.as_bytes(), false)
    }

    /// Whether `value` matches, ignoring ASCII case.
    #[inline]
    pub fn matches_ignore_case(&self, value: &str) -> bool {
        self.matches_bytes(value.as_bytes(), true)
    }

    /// Whether the bytes `value` match (header values need not be UTF-8).
    #[inline]
    pub fn matches_bytes(&self, value: &[u8], ignore_case: bool) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Self::Exact(s) => eq(value, s.as_bytes()),
            Self::Prefix(s) => value.len() >= s.len() && eq(&value[..s.len()], s.as_bytes()),
            Self::Suffix(s) => {
                value.len() >= s.len() && eq(&value[value.len() - s.len()..], s.as_bytes())
            }
            Self::Presence => !value.is_empty(),
        }
    }
}

impl fmt::Display for StrPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => f.write_str(s),
            Self::Prefix(s) => write!(f, "{s}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Presence => f.write_str("*"),
        }
    }
}

/// An IP address or CIDR block (`10.0.0.0/8`, `2001:db8::/32`,
/// `192.168.1.7`). IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a
/// dual-stack socket reports for an IPv4 peer) are matched as the IPv4
/// address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// The block of `addr` with a prefix length; `None` when the length
    /// is too long for the address family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is inside the block.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl FromStr for IpBlock {
    type Err = InvalidPattern;

    fn from_str(s: &str) -> Result<Self, InvalidPattern> {
        let bad = || InvalidPattern(format!("{s:?} is not an IP address or CIDR block"));
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                (addr, prefix)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        // `::ffff:10.0.0.0/104` is the IPv4 `/8`.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
                (addr.to_canonical(), prefix - 96)
            }
            _ => (addr, prefix),
        };
        Self::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_follow_istio_wildcards() {
        let p = |s| StrPattern::parse(s).unwrap();
        assert!(p("a/b").matches("a/b") && !p("a/b").matches("a/bc"));
        assert!(p("/api/*").matches("/api/x") && !p("/api/*").matches("/apix"));
        assert!(p("*.html").matches("/x.html") && !p("*.html").matches("/x.htm"));
        assert!(p("*").matches("x") && !p("*").matches(""));
        assert!(
            p("Foo.COM")
                .to_ascii_lowercase()
                .matches_ignore_case("foo.com")
        );
        assert!(StrPattern::parse("a*b").is_err());
        assert!(StrPattern::parse("**").is_err());
        assert!(StrPattern::parse("").is_err());
    }

    #[test]
    fn ip_blocks_match_cidrs_and_mapped_addresses() {
        let b: IpBlock = "10.1.0.0/16".parse().unwrap();
        assert!(b.contains("10.1.200.3".parse().unwrap()));
        assert!(!b.contains("10.2.0.1".parse().unwrap()));
        assert!(b.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpBlock = "192.168.1.7".parse().unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let v6: IpBlock = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.1.0.1".parse().unwrap()));
        let all: IpBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "10.0.0", "x", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad}");
        }
    }
}
