//! Route tables → `RouteConfiguration`.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    self as pb, DirectResponseAction, HeaderMatcher, RedirectAction, RetryPolicy as PbRetry,
    RouteConfiguration, WeightedCluster as PbWeightedCluster, header_matcher, redirect_action,
    retry_policy, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use mesh_core::ClusterName;
use mesh_core::model::{
    AbortStatus, DirectResponse, FaultPolicy, ForwardAction, Fraction, HashKey, HeaderMatch,
    HeaderMutations, HeaderRule, Mirror, PathMatch, Redirect, RetryConditions, RetryPolicy, Route,
    RouteAction, RouteMatch, RouteTable, StringMatch,
};

use super::listener::FAULT_FILTER;
use super::{any, boolv, duration, string, u32v};

/// Envoy's `retry_on` names of the model's conditions (Envoy
/// `x-envoy-retry-on` and `x-envoy-retry-grpc-on`).
const RETRY_ON: [(RetryConditions, &str); 12] = [
    (RetryConditions::FIVE_XX, "5xx"),
    (RetryConditions::GATEWAY_ERROR, "gateway-error"),
    (RetryConditions::RESET, "reset"),
    (RetryConditions::CONNECT_FAILURE, "connect-failure"),
    (RetryConditions::REFUSED_STREAM, "refused-stream"),
    (RetryConditions::RETRIABLE_4XX, "retriable-4xx"),
    (
        RetryConditions::RETRIABLE_STATUS_CODES,
        "retriable-status-codes",
    ),
    (RetryConditions::CANCELLED, "cancelled"),
    (RetryConditions::DEADLINE_EXCEEDED, "deadline-exceeded"),
    (RetryConditions::INTERNAL, "internal"),
    (RetryConditions::RESOURCE_EXHAUSTED, "resource-exhausted"),
    (RetryConditions::UNAVAILABLE, "unavailable"),
];

/// A route table as a `RouteConfiguration` of the same name.
///
/// A model route with several match clauses becomes one Envoy route per
/// clause with the same action and name (an Envoy route has one match;
/// istiod expands `HTTPMatchRequest`s the same way). `hash_key` gives the
/// consistent-hash key of a cluster (the model keeps it on the cluster's
/// LB policy; Envoy on the route's `hash_policy`).
pub fn route_configuration(
    table: &RouteTable,
    hash_key: impl Fn(&ClusterName) -> Option<HashKey>,
) -> RouteConfiguration {
    RouteConfiguration {
        name: table.name().as_str().to_owned(),
        virtual_hosts: table
            .virtual_hosts()
            .iter()
            .map(|vh| pb::VirtualHost {
                name: string(&vh.name),
                domains: vh.domains.iter().map(string).collect(),
                routes: vh
                    .routes
                    .iter()
                    .flat_map(|r| routes(r, &hash_key))
                    .collect(),
                ..pb::VirtualHost::default()
            })
            .collect(),
        ..RouteConfiguration::default()
    }
}

fn routes(r: &Route, hash_key: &impl Fn(&ClusterName) -> Option<HashKey>) -> Vec<pb::Route> {
    let any_match = [RouteMatch::any()];
    let clauses: &[RouteMatch] = if r.matches.is_empty() {
        &any_match
    } else {
        &r.matches
    };
    clauses
        .iter()
        .map(|m| {
            let mut out = pb::Route {
                name: r.name.as_deref().unwrap_or_default().to_owned(),
                r#match: Some(route_match(m)),
                ..pb::Route::default()
            };
            match &r.action {
                RouteAction::Forward(f) => forward(&mut out, f, hash_key),
                RouteAction::Redirect(rd) => {
                    out.action = Some(route::Action::Redirect(redirect(rd)));
                }
                RouteAction::DirectResponse(d) => {
                    out.action = Some(route::Action::DirectResponse(direct(d)));
                }
                // A new action kind the encoder does not know: answer 503
                // rather than route somewhere the model did not say.
                _ => {
                    out.action = Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 503,
                        ..DirectResponseAction::default()
                    }));
                }
            }
            out
        })
        .collect()
}

