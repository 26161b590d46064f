//! The RBAC HTTP filter (`envoy.extensions.filters.http.rbac.v3.RBAC`) of
//! a server listener → [`AuthorizationPolicy`] values.
//!
//! istiod builds these filters from `AuthorizationPolicy` resources
//! (`pilot/pkg/networking/grpcgen/lds.go` `buildRBAC`, with the shapes of
//! `pilot/pkg/security/authz/model`): one RBAC policy per rule, its
//! `permissions` one per `to` operation (an AND of one OR group per
//! attribute, a NOT of an OR group for the `not*` twin), its `principals`
//! one per `from` source in the same shape, `when` conditions folded into
//! every permission or principal. The translation inverts exactly that
//! structure. Semantics follow gRFC A41 (RBAC in gRPC) and Envoy's RBAC
//! filter; the model's evaluation is Istio's (DENY before ALLOW).
//!
//! An RBAC config the model cannot express **exactly** rejects the
//! listener: CEL conditions, metadata (JWT) matchers, `grpc-` and
//! `:scheme` header matchers (A2.10), an OR across different attributes,
//! case-sensitive host matching, ranges. A policy is never weakened.
//!
//! Scoping: the model's policies apply to the workload, not to a port, so
//! every rule of the listener's filter is restricted to the listener's
//! port (`to.operation.ports`). A DENY then denies only there. An ALLOW
//! restricted to its port denies, on the *other* ports, what no other
//! ALLOW policy allows: stricter, never weaker, and exact for istiod, which
//! sends the same ALLOW policies to every inbound listener of a workload.
//! An ALLOW with no policy (deny everything) becomes a DENY of every
//! request on the port, which is exact.

// Deprecated matchers are read on purpose, to reject or translate them.
#![allow(deprecated)]

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3 as rpb;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filterpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use http::HeaderName;
use mesh_core::model::security::{
    AuthzAction, AuthzRule, Condition, ConditionKey, ConditionValues, IpBlock, OneOf, Operation,
    Source, StrPattern,
};
use mesh_core::model::{AuthorizationPolicy, PolicyScope, security::DEFAULT_ROOT_NAMESPACE};

use super::route::{Res, join, note};

/// The authorization policies equivalent to one RBAC filter (its field
/// path `p`) of the server listener `listener` on `port` (0: every port).
pub(super) fn translate(
    cfg: &filterpb::Rbac,
    p: &str,
    listener: &str,
    port: u16,
    ignored: &mut Vec<String>,
) -> Res<Vec<AuthorizationPolicy>> {
    if cfg.matcher.is_some() {
        return Err(format!("{}: not supported (use rules)", join(p, "matcher")));
    }
    note(ignored, p, cfg.shadow_rules.is_some(), "shadow_rules");
    note(ignored, p, cfg.shadow_matcher.is_some(), "shadow_matcher");
    let Some(rules) = &cfg.rules else {
        // Envoy: without rules the filter enforces nothing.
        return Ok(Vec::new());
    };
    let rp = join(p, "rules");
    note(
        ignored,
        &rp,
        rules.audit_logging_options.is_some(),
        "audit_logging_options",
    );
    let action = match rules.action {
        0 => AuthzAction::Allow,
        1 => AuthzAction::Deny,
        2 => AuthzAction::Audit,
        a => return Err(format!("{}: unknown action {a}", join(&rp, "action"))),
    };
    // Sorted by name: istiod names them `<ns>-<policy>-<rule index>`.
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let mut out_rules = Vec::with_capacity(names.len());
    for name in names {
        let pp = format!("{}[{name:?}]", join(&rp, "policies"));
        if let Some(rule) = policy(&rules.policies[name], &pp)? {
            out_rules.extend(scoped(rule, port));
        }
    }
    let scope = PolicyScope::new(format!("{listener}/{p}"), DEFAULT_ROOT_NAMESPACE);
    if out_rules.is_empty() {
        return Ok(match action {
            // Nothing is allowed on the port: deny it all there.
            AuthzAction::Allow => vec![
                AuthorizationPolicy::new(scope)
                    .with_action(AuthzAction::Deny)
                    .with_rules(vec![scoped(AuthzRule::default(), port).unwrap_or_default()]),
            ],
            AuthzAction::Deny | AuthzAction::Audit => Vec::new(),
        });
    }
    Ok(vec![
        AuthorizationPolicy::new(scope)
            .with_action(action)
            .with_rules(out_rules),
    ])
}

