//! `RouteConfiguration` → [`RouteTable`].
//!
//! The semantics are gRPC's xDS client first (gRFC A28 routing, A31
//! timeouts, A33 fault injection, A39 filter overrides, A44 retries) with
//! Envoy's field meanings, producing the same model values the Istio file
//! source produces for the same intent (istiod's proxyless generator sends
//! what `pilot/pkg/networking/core/route` builds for a `VirtualService`).
//!
//! Three outcomes per field (rules reference A2.1):
//! - supported: translated;
//! - an unsupported *value* of a field that changes where or whether a
//!   request goes (a range header matcher, a regex rewrite, a header-based
//!   fault): the resource is rejected with the field path and the value;
//! - a field the mesh does not apply and whose absence only loses an
//!   optimisation or an observation (hash policies, CORS, tracing, runtime
//!   keys): recorded in [`Decoded::ignored`](crate::Decoded) by path.
//!
//! What a route gets from the listener that uses it (the HCM's fault
//! filter and its base config, `max_stream_duration`) is an
//! [`HttpDefaults`]; a standalone RDS resource is translated with
//! [`HttpDefaults::default`], which is what istiod's proxyless listeners
//! carry. A listener whose defaults differ says so
//! ([`ListenerResource::http`](crate::resource::ListenerResource)) and its
//! route configuration is translated with them ([`route_configuration`]).

// Deprecated fields are read on purpose: control planes still send them
// (istiod sets `total_weight` and the old header matcher forms).
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as faultpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf;
use http::{HeaderName, HeaderValue};
use mesh_core::model::{
    AbortStatus, Backoff, Cluster, DirectResponse, FaultAbort, FaultDelay, FaultPolicy,
    ForwardAction, Fraction, HashKey, HeaderMatch, HeaderMutations, HeaderRule, LbPolicy, Mirror,
    PathMatch, Redirect, Regex, RetryConditions, RetryOn, RetryPolicy, Rewrite, Route, RouteAction,
    RouteMatch, RouteTable, StringMatch, VirtualHost, WeightedCluster, WeightedClusters,
};
use prost::Message;

use crate::resource::{DecodeContext, DecodeError, Decoded, XdsResource};

/// The type URL of the fault filter's config (`HTTPFault`).
pub(crate) const FAULT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The type URL of a per-route `FilterConfig` wrapper.
const FILTER_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";
/// The type URL of the RBAC filter's per-route override.
pub(crate) const RBAC_PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// The fault filter name istiod uses (`wellknown.Fault`).
pub const ISTIO_FAULT_FILTER: &str = "envoy.filters.http.fault";

/// What the HTTP connection manager that uses a route configuration
/// contributes to its routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpDefaults {
    /// The HCM's fault filter: its instance name (the key of per-route
    /// `typed_per_filter_config` overrides) and its top-level config, which
    /// applies to routes without an override (gRFC A39). `None`: the chain
    /// has no fault filter, so per-route fault configs do nothing.
    pub fault_filter: Option<(Arc<str>, FaultPolicy)>,
    /// `common_http_protocol_options.max_stream_duration`: the timeout of
    /// routes that set none themselves (gRFC A31).
    pub max_stream_duration: Option<Duration>,
}

impl Default for HttpDefaults {
    /// A fault filter named as istiod names it with an empty top-level
    /// config, and no `max_stream_duration`: what istiod's proxyless
    /// listeners carry (`pilot/pkg/networking/grpcgen/lds.go`).
    fn default() -> Self {
        Self {
            fault_filter: Some((Arc::from(ISTIO_FAULT_FILTER), FaultPolicy::default())),
            max_stream_duration: None,
        }
    }
}