fn route_match(m: &RouteMatch) -> pb::RouteMatch {
    let path = match &m.path {
        PathMatch::Any => route_match::PathSpecifier::Prefix("/".to_owned()),
        PathMatch::Exact(p) => route_match::PathSpecifier::Path(string(p)),
        PathMatch::Prefix(p) => route_match::PathSpecifier::Prefix(string(p)),
        PathMatch::Regex(r) => route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.as_str().to_owned(),
            ..RegexMatcher::default()
        }),
    };
    let mut headers: Vec<HeaderMatcher> = m.headers.iter().map(header_matcher).collect();
    // Envoy matches the method and authority as pseudo-headers.
    for (name, s) in [(":method", &m.method), (":authority", &m.authority)] {
        if let Some(s) = s {
            headers.push(HeaderMatcher {
                name: name.to_owned(),
                header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                    string_matcher(s),
                )),
                ..HeaderMatcher::default()
            });
        }
    }
    pb::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m.ignore_case.then(|| boolv(false)),
        headers,
        ..pb::RouteMatch::default()
    }
}

fn string_matcher(s: &StringMatch) -> StringMatcher {
    use string_matcher::MatchPattern;
    let pattern = match s {
        StringMatch::Exact(v) => MatchPattern::Exact(string(v)),
        StringMatch::Prefix(v) => MatchPattern::Prefix(string(v)),
        StringMatch::Suffix(v) => MatchPattern::Suffix(string(v)),
        StringMatch::Contains(v) => MatchPattern::Contains(string(v)),
        StringMatch::Regex(r) => MatchPattern::SafeRegex(RegexMatcher {
            regex: r.as_str().to_owned(),
            ..RegexMatcher::default()
        }),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

fn header_matcher(h: &HeaderMatch) -> HeaderMatcher {
    let spec = match &h.rule {
        HeaderRule::Present(present) => {
            header_matcher::HeaderMatchSpecifier::PresentMatch(*present)
        }
        HeaderRule::Value(s) => {
            header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(s))
        }
    };
    HeaderMatcher {
        name: h.name.as_str().to_owned(),
        invert_match: h.invert,
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

fn forward(
    out: &mut pb::Route,
    f: &ForwardAction,
    hash_key: &impl Fn(&ClusterName) -> Option<HashKey>,
) {
    let targets = f.clusters.targets();
    let specifier = if let [only] = targets
        && f.target_headers.is_empty()
    {
        route_action::ClusterSpecifier::Cluster(only.cluster.as_str().to_owned())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(PbWeightedCluster {
            clusters: targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut cw = weighted_cluster::ClusterWeight {
                        name: t.cluster.as_str().to_owned(),
                        weight: Some(u32v(t.weight)),
                        ..weighted_cluster::ClusterWeight::default()
                    };
                    if let Some((req, resp)) = f.target_headers.get(i) {
                        cw.request_headers_to_add = header_options(req);
                        cw.request_headers_to_remove = removals(req);
                        cw.response_headers_to_add = header_options(resp);
                        cw.response_headers_to_remove = removals(resp);
                    }
                    cw
                })
                .collect(),
            ..PbWeightedCluster::default()
        })
    };
    // The route's own key (xDS-sourced routes carry it, gRFC A42) first,
    // then the keys the targets' clusters hash by (file-sourced config
    // keeps the key on the cluster, as Istio's DestinationRule does).
    let mut hash_policy: Vec<_> = f.hash_policy.iter().map(hash_policy_of).collect();
    for t in targets {
        if let Some(key) = hash_key(&t.cluster) {
            let p = hash_policy_of(&key);
            if !hash_policy.contains(&p) {
                hash_policy.push(p);
            }
        }
    }
    let action = pb::RouteAction {
        cluster_specifier: Some(specifier),
        // No timeout in the model is "disabled" (Istio's default); Envoy's
        // own default is 15 s, so say 0 explicitly.
        timeout: Some(duration(f.timeout.unwrap_or_default())),
        retry_policy: f.retry.as_ref().map(retry),
        request_mirror_policies: f.mirrors.iter().map(mirror).collect(),
        hash_policy,
        prefix_rewrite: f
            .rewrite
            .as_ref()
            .and_then(|r| r.path_prefix.as_deref())
            .unwrap_or_default()
            .to_owned(),
        host_rewrite_specifier: f
            .rewrite
            .as_ref()
            .and_then(|r| r.authority.as_ref())
            .map(|a| route_action::HostRewriteSpecifier::HostRewriteLiteral(string(a))),
        ..pb::RouteAction::default()
    };
    out.action = Some(route::Action::Route(action));
    out.request_headers_to_add = header_options(&f.request_headers);
    out.request_headers_to_remove = removals(&f.request_headers);
    out.response_headers_to_add = header_options(&f.response_headers);
    out.response_headers_to_remove = removals(&f.response_headers);
    if let Some(fault) = &f.fault {
        out.typed_per_filter_config =
            HashMap::from([(FAULT_FILTER.to_owned(), any(&http_fault(fault)))]);
    }
}

fn hash_policy_of(key: &HashKey) -> route_action::HashPolicy {
    use route_action::hash_policy::{self, PolicySpecifier};
    let spec = match key {
        HashKey::Header(name) => PolicySpecifier::Header(hash_policy::Header {
            header_name: name.as_str().to_owned(),
            ..hash_policy::Header::default()
        }),
        HashKey::Cookie { name, path, ttl } => PolicySpecifier::Cookie(hash_policy::Cookie {
            name: string(name),
            path: path.as_deref().unwrap_or_default().to_owned(),
            ttl: ttl.map(duration),
            ..hash_policy::Cookie::default()
        }),
        HashKey::SourceIp => {
            PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
                source_ip: true,
            })
        }
        HashKey::QueryParameter(name) => {
            PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: string(name) })
        }
    };
    route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    }
}