/// `rule` restricted to requests received on `port`; `None` when it can
/// never match there.
fn scoped(mut rule: AuthzRule, port: u16) -> Option<AuthzRule> {
    if port == 0 {
        return Some(rule);
    }
    if rule.to.is_empty() {
        rule.to = Arc::from([Operation {
            ports: OneOf::new(vec![port], vec![]),
            ..Operation::default()
        }]);
        return Some(rule);
    }
    let ops: Vec<Operation> = rule
        .to
        .iter()
        .filter(|op| {
            (op.ports.values.is_empty() || op.ports.values.contains(&port))
                && !op.ports.not_values.contains(&port)
        })
        .map(|op| Operation {
            ports: OneOf::new(vec![port], vec![]),
            ..op.clone()
        })
        .collect();
    if ops.is_empty() {
        return None;
    }
    rule.to = ops.into();
    Some(rule)
}

/// One RBAC `Policy` as one rule; `None` when it can never match.
fn policy(pol: &rpb::Policy, p: &str) -> Res<Option<AuthzRule>> {
    if pol.condition.is_some() || pol.checked_condition.is_some() {
        return Err(format!(
            "{}: CEL conditions are not supported",
            join(p, "condition")
        ));
    }
    if pol.permissions.is_empty() {
        return Err(format!("{}: required", join(p, "permissions")));
    }
    if pol.principals.is_empty() {
        return Err(format!("{}: required", join(p, "principals")));
    }
    let mut when = Vec::new();

    let mut ops = Vec::with_capacity(pol.permissions.len());
    let mut match_all = false;
    let several = pol.permissions.len() > 1;
    for (i, perm) in pol.permissions.iter().enumerate() {
        let pp = format!("{}[{i}]", join(p, "permissions"));
        let groups = perm_groups(perm, &pp)?;
        if groups.is_empty() {
            match_all = true;
            continue;
        }
        let (op, conds) = operation(groups)?;
        if !conds.is_empty() && several {
            return Err(format!(
                "{pp}: a header or destination_ip condition in one of several permissions is not supported"
            ));
        }
        when.extend(conds);
        ops.push(op);
    }
    let to: Arc<[Operation]> = if match_all { Arc::from([]) } else { ops.into() };

    let mut sources = Vec::with_capacity(pol.principals.len());
    let mut any_source = false;
    let several = pol.principals.len() > 1;
    for (i, pr) in pol.principals.iter().enumerate() {
        let pp = format!("{}[{i}]", join(p, "principals"));
        let groups = principal_groups(pr, &pp)?;
        if groups.is_empty() {
            any_source = true;
            continue;
        }
        let (src, conds) = source(groups)?;
        if !conds.is_empty() && several {
            return Err(format!(
                "{pp}: a header condition in one of several principals is not supported"
            ));
        }
        when.extend(conds);
        sources.push(src);
    }
    let from: Arc<[Source]> = if any_source {
        Arc::from([])
    } else {
        sources.into()
    };
    Ok(Some(AuthzRule {
        from,
        to,
        when: when.into(),
    }))
}

// === permissions ===

/// A request attribute a permission leaf checks.
#[derive(Clone, Debug, PartialEq)]
enum PLeaf {
    Host(StrPattern),
    Method(StrPattern),
    Path(StrPattern),
    Port(u16),
    Header(HeaderName, StrPattern),
    DestinationIp(IpBlock),
}

impl PLeaf {
    fn kind(&self) -> (u8, Option<&HeaderName>) {
        match self {
            Self::Host(_) => (0, None),
            Self::Method(_) => (1, None),
            Self::Path(_) => (2, None),
            Self::Port(_) => (3, None),
            Self::Header(n, _) => (4, Some(n)),
            Self::DestinationIp(_) => (5, None),
        }
    }
}

/// One AND term: an OR of leaves on one attribute, possibly negated.
struct Group<L> {
    negated: bool,
    leaves: Vec<L>,
    path: String,
}

/// The AND terms of a permission; empty when it matches every request.
fn perm_groups(perm: &rpb::Permission, p: &str) -> Res<Vec<Group<PLeaf>>> {
    use rpb::permission::Rule as R;
    let mut out = Vec::new();
    match &perm.rule {
        Some(R::Any(true)) => {}
        Some(R::AndRules(set)) => {
            for (i, r) in set.rules.iter().enumerate() {
                let rp = format!("{p}.and_rules.rules[{i}]");
                out.extend(perm_groups(r, &rp)?);
            }
        }
        Some(R::NotRule(inner)) => {
            let np = format!("{p}.not_rule");
            out.push(Group {
                negated: true,
                leaves: perm_leaves(inner, &np)?,
                path: np,
            });
        }
        _ => out.push(Group {
            negated: false,
            leaves: perm_leaves(perm, p)?,
            path: p.to_owned(),
        }),
    }
    Ok(out)
}