impl HttpDefaults {
    /// Whether these are the defaults a standalone RDS resource is
    /// translated with (then the cached translation is exact for the
    /// listener; otherwise translate the resource again with
    /// [`route_configuration`]).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

pub(super) fn decode(bytes: &[u8], ctx: &DecodeContext) -> Result<Decoded, DecodeError> {
    route_configuration(bytes, ctx, &HttpDefaults::default())
}

/// Decodes and translates a `RouteConfiguration` (the bytes of its `Any`)
/// for a listener whose HTTP connection manager contributes `defaults`.
pub fn route_configuration(
    bytes: &[u8],
    _ctx: &DecodeContext,
    defaults: &HttpDefaults,
) -> Result<Decoded, DecodeError> {
    let r: rpb::RouteConfiguration = super::proto(bytes, "RouteConfiguration")?;
    let mut ignored = Vec::new();
    let table = translate(&r, &r.name, "", defaults, &mut ignored)
        .map_err(|e| DecodeError::new(Some(&r.name), e))?;
    Ok(Decoded {
        name: r.name,
        resource: XdsResource::RouteConfiguration(table),
        ignored,
    })
}

/// Translation result: the error is the reason, starting with the field
/// path.
pub(crate) type Res<T> = Result<T, String>;

fn err<T>(path: &str, msg: impl std::fmt::Display) -> Res<T> {
    Err(format!("{path}: {msg}"))
}

/// Records `field` under `path` when `set`.
pub(crate) fn note(ignored: &mut Vec<String>, path: &str, set: bool, field: &str) {
    if set {
        ignored.push(join(path, field));
    }
}

pub(crate) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Translates `r` into a table named `name`; `prefix` is the field path of
/// `r` inside its resource (empty for an RDS resource).
pub(crate) fn translate(
    r: &rpb::RouteConfiguration,
    name: &str,
    prefix: &str,
    defaults: &HttpDefaults,
    ignored: &mut Vec<String>,
) -> Res<RouteTable> {
    let p = prefix;
    note(ignored, p, r.vhds.is_some(), "vhds");
    note(
        ignored,
        p,
        !r.internal_only_headers.is_empty(),
        "internal_only_headers",
    );
    note(
        ignored,
        p,
        r.validate_clusters.is_some(),
        "validate_clusters",
    );
    note(
        ignored,
        p,
        r.max_direct_response_body_size_bytes.is_some(),
        "max_direct_response_body_size_bytes",
    );
    note(
        ignored,
        p,
        !r.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    );
    note(
        ignored,
        p,
        r.ignore_port_in_host_matching,
        "ignore_port_in_host_matching",
    );
    note(ignored, p, !r.vhost_header.is_empty(), "vhost_header");
    note(
        ignored,
        p,
        r.ignore_path_parameters_in_path_matching,
        "ignore_path_parameters_in_path_matching",
    );
    note(
        ignored,
        p,
        !r.route_specifiers.is_empty(),
        "route_specifiers",
    );
    if !r.cluster_specifier_plugins.is_empty() {
        // gRFC A77: a plugin the client does not know makes the resource
        // invalid unless optional; the mesh knows none.
        for (i, plugin) in r.cluster_specifier_plugins.iter().enumerate() {
            if !plugin.is_optional {
                return err(
                    &format!("{}[{i}]", join(p, "cluster_specifier_plugins")),
                    "cluster specifier plugins are not supported",
                );
            }
        }
        note(ignored, p, true, "cluster_specifier_plugins");
    }
    if !r.typed_per_filter_config.is_empty() {
        ignored.push(join(p, "typed_per_filter_config"));
    }
    let config_headers = Mutations::read(
        p,
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
    )?;
    let mut vhosts = Vec::with_capacity(r.virtual_hosts.len());
    for (vi, vh) in r.virtual_hosts.iter().enumerate() {
        let vpath = format!("{}[{vi}]", join(p, "virtual_hosts"));
        vhosts.push(virtual_host(
            vh,
            &vpath,
            defaults,
            &config_headers,
            r.most_specific_header_mutations_wins,
            ignored,
        )?);
    }
    RouteTable::try_new(name, vhosts).map_err(|e| {
        // The model's path starts at `virtual_hosts`.
        if p.is_empty() {
            e.to_string()
        } else {
            format!("{p}.{e}")
        }
    })
}

fn virtual_host(
    vh: &rpb::VirtualHost,
    p: &str,
    defaults: &HttpDefaults,
    config_headers: &Mutations,
    inner_wins: bool,
    ignored: &mut Vec<String>,
) -> Res<VirtualHost> {
    if vh.domains.is_empty() {
        return err(&join(p, "domains"), "no domains");
    }
    note(ignored, p, vh.matcher.is_some(), "matcher");
    note(ignored, p, vh.require_tls != 0, "require_tls");
    note(
        ignored,
        p,
        !vh.virtual_clusters.is_empty(),
        "virtual_clusters",
    );
    note(ignored, p, !vh.rate_limits.is_empty(), "rate_limits");
    note(ignored, p, vh.cors.is_some(), "cors");
    note(
        ignored,
        p,
        vh.include_request_attempt_count,
        "include_request_attempt_count",
    );
    note(
        ignored,
        p,
        vh.include_attempt_count_in_response,
        "include_attempt_count_in_response",
    );
    note(
        ignored,
        p,
        vh.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    );
    note(ignored, p, vh.hedge_policy.is_some(), "hedge_policy");
    note(
        ignored,
        p,
        vh.include_is_timeout_retry_header,
        "include_is_timeout_retry_header",
    );
    note(
        ignored,
        p,
        vh.per_request_buffer_limit_bytes.is_some(),
        "per_request_buffer_limit_bytes",
    );
    note(
        ignored,
        p,
        vh.request_body_buffer_limit.is_some(),
        "request_body_buffer_limit",
    );
    note(
        ignored,
        p,
        !vh.request_mirror_policies.is_empty(),
        "request_mirror_policies",
    );
    note(
        ignored,
        p,
        !vh.route_specifiers.is_empty(),
        "route_specifiers",
    );
    let vh_headers = Mutations::read(
        p,
        &vh.request_headers_to_add,
        &vh.request_headers_to_remove,
        &vh.response_headers_to_add,
        &vh.response_headers_to_remove,
    )?;
    let outer = combine(config_headers.clone(), vh_headers, inner_wins);
    let vh_fault = fault_override(&vh.typed_per_filter_config, p, defaults, ignored)?;
    let vh_retry = match &vh.retry_policy {
        Some(rp) => retry_policy(rp, &join(p, "retry_policy"), ignored)?,
        None => None,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (ri, r) in vh.routes.iter().enumerate() {
        let rpath = format!("{}[{ri}]", join(p, "routes"));
        let ctx = RouteCtx {
            defaults,
            vh_fault: vh_fault.as_ref(),
            vh_retry: vh_retry.as_ref(),
            outer: &outer,
            inner_wins,
        };
        if let Some(route) = route(r, &rpath, &ctx, ignored)? {
            routes.push(route);
        }
    }
    Ok(VirtualHost {
        name: vh.name.as_str().into(),
        domains: vh
            .domains
            .iter()
            .map(|d| Arc::from(d.to_ascii_lowercase()))
            .collect(),
        routes: routes.into(),
    })
}

struct RouteCtx<'a> {
    defaults: &'a HttpDefaults,
    vh_fault: Option<&'a FaultPolicy>,
    vh_retry: Option<&'a RetryPolicy>,
    outer: &'a Mutations,
    inner_wins: bool,
}

/// One route; `None` when gRPC skips it (a `query_parameters` matcher, a
/// `cluster_header` action, a CONNECT matcher): the skip is recorded.
fn route(
    r: &rpb::Route,
    p: &str,
    ctx: &RouteCtx<'_>,
    ignored: &mut Vec<String>,
) -> Res<Option<Route>> {
    let mpath = join(p, "match");
    let Some(m) = &r.r#match else {
        return err(&mpath, "required");
    };
    let Some(clause) = route_match(m, &mpath, ignored)? else {
        return Ok(None);
    };
    note(ignored, p, r.tracing.is_some(), "tracing");
    note(
        ignored,
        p,
        r.per_request_buffer_limit_bytes.is_some(),
        "per_request_buffer_limit_bytes",
    );
    note(
        ignored,
        p,
        r.request_body_buffer_limit.is_some(),
        "request_body_buffer_limit",
    );
    note(
        ignored,
        p,
        !r.route_specifiers.is_empty(),
        "route_specifiers",
    );
    let name = (!r.name.is_empty()).then(|| Arc::from(r.name.as_str()));
    let matches: Arc<[RouteMatch]> = Arc::from([clause]);
    let action = match &r.action {
        None => return err(p, "no action"),
        Some(rpb::route::Action::Route(a)) => {
            let apath = join(p, "route");
            let route_fault = fault_override(&r.typed_per_filter_config, p, ctx.defaults, ignored)?;
            let own = Mutations::read(
                p,
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
            )?;
            let headers = combine(ctx.outer.clone(), own, ctx.inner_wins);
            match forward(a, &apath, &matches[0], ctx, route_fault, headers, ignored)? {
                Some(fwd) => RouteAction::Forward(Box::new(fwd)),
                None => return Ok(None),
            }
        }
        Some(rpb::route::Action::Redirect(a)) => {
            RouteAction::Redirect(redirect(a, &join(p, "redirect"))?)
        }
        Some(rpb::route::Action::DirectResponse(a)) => {
            RouteAction::DirectResponse(direct_response(a, &join(p, "direct_response"))?)
        }
        Some(rpb::route::Action::NonForwardingAction(_)) => {
            // gRFC A36: on the client side a request matching a
            // non-forwarding route fails with UNAVAILABLE, which is what
            // a 503 answer becomes for gRPC.
            ignored.push(join(p, "non_forwarding_action"));
            RouteAction::DirectResponse(DirectResponse {
                status: 503,
                body: None,
            })
        }
        Some(rpb::route::Action::FilterAction(_)) => {
            return err(&join(p, "filter_action"), "not supported");
        }
    };
    Ok(Some(Route {
        name,
        matches,
        action,
    }))
}