fn retry(r: &RetryPolicy) -> PbRetry {
    let retry_on: Vec<&str> = RETRY_ON
        .iter()
        .filter(|(c, _)| r.retry_on.conditions.contains(*c))
        .map(|(_, n)| *n)
        .collect();
    PbRetry {
        retry_on: retry_on.join(","),
        num_retries: Some(u32v(r.num_retries)),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: r
            .retry_on
            .status_codes
            .iter()
            .map(|&c| u32::from(c))
            .collect(),
        retry_back_off: Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(r.backoff.base)),
            max_interval: Some(duration(r.backoff.max)),
        }),
        retry_host_predicate: if r.ignore_previous_hosts {
            vec![retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".to_owned(),
                config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    any(&PreviousHostsPredicate::default()),
                )),
            }]
        } else {
            Vec::new()
        },
        // Istio's value with previous_hosts: try up to 5 hosts to find a new one.
        host_selection_retry_max_attempts: if r.ignore_previous_hosts { 5 } else { 0 },
        ..PbRetry::default()
    }
}

fn fraction(f: Fraction) -> FractionalPercent {
    FractionalPercent {
        numerator: f.ppm(),
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn http_fault(f: &FaultPolicy) -> HttpFault {
    HttpFault {
        delay: f.delay.map(|d| FaultDelay {
            percentage: Some(fraction(d.fraction)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                d.delay,
            ))),
        }),
        abort: f.abort.map(|a| FaultAbort {
            percentage: Some(fraction(a.fraction)),
            error_type: Some(match a.status {
                AbortStatus::Http(s) => fault_abort::ErrorType::HttpStatus(u32::from(s)),
                AbortStatus::Grpc(s) => {
                    fault_abort::ErrorType::GrpcStatus(u32::try_from(s).unwrap_or_default())
                }
            }),
            ..FaultAbort::default()
        }),
        ..HttpFault::default()
    }
}

fn mirror(m: &Mirror) -> route_action::RequestMirrorPolicy {
    route_action::RequestMirrorPolicy {
        cluster: m.cluster.as_str().to_owned(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(fraction(m.fraction)),
            runtime_key: String::new(),
        }),
        ..route_action::RequestMirrorPolicy::default()
    }
}

fn header_options(m: &HeaderMutations) -> Vec<HeaderValueOption> {
    let option =
        |(name, value): &(http::HeaderName, http::HeaderValue), action| HeaderValueOption {
            header: Some(HeaderValue {
                key: name.as_str().to_owned(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ..HeaderValue::default()
            }),
            append_action: action as i32,
            ..HeaderValueOption::default()
        };
    m.set
        .iter()
        .map(|h| option(h, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .chain(
            m.add
                .iter()
                .map(|h| option(h, HeaderAppendAction::AppendIfExistsOrAdd)),
        )
        .collect()
}

fn removals(m: &HeaderMutations) -> Vec<String> {
    m.remove.iter().map(|n| n.as_str().to_owned()).collect()
}

fn redirect(r: &Redirect) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let code = match r.status {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.as_deref().unwrap_or_default().to_owned(),
        port_redirect: r.port.map(u32::from).unwrap_or_default(),
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .as_ref()
            .map(|s| redirect_action::SchemeRewriteSpecifier::SchemeRedirect(string(s))),
        path_rewrite_specifier: r
            .path
            .as_ref()
            .map(|p| redirect_action::PathRewriteSpecifier::PathRedirect(string(p))),
        ..RedirectAction::default()
    }
}

fn direct(d: &DirectResponse) -> DirectResponseAction {
    DirectResponseAction {
        status: u32::from(d.status),
        body: d.body.as_ref().map(|b| DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(b.to_vec())),
            ..DataSource::default()
        }),
        ..DirectResponseAction::default()
    }
}