/// The leaves of an OR group (or of a single leaf).
fn perm_leaves(perm: &rpb::Permission, p: &str) -> Res<Vec<PLeaf>> {
    use rpb::permission::Rule as R;
    Ok(match &perm.rule {
        Some(R::OrRules(set)) => {
            let mut v = Vec::with_capacity(set.rules.len());
            for (i, r) in set.rules.iter().enumerate() {
                v.extend(perm_leaves(r, &format!("{p}.or_rules.rules[{i}]"))?);
            }
            v
        }
        Some(R::Header(h)) => vec![header_leaf(h, &format!("{p}.header"))?],
        Some(R::UrlPath(m)) => {
            let up = format!("{p}.url_path");
            match &m.rule {
                Some(mpb::path_matcher::Rule::Path(s)) => {
                    vec![PLeaf::Path(pattern(s, &join(&up, "path"), false)?)]
                }
                None => return Err(format!("{up}: no path")),
            }
        }
        Some(R::DestinationPort(port)) => {
            vec![PLeaf::Port(u16::try_from(*port).map_err(|_| {
                format!("{p}.destination_port: {port} is not a port")
            })?)]
        }
        Some(R::DestinationIp(c)) => vec![PLeaf::DestinationIp(cidr(
            c,
            &format!("{p}.destination_ip"),
        )?)],
        Some(R::Any(_)) | Some(R::AndRules(_)) | Some(R::NotRule(_)) => {
            return Err(format!(
                "{p}: nested any/and/not inside an OR is not supported"
            ));
        }
        Some(R::DestinationPortRange(_)) => {
            return Err(format!("{p}.destination_port_range: not supported"));
        }
        Some(R::Metadata(_)) | Some(R::SourcedMetadata(_)) => {
            return Err(format!("{p}.metadata: not supported"));
        }
        Some(R::RequestedServerName(_)) => {
            return Err(format!("{p}.requested_server_name: not supported"));
        }
        Some(R::Matcher(_)) | Some(R::UriTemplate(_)) => {
            return Err(format!("{p}: extension matchers are not supported"));
        }
        None => return Err(format!("{p}: no rule")),
    })
}

fn header_leaf(h: &HeaderMatcher, p: &str) -> Res<PLeaf> {
    if h.invert_match {
        return Err(format!("{p}.invert_match: not supported (use not_rule)"));
    }
    let name = h.name.to_ascii_lowercase();
    match name.as_str() {
        ":authority" | "host" => Ok(PLeaf::Host(
            header_pattern(h, p, true)?.to_ascii_lowercase(),
        )),
        ":method" => Ok(PLeaf::Method(header_pattern(h, p, false)?)),
        n if n.starts_with(':') || n.starts_with("grpc-") => Err(format!(
            "{p}.name: matching {n:?} is not supported (gRFC A41)"
        )),
        n => Ok(PLeaf::Header(
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("{p}.name: {n:?} is not a valid header name"))?,
            header_pattern(h, p, false)?,
        )),
    }
}

/// A header matcher's value as an Istio pattern; `case_insensitive` is
/// what the model compares with (hosts), and the matcher must agree.
fn header_pattern(h: &HeaderMatcher, p: &str, case_insensitive: bool) -> Res<StrPattern> {
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier as S;
    match &h.header_match_specifier {
        Some(S::StringMatch(m)) => pattern(m, &join(p, "string_match"), case_insensitive),
        Some(S::ExactMatch(s)) if !case_insensitive => nonempty(s, p).map(StrPattern::Exact),
        Some(S::PrefixMatch(s)) if !case_insensitive => nonempty(s, p).map(StrPattern::Prefix),
        Some(S::SuffixMatch(s)) if !case_insensitive => nonempty(s, p).map(StrPattern::Suffix),
        _ => Err(format!(
            "{p}: only {}string matchers (exact, prefix, suffix, or the regex `.+`) are supported",
            if case_insensitive {
                "case-insensitive "
            } else {
                ""
            }
        )),
    }
}