/// One `RouteMatch`; `None` when gRPC skips the route.
fn route_match(m: &rpb::RouteMatch, p: &str, ignored: &mut Vec<String>) -> Res<Option<RouteMatch>> {
    use rpb::route_match::PathSpecifier as S;
    if !m.query_parameters.is_empty() {
        // gRFC A28: a route with query parameter matchers never matches.
        ignored.push(join(p, "query_parameters"));
        return Ok(None);
    }
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let path = match &m.path_specifier {
        None => return err(p, "no path specifier (prefix, path or safe_regex)"),
        Some(S::Prefix(s)) => PathMatch::Prefix(s.as_str().into()),
        Some(S::Path(s)) => PathMatch::Exact(s.as_str().into()),
        Some(S::SafeRegex(r)) => {
            // Envoy: `case_sensitive` does not apply to `safe_regex`.
            PathMatch::Regex(regex(r, false, &join(p, "safe_regex"))?)
        }
        Some(S::PathSeparatedPrefix(s)) => {
            let sp = join(p, "path_separated_prefix");
            if !s.starts_with('/') || s.contains(['?', '#']) || (s.len() > 1 && s.ends_with('/')) {
                return err(&sp, format!("{s:?} is not a valid path prefix"));
            }
            // The prefix itself, or the prefix followed by `/`.
            let pattern = format!("{}(?:/.*)?", escape_regex(s));
            PathMatch::Regex(
                Regex::try_new(&pattern, !case_sensitive)
                    .map_err(|e| format!("{sp}: {}", e.message()))?,
            )
        }
        Some(S::ConnectMatcher(_)) => {
            // Only CONNECT requests match, and the mesh forwards none.
            ignored.push(join(p, "connect_matcher"));
            return Ok(None);
        }
        Some(S::PathMatchPolicy(_)) => return err(&join(p, "path_match_policy"), "not supported"),
    };
    if let Some(rf) = &m.runtime_fraction {
        let fpath = join(p, "runtime_fraction");
        let f = match &rf.default_value {
            Some(v) => fraction(v, &join(&fpath, "default_value"))?,
            None => Fraction::NONE,
        };
        if f != Fraction::ALL {
            return err(
                &fpath,
                format!(
                    "matching {}% of requests is not supported",
                    f.ppm() as f64 / 10_000.0
                ),
            );
        }
        note(ignored, &fpath, !rf.runtime_key.is_empty(), "runtime_key");
    }
    if !m.cookies.is_empty() {
        return err(&join(p, "cookies"), "cookie matchers are not supported");
    }
    if !m.dynamic_metadata.is_empty() {
        return err(&join(p, "dynamic_metadata"), "not supported");
    }
    if !m.filter_state.is_empty() {
        return err(&join(p, "filter_state"), "not supported");
    }
    if m.tls_context.is_some() {
        return err(&join(p, "tls_context"), "not supported");
    }
    let mut headers = Vec::with_capacity(m.headers.len() + usize::from(m.grpc.is_some()));
    let mut method = None;
    let mut authority = None;
    for (hi, h) in m.headers.iter().enumerate() {
        let hpath = format!("{}[{hi}]", join(p, "headers"));
        match h.name.as_str() {
            ":method" | ":authority" | "host" if !h.invert_match => {
                let slot = if h.name == ":method" {
                    &mut method
                } else {
                    &mut authority
                };
                let rule = header_rule(h, &hpath)?;
                let HeaderRule::Value(sm) = rule else {
                    // Always present: nothing to check.
                    continue;
                };
                if slot.is_some() {
                    return err(
                        &hpath,
                        format!("a second matcher on {:?} is not supported", h.name),
                    );
                }
                *slot = Some(sm);
            }
            n if n.starts_with(':') => {
                return err(&join(&hpath, "name"), format!("{n:?} is not supported"));
            }
            _ => headers.push(header_match(h, &hpath)?),
        }
    }
    if m.grpc.is_some() {
        // Envoy: only requests whose content-type starts with
        // `application/grpc`.
        headers.push(HeaderMatch {
            name: http::header::CONTENT_TYPE,
            rule: HeaderRule::Value(StringMatch::Prefix("application/grpc".into())),
            invert: false,
        });
    }
    Ok(Some(RouteMatch {
        path,
        ignore_case: !case_sensitive,
        headers: headers.into(),
        method,
        authority,
    }))
}

fn header_name(name: &str, p: &str) -> Res<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{p}: {name:?} is not a valid header name"))
}

fn header_rule(h: &rpb::HeaderMatcher, p: &str) -> Res<HeaderRule> {
    use rpb::header_matcher::HeaderMatchSpecifier as S;
    if h.treat_missing_header_as_empty {
        return err(&join(p, "treat_missing_header_as_empty"), "not supported");
    }
    Ok(match &h.header_match_specifier {
        // Envoy: no specifier matches on presence.
        None => HeaderRule::Present(true),
        Some(S::PresentMatch(b)) => HeaderRule::Present(*b),
        Some(S::ExactMatch(s)) => HeaderRule::Value(StringMatch::Exact(s.as_str().into())),
        Some(S::PrefixMatch(s)) => HeaderRule::Value(StringMatch::Prefix(s.as_str().into())),
        Some(S::SuffixMatch(s)) => HeaderRule::Value(StringMatch::Suffix(s.as_str().into())),
        Some(S::ContainsMatch(s)) => HeaderRule::Value(StringMatch::Contains(s.as_str().into())),
        Some(S::SafeRegexMatch(r)) => HeaderRule::Value(StringMatch::Regex(regex(
            r,
            false,
            &join(p, "safe_regex_match"),
        )?)),
        Some(S::StringMatch(m)) => HeaderRule::Value(string_match(m, &join(p, "string_match"))?),
        Some(S::RangeMatch(r)) => {
            return err(
                &join(p, "range_match"),
                format!("[{}, {}) range matchers are not supported", r.start, r.end),
            );
        }
    })
}

fn header_match(h: &rpb::HeaderMatcher, p: &str) -> Res<HeaderMatch> {
    Ok(HeaderMatch {
        name: header_name(&h.name, &join(p, "name"))?,
        rule: header_rule(h, p)?,
        invert: h.invert_match,
    })
}

/// An Envoy `StringMatcher`; `ignore_case` on the literal forms becomes a
/// case-insensitive regex, the model's only case-insensitive header match.
pub(crate) fn string_match(m: &mpb::StringMatcher, p: &str) -> Res<StringMatch> {
    use mpb::string_matcher::MatchPattern as M;
    let Some(pattern) = &m.match_pattern else {
        return err(p, "no match pattern");
    };
    let (s, field) = match pattern {
        M::SafeRegex(r) => {
            return Ok(StringMatch::Regex(regex(r, false, &join(p, "safe_regex"))?));
        }
        M::Custom(_) => return err(&join(p, "custom"), "not supported"),
        M::Exact(s) => (s.as_str(), "exact"),
        M::Prefix(s) => (s.as_str(), "prefix"),
        M::Suffix(s) => (s.as_str(), "suffix"),
        M::Contains(s) => (s.as_str(), "contains"),
    };
    if !m.ignore_case {
        return Ok(match field {
            "exact" => StringMatch::Exact(s.into()),
            "prefix" => StringMatch::Prefix(s.into()),
            "suffix" => StringMatch::Suffix(s.into()),
            _ => StringMatch::Contains(s.into()),
        });
    }
    let e = escape_regex(s);
    let pattern = match field {
        "exact" => e,
        "prefix" => format!("{e}.*"),
        "suffix" => format!(".*{e}"),
        _ => format!(".*{e}.*"),
    };
    // `(?s)`: `.` spans every character, as a literal comparison does.
    Regex::try_new(&format!("(?s){pattern}"), true)
        .map(StringMatch::Regex)
        .map_err(|e| format!("{}: {}", join(p, field), e.message()))
}

/// An RE2 regex (Envoy `safe_regex`, matching the whole value); an
/// invalid one makes the resource invalid (rules reference A2.10).
pub(crate) fn regex(r: &mpb::RegexMatcher, ignore_case: bool, p: &str) -> Res<Regex> {
    Regex::try_new(&r.regex, ignore_case).map_err(|e| format!("{p}.regex: {}", e.message()))
}