fn nonempty(s: &str, p: &str) -> Res<Arc<str>> {
    if s.is_empty() {
        Err(format!("{p}: an empty value is not supported"))
    } else {
        Ok(s.into())
    }
}

/// A `StringMatcher` as an Istio pattern (exact, `prefix*`, `*suffix`, or
/// `*` written as the regex `.+`), with the case handling the model uses.
fn pattern(m: &mpb::StringMatcher, p: &str, case_insensitive: bool) -> Res<StrPattern> {
    use mpb::string_matcher::MatchPattern as M;
    if m.ignore_case != case_insensitive {
        return Err(format!(
            "{}: {} matching is not supported here",
            join(p, "ignore_case"),
            if m.ignore_case {
                "case-insensitive"
            } else {
                "case-sensitive"
            }
        ));
    }
    match &m.match_pattern {
        Some(M::Exact(s)) => nonempty(s, &join(p, "exact")).map(StrPattern::Exact),
        Some(M::Prefix(s)) => nonempty(s, &join(p, "prefix")).map(StrPattern::Prefix),
        Some(M::Suffix(s)) => nonempty(s, &join(p, "suffix")).map(StrPattern::Suffix),
        Some(M::SafeRegex(r)) if r.regex == ".+" => Ok(StrPattern::Presence),
        Some(M::SafeRegex(r)) => Err(format!(
            "{}: regex {:?} is not supported",
            join(p, "safe_regex"),
            r.regex
        )),
        Some(M::Contains(_)) => Err(format!("{}: not supported", join(p, "contains"))),
        Some(M::Custom(_)) => Err(format!("{}: not supported", join(p, "custom"))),
        None => Err(format!("{p}: no match pattern")),
    }
}

fn cidr(c: &CidrRange, p: &str) -> Res<IpBlock> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        format!(
            "{p}.address_prefix: {:?} is not an IP address",
            c.address_prefix
        )
    })?;
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    u8::try_from(len)
        .ok()
        .and_then(|l| IpBlock::new(addr, l))
        .ok_or_else(|| format!("{p}.prefix_len: {len} is too long for {addr}"))
}

/// Puts the values of one group (an OR of leaves on one attribute) into
/// the `values` or, when the group is negated, `not_values` of `field`.
/// Two groups on one attribute would need an AND of two sets the model
/// cannot express, so the second is an error naming the group.
fn set_group<L, T>(field: &mut OneOf<T>, g: Group<L>, pick: impl FnMut(L) -> Option<T>) -> Res<()> {
    let slot = if g.negated {
        &mut field.not_values
    } else {
        &mut field.values
    };
    if !slot.is_empty() {
        return Err(format!(
            "{}: a second group on the same attribute is not supported",
            g.path
        ));
    }
    *slot = g.leaves.into_iter().filter_map(pick).collect();
    Ok(())
}

/// A group of header leaves (an OR of patterns on one header) as a request
/// header condition, negated as the group is.
fn header_condition<L>(
    name: HeaderName,
    g: Group<L>,
    pick: impl FnMut(L) -> Option<StrPattern>,
) -> Condition {
    let vals: Vec<StrPattern> = g.leaves.into_iter().filter_map(pick).collect();
    Condition {
        key: ConditionKey::RequestHeader(name),
        values: ConditionValues::Strings(one_of(vals, g.negated)),
    }
}

fn operation(groups: Vec<Group<PLeaf>>) -> Res<(Operation, Vec<Condition>)> {
    let mut op = Operation::default();
    let mut conds = Vec::new();
    for g in groups {
        let Some(first) = g.leaves.first() else {
            return Err(format!("{}: empty", g.path));
        };
        let kind = first.kind();
        if g.leaves.iter().any(|l| l.kind() != kind) {
            return Err(format!(
                "{}: an OR across different request attributes is not supported",
                g.path
            ));
        }
        match kind.0 {
            0 => set_group(&mut op.hosts, g, |l| match l {
                PLeaf::Host(v) => Some(v),
                _ => None,
            })?,
            1 => set_group(&mut op.methods, g, |l| match l {
                PLeaf::Method(v) => Some(v),
                _ => None,
            })?,
            2 => set_group(&mut op.paths, g, |l| match l {
                PLeaf::Path(v) => Some(v),
                _ => None,
            })?,
            3 => set_group(&mut op.ports, g, |l| match l {
                PLeaf::Port(v) => Some(v),
                _ => None,
            })?,
            4 => {
                let name = kind.1.cloned().unwrap_or(http::header::HOST);

                conds.push(header_condition(name, g, |l| match l {
                    PLeaf::Header(_, v) => Some(v),

                    _ => None,
                }));
            }
            _ => {
                let vals: Vec<IpBlock> = g
                    .leaves
                    .into_iter()
                    .filter_map(|l| match l {
                        PLeaf::DestinationIp(v) => Some(v),
                        _ => None,
                    })
                    .collect();
                conds.push(Condition {
                    key: ConditionKey::DestinationIp,
                    values: ConditionValues::Ips(one_of(vals, g.negated)),
                });
            }
        }
    }
    Ok((op, conds))
}