/// Escapes the regex metacharacters of `s`.
pub(crate) fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A `FractionalPercent` as parts per million (capped at 100%, as Envoy
/// caps it).
pub(crate) fn fraction(f: &FractionalPercent, p: &str) -> Res<Fraction> {
    let scale = match f.denominator {
        0 => 10_000,
        1 => 100,
        2 => 1,
        d => return err(&join(p, "denominator"), format!("unknown denominator {d}")),
    };
    Ok(Fraction::from_ppm(f.numerator.saturating_mul(scale)))
}

/// A protobuf duration; negative or out-of-range ones are invalid.
pub(crate) fn duration(d: &protobuf::Duration, p: &str) -> Res<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return err(p, format!("invalid duration {}s {}ns", d.seconds, d.nanos));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A `RouteAction`; `None` when gRPC skips the route.
fn forward(
    a: &rpb::RouteAction,
    p: &str,
    clause: &RouteMatch,
    ctx: &RouteCtx<'_>,
    route_fault: Option<FaultPolicy>,
    headers: Mutations,
    ignored: &mut Vec<String>,
) -> Res<Option<ForwardAction>> {
    use rpb::route_action::ClusterSpecifier as C;
    let mut target_headers = Vec::new();
    let mut cluster_faults: Vec<Option<FaultPolicy>> = Vec::new();
    let clusters = match &a.cluster_specifier {
        None => return err(p, "no cluster specifier"),
        Some(C::Cluster(c)) => {
            if c.is_empty() {
                return err(&join(p, "cluster"), "empty cluster name");
            }
            WeightedClusters::single(c.as_str().into())
        }
        Some(C::ClusterHeader(_)) => {
            // gRFC A28: routes with a cluster_header are ignored.
            ignored.push(join(p, "cluster_header"));
            return Ok(None);
        }
        Some(C::ClusterSpecifierPlugin(_)) | Some(C::InlineClusterSpecifierPlugin(_)) => {
            return err(
                &join(p, "cluster_specifier_plugin"),
                "cluster specifier plugins are not supported",
            );
        }
        Some(C::WeightedClusters(w)) => {
            let wp = join(p, "weighted_clusters");
            note(
                ignored,
                &wp,
                !w.runtime_key_prefix.is_empty(),
                "runtime_key_prefix",
            );
            note(
                ignored,
                &wp,
                w.random_value_specifier.is_some(),
                "random_value_specifier",
            );
            let mut targets = Vec::with_capacity(w.clusters.len());
            let mut sum: u64 = 0;
            let mut any_headers = false;
            for (ci, c) in w.clusters.iter().enumerate() {
                let cp = format!("{}[{ci}]", join(&wp, "clusters"));
                if c.name.is_empty() {
                    return if c.cluster_header.is_empty() {
                        err(&join(&cp, "name"), "empty cluster name")
                    } else {
                        err(&join(&cp, "cluster_header"), "not supported")
                    };
                }
                note(ignored, &cp, c.metadata_match.is_some(), "metadata_match");
                if c.host_rewrite_specifier.is_some() {
                    return err(
                        &join(&cp, "host_rewrite_literal"),
                        "host rewrites per weighted cluster are not supported",
                    );
                }
                let weight = c.weight.as_ref().map_or(0, |w| w.value);
                sum += u64::from(weight);
                let m = Mutations::read(
                    &cp,
                    &c.request_headers_to_add,
                    &c.request_headers_to_remove,
                    &c.response_headers_to_add,
                    &c.response_headers_to_remove,
                )?;
                any_headers |= !m.is_empty();
                target_headers.push((m.request, m.response));
                cluster_faults.push(fault_override(
                    &c.typed_per_filter_config,
                    &cp,
                    ctx.defaults,
                    ignored,
                )?);
                targets.push(WeightedCluster {
                    cluster: c.name.as_str().into(),
                    weight,
                });
            }
            if targets.is_empty() {
                return err(&join(&wp, "clusters"), "empty");
            }
            if sum == 0 {
                return err(&wp, "weights sum to 0");
            }
            if sum > u64::from(u32::MAX) {
                return err(&wp, format!("weights sum to {sum}, above 2^32-1"));
            }
            if let Some(total) = &w.total_weight
                && u64::from(total.value) != sum
            {
                return err(
                    &join(&wp, "total_weight"),
                    format!("{} differs from the sum of the weights, {sum}", total.value),
                );
            }
            if !any_headers {
                target_headers.clear();
            }
            WeightedClusters::try_new(targets).map_err(|e| format!("{wp}: {e}"))?
        }
    };

    // gRFC A39: the most specific override wins (weighted cluster, then
    // route, then virtual host, then the HCM's filter config). The model
    // has one fault policy per route, so per-cluster overrides must agree.
    let mut fault = route_fault.or_else(|| ctx.vh_fault.copied());
    if cluster_faults.iter().any(Option::is_some) {
        let first = cluster_faults[0].or(fault);
        if cluster_faults.iter().any(|f| f.or(fault) != first) {
            return err(
                &join(p, "weighted_clusters"),
                "fault overrides that differ between weighted clusters are not supported",
            );
        }
        fault = first;
    }
    let fault = match &ctx.defaults.fault_filter {
        Some((_, base)) => fault.or(Some(*base)),
        None => None,
    }
    .filter(|f| f.delay.is_some() || f.abort.is_some());

    // gRFC A31: grpc_timeout_header_max, else max_stream_duration, else
    // the HCM's; Envoy's `timeout` when a control plane sets only that.
    let msd = a.max_stream_duration.as_ref();
    let mp = join(p, "max_stream_duration");
    let timeout = if let Some(d) = msd.and_then(|m| m.grpc_timeout_header_max.as_ref()) {
        Some(duration(d, &join(&mp, "grpc_timeout_header_max"))?)
    } else if let Some(d) = msd.and_then(|m| m.max_stream_duration.as_ref()) {
        Some(duration(d, &join(&mp, "max_stream_duration"))?)
    } else if let Some(d) = &a.timeout {
        Some(duration(d, &join(p, "timeout"))?)
    } else {
        ctx.defaults.max_stream_duration
    }
    .filter(|d| !d.is_zero());
    note(
        ignored,
        &mp,
        msd.is_some_and(|m| m.grpc_timeout_header_offset.is_some()),
        "grpc_timeout_header_offset",
    );

    let retry = match &a.retry_policy {
        Some(rp) => retry_policy(rp, &join(p, "retry_policy"), ignored)?,
        None => ctx.vh_retry.cloned(),
    };

    let rewrite = rewrite(a, p, clause)?;

    let mut mirrors = Vec::with_capacity(a.request_mirror_policies.len());
    for (mi, m) in a.request_mirror_policies.iter().enumerate() {
        let mp = format!("{}[{mi}]", join(p, "request_mirror_policies"));
        if m.cluster.is_empty() {
            return err(
                &join(&mp, "cluster"),
                "empty cluster name (cluster_header is not supported)",
            );
        }
        let fraction = match m
            .runtime_fraction
            .as_ref()
            .and_then(|f| f.default_value.as_ref())
        {
            Some(v) => fraction(v, &join(&mp, "runtime_fraction.default_value"))?,
            None => Fraction::ALL,
        };
        note(ignored, &mp, m.trace_sampled.is_some(), "trace_sampled");
        note(
            ignored,
            &mp,
            m.disable_shadow_host_suffix_append,
            "disable_shadow_host_suffix_append",
        );
        mirrors.push(Mirror {
            cluster: m.cluster.as_str().into(),
            fraction,
        });
    }

    let hash_policy = hash_policy(&a.hash_policy, p, ignored)?;
    note(ignored, p, a.metadata_match.is_some(), "metadata_match");
    note(ignored, p, a.idle_timeout.is_some(), "idle_timeout");
    note(ignored, p, a.flush_timeout.is_some(), "flush_timeout");
    note(
        ignored,
        p,
        a.early_data_policy.is_some(),
        "early_data_policy",
    );
    note(
        ignored,
        p,
        a.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
    );
    note(ignored, p, a.priority != 0, "priority");
    note(ignored, p, !a.rate_limits.is_empty(), "rate_limits");
    note(
        ignored,
        p,
        a.include_vh_rate_limits.is_some(),
        "include_vh_rate_limits",
    );
    note(ignored, p, a.cors.is_some(), "cors");
    note(ignored, p, a.max_grpc_timeout.is_some(), "max_grpc_timeout");
    note(
        ignored,
        p,
        a.grpc_timeout_offset.is_some(),
        "grpc_timeout_offset",
    );
    note(ignored, p, !a.upgrade_configs.is_empty(), "upgrade_configs");
    note(
        ignored,
        p,
        a.internal_redirect_policy.is_some(),
        "internal_redirect_policy",
    );
    note(
        ignored,
        p,
        a.internal_redirect_action != 0,
        "internal_redirect_action",
    );
    note(
        ignored,
        p,
        a.max_internal_redirects.is_some(),
        "max_internal_redirects",
    );
    note(ignored, p, a.hedge_policy.is_some(), "hedge_policy");
    note(
        ignored,
        p,
        a.cluster_not_found_response_code != 0,
        "cluster_not_found_response_code",
    );
    note(
        ignored,
        p,
        a.append_x_forwarded_host,
        "append_x_forwarded_host",
    );

    let mut fwd = ForwardAction::new(clusters);
    fwd.timeout = timeout;
    fwd.retry = retry;
    fwd.fault = fault;
    fwd.rewrite = rewrite;
    fwd.request_headers = headers.request;
    fwd.response_headers = headers.response;
    fwd.mirrors = mirrors.into();
    fwd.target_headers = target_headers.into();
    fwd.hash_policy = hash_policy;
    Ok(Some(fwd))
}

/// `hash_policy` (gRFC A42): the first policy the model can express
/// becomes the route's key; the policies after it, and the ones it cannot
/// express (gRPC's `io.grpc.channel_id` filter state, regex rewrites of a
/// header, cookie attributes) are recorded. Envoy combines the hashes of
/// several policies; with one key per route the first one decides, which
/// only changes which endpoint a session sticks to.
fn hash_policy(
    list: &[rpb::route_action::HashPolicy],
    p: &str,
    ignored: &mut Vec<String>,
) -> Res<Option<HashKey>> {
    use rpb::route_action::hash_policy::PolicySpecifier as H;
    let mut key = None;
    for (i, h) in list.iter().enumerate() {
        let hp = format!("{}[{i}]", join(p, "hash_policy"));
        if key.is_some() {
            ignored.push(hp);
            continue;
        }
        key = match &h.policy_specifier {
            Some(H::Header(hd)) if hd.regex_rewrite.is_none() => Some(HashKey::Header(
                header_name(&hd.header_name, &join(&hp, "header.header_name"))?,
            )),
            Some(H::Cookie(c)) if c.attributes.is_empty() => Some(HashKey::Cookie {
                name: c.name.as_str().into(),
                path: (!c.path.is_empty()).then(|| Arc::from(c.path.as_str())),
                ttl: match &c.ttl {
                    Some(d) => Some(duration(d, &join(&hp, "cookie.ttl"))?),
                    None => None,
                },
            }),
            Some(H::ConnectionProperties(cp)) if cp.source_ip => Some(HashKey::SourceIp),
            Some(H::QueryParameter(q)) => Some(HashKey::QueryParameter(q.name.as_str().into())),
            _ => {
                ignored.push(hp);
                None
            }
        };
    }
    Ok(key)
}

/// Replaces, in every cluster whose consistent-hash key is the CDS
/// placeholder [`ROUTE_HASH_POLICY_HEADER`](super::ROUTE_HASH_POLICY_HEADER),
/// the placeholder by the key of the routes that send to it (gRFC A42: the
/// key is the route's). Clusters whose routes set no key, or disagree,
/// keep the placeholder, which hashes each request at random as A42
/// specifies without a policy; the names of disagreeing clusters are
/// returned, for the status.
pub fn resolve_route_hash_keys<'a>(
    tables: impl IntoIterator<Item = &'a RouteTable>,
    clusters: &mut [Cluster],
) -> Vec<String> {
    use std::collections::HashMap as Map;
    // cluster -> the key every route to it asks for (None: they disagree).
    let mut wanted: Map<&str, Option<&HashKey>> = Map::new();
    for t in tables {
        for vh in t.virtual_hosts() {
            for r in vh.routes.iter() {
                let RouteAction::Forward(f) = &r.action else {
                    continue;
                };
                let Some(key) = &f.hash_policy else { continue };
                for c in f.clusters.targets() {
                    wanted
                        .entry(c.cluster.as_str())
                        .and_modify(|k| {
                            if *k != Some(key) {
                                *k = None;
                            }
                        })
                        .or_insert(Some(key));
                }
            }
        }
    }
    let placeholder = super::lb::route_hash_key();
    let mut conflicts = Vec::new();
    for c in clusters.iter_mut() {
        let slot = match &mut c.lb_policy {
            LbPolicy::RingHash { key, .. } | LbPolicy::Maglev { key, .. } => key,
            _ => continue,
        };
        if *slot != placeholder {
            continue;
        }
        match wanted.get(c.name.as_str()) {
            Some(Some(k)) => *slot = (*k).clone(),
            Some(None) => conflicts.push(c.name.as_str().to_owned()),
            None => {}
        }
    }
    conflicts
}

fn rewrite(a: &rpb::RouteAction, p: &str, clause: &RouteMatch) -> Res<Option<Rewrite>> {
    use rpb::route_action::HostRewriteSpecifier as H;
    if a.regex_rewrite.is_some() {
        return err(&join(p, "regex_rewrite"), "not supported");
    }
    if a.path_rewrite_policy.is_some() {
        return err(&join(p, "path_rewrite_policy"), "not supported");
    }
    if !a.path_rewrite.is_empty() {
        return err(&join(p, "path_rewrite"), "not supported");
    }
    let mut rw = Rewrite::default();
    if !a.prefix_rewrite.is_empty() {
        if !matches!(clause.path, PathMatch::Prefix(_) | PathMatch::Exact(_)) {
            return err(
                &join(p, "prefix_rewrite"),
                "only a prefix or path match can be rewritten by prefix",
            );
        }
        rw.path_prefix = Some(a.prefix_rewrite.as_str().into());
    }
    match &a.host_rewrite_specifier {
        None => {}
        Some(H::HostRewriteLiteral(h)) => {
            if http::uri::Authority::try_from(h.as_str()).is_err() {
                return err(
                    &join(p, "host_rewrite_literal"),
                    format!("invalid authority {h:?}"),
                );
            }
            rw.authority = Some(h.as_str().into());
        }
        Some(H::AutoHostRewrite(b)) if !b.value => {}
        Some(H::AutoHostRewrite(_)) => {
            return err(&join(p, "auto_host_rewrite"), "not supported");
        }
        Some(H::HostRewriteHeader(_)) => {
            return err(&join(p, "host_rewrite_header"), "not supported");
        }
        Some(H::HostRewritePathRegex(_)) => {
            return err(&join(p, "host_rewrite_path_regex"), "not supported");
        }
        Some(H::HostRewrite(_)) => {
            return err(&join(p, "host_rewrite"), "not supported");
        }
    }
    Ok((rw != Rewrite::default()).then_some(rw))
}

fn redirect(a: &rpb::RedirectAction, p: &str) -> Res<Redirect> {
    use rpb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match a.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        c => {
            return err(
                &join(p, "response_code"),
                format!("unknown response code {c}"),
            );
        }
    };
    if a.strip_query {
        return err(&join(p, "strip_query"), "not supported");
    }
    let scheme = match &a.scheme_rewrite_specifier {
        None | Some(S::HttpsRedirect(false)) => None,
        Some(S::HttpsRedirect(true)) => Some(Arc::from("https")),
        Some(S::SchemeRedirect(s)) => Some(Arc::from(s.as_str())),
    };
    let path = match &a.path_rewrite_specifier {
        None => None,
        Some(P::PathRedirect(s)) => Some(Arc::from(s.as_str())),
        Some(P::PrefixRewrite(_)) => return err(&join(p, "prefix_rewrite"), "not supported"),
        Some(P::RegexRewrite(_)) => return err(&join(p, "regex_rewrite"), "not supported"),
        Some(P::PathRewrite(_)) => return err(&join(p, "path_rewrite"), "not supported"),
    };
    let port = match a.port_redirect {
        0 => None,
        n => Some(u16::try_from(n).map_err(|_| format!("{p}.port_redirect: {n} is not a port"))?),
    };
    Ok(Redirect {
        scheme,
        authority: (!a.host_redirect.is_empty()).then(|| Arc::from(a.host_redirect.as_str())),
        port,
        path,
        status,
    })
}

fn direct_response(a: &rpb::DirectResponseAction, p: &str) -> Res<DirectResponse> {
    use core::data_source::Specifier;
    if !(200..=599).contains(&a.status) {
        return err(
            &join(p, "status"),
            format!("{} is not in 200..=599", a.status),
        );
    }
    if a.body_format.is_some() {
        return err(&join(p, "body_format"), "not supported");
    }
    let body = match a.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineBytes(b)) => Some(Arc::from(b.as_slice())),
        Some(Specifier::InlineString(s)) => Some(Arc::from(s.as_bytes())),
        Some(Specifier::Filename(_)) => return err(&join(p, "body.filename"), "not supported"),
        Some(Specifier::EnvironmentVariable(_)) => {
            return err(&join(p, "body.environment_variable"), "not supported");
        }
    };
    Ok(DirectResponse {
        status: a.status as u16,
        body,
    })
}