fn one_of<T>(vals: Vec<T>, negated: bool) -> OneOf<T> {
    if negated {
        OneOf::new(Vec::new(), vals)
    } else {
        OneOf::new(vals, Vec::new())
    }
}

// === principals ===

/// A peer attribute a principal leaf checks.
#[derive(Clone, Debug, PartialEq)]
enum SLeaf {
    Principal(StrPattern),
    Namespace(StrPattern),
    DirectIp(IpBlock),
    RemoteIp(IpBlock),
    Header(HeaderName, StrPattern),
}

impl SLeaf {
    fn kind(&self) -> (u8, Option<&HeaderName>) {
        match self {
            Self::Principal(_) => (0, None),
            Self::Namespace(_) => (1, None),
            Self::DirectIp(_) => (2, None),
            Self::RemoteIp(_) => (3, None),
            Self::Header(n, _) => (4, Some(n)),
        }
    }
}

fn principal_groups(pr: &rpb::Principal, p: &str) -> Res<Vec<Group<SLeaf>>> {
    use rpb::principal::Identifier as I;
    let mut out = Vec::new();
    match &pr.identifier {
        Some(I::Any(true)) => {}
        Some(I::AndIds(set)) => {
            for (i, r) in set.ids.iter().enumerate() {
                out.extend(principal_groups(r, &format!("{p}.and_ids.ids[{i}]"))?);
            }
        }
        Some(I::NotId(inner)) => {
            let np = format!("{p}.not_id");
            out.push(Group {
                negated: true,
                leaves: principal_leaves(inner, &np)?,
                path: np,
            });
        }
        _ => out.push(Group {
            negated: false,
            leaves: principal_leaves(pr, p)?,
            path: p.to_owned(),
        }),
    }
    Ok(out)
}

fn principal_leaves(pr: &rpb::Principal, p: &str) -> Res<Vec<SLeaf>> {
    use rpb::principal::Identifier as I;
    Ok(match &pr.identifier {
        Some(I::OrIds(set)) => {
            let mut v = Vec::with_capacity(set.ids.len());
            for (i, r) in set.ids.iter().enumerate() {
                v.extend(principal_leaves(r, &format!("{p}.or_ids.ids[{i}]"))?);
            }
            v
        }
        Some(I::Authenticated(a)) => vec![authenticated(a, &format!("{p}.authenticated"))?],
        Some(I::DirectRemoteIp(c)) => {
            vec![SLeaf::DirectIp(cidr(c, &format!("{p}.direct_remote_ip"))?)]
        }
        Some(I::SourceIp(c)) => vec![SLeaf::DirectIp(cidr(c, &format!("{p}.source_ip"))?)],
        Some(I::RemoteIp(c)) => vec![SLeaf::RemoteIp(cidr(c, &format!("{p}.remote_ip"))?)],
        Some(I::Header(h)) => {
            let hp = format!("{p}.header");
            match header_leaf(h, &hp)? {
                PLeaf::Header(n, v) => vec![SLeaf::Header(n, v)],
                _ => {
                    return Err(format!(
                        "{hp}: request attributes in principals are not supported"
                    ));
                }
            }
        }
        Some(I::Any(_)) | Some(I::AndIds(_)) | Some(I::NotId(_)) => {
            return Err(format!(
                "{p}: nested any/and/not inside an OR is not supported"
            ));
        }
        Some(I::Metadata(_)) | Some(I::SourcedMetadata(_)) => {
            return Err(format!(
                "{p}.metadata: not supported (request principals need JWT metadata)"
            ));
        }
        Some(I::UrlPath(_)) => return Err(format!("{p}.url_path: not supported in principals")),
        Some(I::FilterState(_)) => return Err(format!("{p}.filter_state: not supported")),
        Some(I::Custom(_)) => return Err(format!("{p}.custom: not supported")),
        None => return Err(format!("{p}: no identifier")),
    })
}

const SPIFFE: &str = "spiffe://";