/// A retry policy per gRFC A44 with Envoy's condition names: every
/// condition the model knows is kept (an HTTP route retries on `5xx` as
/// Envoy does), unknown ones are recorded; no known condition, or
/// `num_retries: 0`, means no retry policy. Attempts are capped at 5
/// (`num_retries` at 4).
pub(crate) fn retry_policy(
    rp: &rpb::RetryPolicy,
    p: &str,
    ignored: &mut Vec<String>,
) -> Res<Option<RetryPolicy>> {
    let mut conditions = RetryConditions::empty();
    for item in rp
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match RetryConditions::from_name(item) {
            Some(c) => conditions = conditions.union(c),
            None => ignored.push(format!("{}: {item:?}", join(p, "retry_on"))),
        }
    }
    let mut status_codes = Vec::with_capacity(rp.retriable_status_codes.len());
    for (i, &c) in rp.retriable_status_codes.iter().enumerate() {
        if !(100..=599).contains(&c) {
            return err(
                &format!("{}[{i}]", join(p, "retriable_status_codes")),
                format!("{c} is not an HTTP status"),
            );
        }
        status_codes.push(c as u16);
    }
    let num_retries = rp.num_retries.as_ref().map_or(1, |n| n.value).min(4);
    let mut backoff = Backoff::default();
    if let Some(b) = &rp.retry_back_off {
        let bp = join(p, "retry_back_off");
        let Some(base) = &b.base_interval else {
            return err(&join(&bp, "base_interval"), "required");
        };
        let base = duration(base, &join(&bp, "base_interval"))?.max(Duration::from_millis(1));
        let max = match &b.max_interval {
            Some(m) => duration(m, &join(&bp, "max_interval"))?.max(Duration::from_millis(1)),
            None => base * 10,
        };
        if max < base {
            return err(
                &join(&bp, "max_interval"),
                format!("{max:?} is below base_interval {base:?}"),
            );
        }
        backoff = Backoff { base, max };
    }
    let per_try_timeout = match &rp.per_try_timeout {
        Some(d) => Some(duration(d, &join(p, "per_try_timeout"))?).filter(|d| !d.is_zero()),
        None => None,
    };
    let mut ignore_previous_hosts = false;
    for (i, h) in rp.retry_host_predicate.iter().enumerate() {
        if h.name == "envoy.retry_host_predicates.previous_hosts" {
            ignore_previous_hosts = true;
        } else {
            ignored.push(format!("{}[{i}]", join(p, "retry_host_predicate")));
        }
    }
    note(
        ignored,
        p,
        rp.host_selection_retry_max_attempts != 0 && !ignore_previous_hosts,
        "host_selection_retry_max_attempts",
    );
    note(ignored, p, rp.retry_priority.is_some(), "retry_priority");
    note(
        ignored,
        p,
        !rp.retry_options_predicates.is_empty(),
        "retry_options_predicates",
    );
    note(
        ignored,
        p,
        rp.per_try_idle_timeout.is_some(),
        "per_try_idle_timeout",
    );
    note(
        ignored,
        p,
        rp.rate_limited_retry_back_off.is_some(),
        "rate_limited_retry_back_off",
    );
    note(
        ignored,
        p,
        !rp.retriable_headers.is_empty(),
        "retriable_headers",
    );
    note(
        ignored,
        p,
        !rp.retriable_request_headers.is_empty(),
        "retriable_request_headers",
    );
    note(
        ignored,
        p,
        rp.refresh_cluster_on_retry,
        "refresh_cluster_on_retry",
    );
    if conditions.is_empty() || num_retries == 0 {
        return Ok(None);
    }
    Ok(Some(RetryPolicy {
        num_retries,
        per_try_timeout,
        retry_on: RetryOn {
            conditions,
            status_codes: status_codes.into(),
        },
        backoff,
        ignore_previous_hosts,
        retry_non_idempotent: false,
    }))
}

/// The fault override in a `typed_per_filter_config` map: `None` when the
/// map has none (inherit), `Some(FaultPolicy::default())` when the
/// override disables the filter. Other filters' overrides: RBAC's is
/// recorded (a client does not run RBAC), an unknown type rejects the
/// resource unless optional (gRFC A39).
pub(crate) fn fault_override(
    map: &std::collections::HashMap<String, protobuf::Any>,
    p: &str,
    defaults: &HttpDefaults,
    ignored: &mut Vec<String>,
) -> Res<Option<FaultPolicy>> {
    let mut out = None;
    // Sorted, so that errors and records do not depend on hash order.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let any = &map[key];
        let kp = format!("{}[{key:?}]", join(p, "typed_per_filter_config"));
        let (inner, optional, disabled) = if any.type_url == FILTER_CONFIG_TYPE {
            let fc = rpb::FilterConfig::decode(any.value.as_slice())
                .map_err(|e| format!("{kp}: undecodable FilterConfig: {e}"))?;
            (fc.config, fc.is_optional, fc.disabled)
        } else {
            (Some(any.clone()), false, false)
        };
        let is_fault = defaults
            .fault_filter
            .as_ref()
            .is_some_and(|(name, _)| **name == **key);
        let type_url = inner.as_ref().map_or("", |a| a.type_url.as_str());
        match type_url {
            FAULT_TYPE | "" if is_fault => {
                if disabled || inner.is_none() {
                    out = Some(FaultPolicy::default());
                } else if let Some(a) = &inner {
                    let f = faultpb::HttpFault::decode(a.value.as_slice())
                        .map_err(|e| format!("{kp}: undecodable HTTPFault: {e}"))?;
                    out = Some(fault_policy(&f, &kp, ignored)?);
                }
            }
            FAULT_TYPE | RBAC_PER_ROUTE_TYPE => ignored.push(kp),
            _ if optional => ignored.push(kp),
            "" => ignored.push(kp),
            t => return err(&kp, format!("unsupported filter config type {t:?}")),
        }
    }
    Ok(out)
}