/// `authenticated.principal_name` → Istio's `principals` (the SPIFFE ID
/// without `spiffe://`) or `namespaces` (istiod's regex
/// `.*/ns/<ns>/.*`).
fn authenticated(a: &rpb::principal::Authenticated, p: &str) -> Res<SLeaf> {
    use mpb::string_matcher::MatchPattern as M;
    let Some(m) = &a.principal_name else {
        // Any authenticated peer.
        return Ok(SLeaf::Principal(StrPattern::Presence));
    };
    let np = join(p, "principal_name");
    if m.ignore_case {
        return Err(format!("{np}.ignore_case: not supported"));
    }
    let spiffe = |s: &str, field: &str| -> Res<Arc<str>> {
        match s.strip_prefix(SPIFFE) {
            Some(rest) if !rest.is_empty() => Ok(rest.into()),
            _ => Err(format!(
                "{np}.{field}: {s:?} is not a spiffe:// identity pattern"
            )),
        }
    };
    match &m.match_pattern {
        Some(M::Exact(s)) => Ok(SLeaf::Principal(StrPattern::Exact(spiffe(s, "exact")?))),
        Some(M::Prefix(s)) if s == SPIFFE => Ok(SLeaf::Principal(StrPattern::Presence)),
        Some(M::Prefix(s)) => Ok(SLeaf::Principal(StrPattern::Prefix(spiffe(s, "prefix")?))),
        Some(M::Suffix(s)) => {
            nonempty(s, &join(&np, "suffix")).map(|s| SLeaf::Principal(StrPattern::Suffix(s)))
        }
        Some(M::SafeRegex(r)) if r.regex == ".+" => Ok(SLeaf::Principal(StrPattern::Presence)),
        Some(M::SafeRegex(r)) => namespace_regex(&r.regex)
            .map(SLeaf::Namespace)
            .ok_or_else(|| {
                format!(
                    "{np}.safe_regex: regex {:?} is not supported (only istiod's namespace form .*/ns/<ns>/.*)",
                    r.regex
                )
            }),
        _ => Err(format!("{np}: only exact, prefix, suffix or regex matchers are supported")),
    }
}

/// istiod's namespace regex `.*/ns/<ns>/.*`, where `<ns>` may start or
/// end with `.*` (Istio's `*` wildcards); `None` for any other regex.
fn namespace_regex(re: &str) -> Option<StrPattern> {
    let ns = re.strip_prefix(".*/ns/")?.strip_suffix("/.*")?;
    let literal =
        |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ns == ".*" {
        return Some(StrPattern::Presence);
    }
    if let Some(rest) = ns.strip_suffix(".*") {
        return literal(rest).then(|| StrPattern::Prefix(rest.into()));
    }
    if let Some(rest) = ns.strip_prefix(".*") {
        return literal(rest).then(|| StrPattern::Suffix(rest.into()));
    }
    literal(ns).then(|| StrPattern::Exact(ns.into()))
}

fn source(groups: Vec<Group<SLeaf>>) -> Res<(Source, Vec<Condition>)> {
    let mut src = Source::default();
    let mut conds = Vec::new();
    for g in groups {
        let Some(first) = g.leaves.first() else {
            return Err(format!("{}: empty", g.path));
        };
        let kind = first.kind();
        if g.leaves.iter().any(|l| l.kind() != kind) {
            return Err(format!(
                "{}: an OR across different peer attributes is not supported",
                g.path
            ));
        }
        match kind.0 {
            0 => set_group(&mut src.principals, g, |l| match l {
                SLeaf::Principal(v) => Some(v),
                _ => None,
            })?,
            1 => set_group(&mut src.namespaces, g, |l| match l {
                SLeaf::Namespace(v) => Some(v),
                _ => None,
            })?,
            2 => set_group(&mut src.ip_blocks, g, |l| match l {
                SLeaf::DirectIp(v) => Some(v),
                _ => None,
            })?,
            3 => set_group(&mut src.remote_ip_blocks, g, |l| match l {
                SLeaf::RemoteIp(v) => Some(v),
                _ => None,
            })?,
            _ => {
                let name = kind.1.cloned().unwrap_or(http::header::HOST);

                conds.push(header_condition(name, g, |l| match l {
                    SLeaf::Header(_, v) => Some(v),

                    _ => None,
                }));
            }
        }
    }
    Ok((src, conds))
}

#[cfg(test)]
#[path = "rbac_tests.rs"]
mod tests;