/// The fault filter's config (gRFC A33) as a fault policy. Header-driven
/// delays and aborts, header or node restrictions and response rate
/// limits cannot be expressed and reject the resource; runtime keys and
/// `max_active_faults` are recorded.
pub(crate) fn fault_policy(
    f: &faultpb::HttpFault,
    p: &str,
    ignored: &mut Vec<String>,
) -> Res<FaultPolicy> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier as D;
    use faultpb::fault_abort::ErrorType as E;
    if !f.headers.is_empty() {
        return err(
            &join(p, "headers"),
            "faults restricted by headers are not supported",
        );
    }
    if !f.upstream_cluster.is_empty() {
        return err(&join(p, "upstream_cluster"), "not supported");
    }
    if !f.downstream_nodes.is_empty() {
        return err(&join(p, "downstream_nodes"), "not supported");
    }
    if f.response_rate_limit.is_some() {
        return err(&join(p, "response_rate_limit"), "not supported");
    }
    note(
        ignored,
        p,
        f.max_active_faults.is_some(),
        "max_active_faults",
    );
    for (set, field) in [
        (&f.delay_percent_runtime, "delay_percent_runtime"),
        (&f.abort_percent_runtime, "abort_percent_runtime"),
        (&f.delay_duration_runtime, "delay_duration_runtime"),
        (&f.abort_http_status_runtime, "abort_http_status_runtime"),
        (&f.max_active_faults_runtime, "max_active_faults_runtime"),
        (
            &f.response_rate_limit_percent_runtime,
            "response_rate_limit_percent_runtime",
        ),
        (&f.abort_grpc_status_runtime, "abort_grpc_status_runtime"),
    ] {
        note(ignored, p, !set.is_empty(), field);
    }
    let mut policy = FaultPolicy::default();
    if let Some(d) = &f.delay {
        let dp = join(p, "delay");
        let delay = match &d.fault_delay_secifier {
            Some(D::FixedDelay(fd)) => duration(fd, &join(&dp, "fixed_delay"))?,
            Some(D::HeaderDelay(_)) => {
                return err(&join(&dp, "header_delay"), "not supported");
            }
            None => return err(&dp, "no fixed_delay"),
        };
        let fraction = match &d.percentage {
            Some(pc) => fraction(pc, &join(&dp, "percentage"))?,
            None => Fraction::NONE,
        };
        policy.delay = Some(FaultDelay { delay, fraction });
    }
    if let Some(a) = &f.abort {
        let ap = join(p, "abort");
        let status = match &a.error_type {
            Some(E::HttpStatus(s)) if (200..600).contains(s) => AbortStatus::Http(*s as u16),
            Some(E::HttpStatus(s)) => {
                return err(
                    &join(&ap, "http_status"),
                    format!("{s} is not in 200..=599"),
                );
            }
            Some(E::GrpcStatus(s)) if *s <= 16 => AbortStatus::Grpc(*s as i32),
            Some(E::GrpcStatus(s)) => {
                return err(
                    &join(&ap, "grpc_status"),
                    format!("{s} is not a gRPC status code"),
                );
            }
            Some(E::HeaderAbort(_)) => {
                return err(&join(&ap, "header_abort"), "not supported");
            }
            None => return err(&ap, "no http_status or grpc_status"),
        };
        note(ignored, &ap, !a.response_body.is_empty(), "response_body");
        let fraction = match &a.percentage {
            Some(pc) => fraction(pc, &join(&ap, "percentage"))?,
            None => Fraction::NONE,
        };
        policy.abort = Some(FaultAbort { status, fraction });
    }
    Ok(policy)
}

/// Header edits of one level, before merging.
#[derive(Clone, Debug, Default)]
struct Mutations {
    request: HeaderMutations,
    response: HeaderMutations,
}

impl Mutations {
    fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }

    fn read(
        p: &str,
        req_add: &[core::HeaderValueOption],
        req_remove: &[String],
        resp_add: &[core::HeaderValueOption],
        resp_remove: &[String],
    ) -> Res<Self> {
        Ok(Self {
            request: mutations(
                req_add,
                req_remove,
                &join(p, "request_headers_to_add"),
                &join(p, "request_headers_to_remove"),
            )?,
            response: mutations(
                resp_add,
                resp_remove,
                &join(p, "response_headers_to_add"),
                &join(p, "response_headers_to_remove"),
            )?,
        })
    }
}

/// The edits of an `inner` level under an `outer` one.
fn combine(outer: Mutations, inner: Mutations, inner_wins: bool) -> Mutations {
    Mutations {
        request: merge(inner.request, outer.request, inner_wins),
        response: merge(inner.response, outer.response, inner_wins),
    }
}

/// Envoy applies the route's edits, then the virtual host's, then the
/// route configuration's, so an outer `set` of the same header wins
/// unless `most_specific_header_mutations_wins`.
fn merge(inner: HeaderMutations, outer: HeaderMutations, inner_wins: bool) -> HeaderMutations {
    if outer.is_empty() {
        return inner;
    }
    if inner.is_empty() {
        return outer;
    }
    let (winner, loser) = if inner_wins {
        (&inner.set, &outer.set)
    } else {
        (&outer.set, &inner.set)
    };
    let set: Vec<_> = loser
        .iter()
        .filter(|(n, _)| !winner.iter().any(|(w, _)| w == n))
        .chain(winner.iter())
        .cloned()
        .collect();
    HeaderMutations {
        set: set.into(),
        add: inner.add.iter().chain(outer.add.iter()).cloned().collect(),
        remove: inner
            .remove
            .iter()
            .chain(outer.remove.iter())
            .cloned()
            .collect(),
    }
}

fn mutations(
    add: &[core::HeaderValueOption],
    remove: &[String],
    add_path: &str,
    remove_path: &str,
) -> Res<HeaderMutations> {
    let mut set = Vec::new();
    let mut append = Vec::new();
    for (i, o) in add.iter().enumerate() {
        let op = format!("{add_path}[{i}]");
        let Some(h) = &o.header else {
            return err(&join(&op, "header"), "required");
        };
        let name = editable(&h.key, &join(&op, "header.key"))?;
        let bytes = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            h.raw_value.as_slice()
        };
        let value = HeaderValue::from_bytes(bytes)
            .map_err(|_| format!("{op}.header.value: invalid header value"))?;
        // The deprecated `append` (default true) decides when set;
        // otherwise `append_action`.
        let appends = match &o.append {
            Some(b) => b.value,
            None => match o.append_action {
                0 => true,
                2 => false,
                1 => {
                    return err(
                        &join(&op, "append_action"),
                        "ADD_IF_ABSENT is not supported",
                    );
                }
                3 => {
                    return err(
                        &join(&op, "append_action"),
                        "OVERWRITE_IF_EXISTS is not supported",
                    );
                }
                n => return err(&join(&op, "append_action"), format!("unknown action {n}")),
            },
        };
        if appends {
            append.push((name, value));
        } else {
            set.push((name, value));
        }
    }
    let remove = remove
        .iter()
        .enumerate()
        .map(|(i, n)| editable(n, &format!("{remove_path}[{i}]")))
        .collect::<Res<Vec<_>>>()?;
    Ok(HeaderMutations {
        set: set.into(),
        add: append.into(),
        remove: remove.into(),
    })
}

/// A header a route may edit: not a pseudo-header, not `host` (Envoy
/// rejects both).
fn editable(name: &str, p: &str) -> Res<HeaderName> {
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return err(p, format!("header {name:?} cannot be edited"));
    }
    header_name(name, p)
}

#[cfg(test)]
#[path = "route_tests.rs"]
pub(crate) mod tests;
