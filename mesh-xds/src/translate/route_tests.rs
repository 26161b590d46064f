//! `RouteConfiguration` translation: istiod-shaped fixtures asserted field
//! by field, and one test per rejection rule.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as faultpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{self, Any, BoolValue, UInt32Value};
use mesh_core::model::{
    AbortStatus, FaultAbort, FaultPolicy, Fraction, HeaderMatch, HeaderRule, PathMatch,
    RetryPolicy, RouteAction, RouteTable, StringMatch,
};
use prost::Message;

use super::*;
use crate::{TypeUrl, XdsResource};

const FQDN: &str = "reviews.default.svc.cluster.local";
const NAME: &str = "reviews.default.svc.cluster.local:9080";

pub(crate) fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn dur(secs: i64, millis: i32) -> protobuf::Duration {
    protobuf::Duration {
        seconds: secs,
        nanos: millis * 1_000_000,
    }
}

fn percent(p: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: p,
        denominator: 0,
    }
}

/// Istio's default retry policy as `pilot/pkg/networking/core/route/retry`
/// writes it.
pub(crate) fn istio_retry() -> rpb::RetryPolicy {
    rpb::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![rpb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: None,
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn prefix(p: &str) -> rpb::RouteMatch {
    rpb::RouteMatch {
        path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn to_cluster(c: &str) -> rpb::RouteAction {
    rpb::RouteAction {
        cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }
}

fn route(m: rpb::RouteMatch, a: rpb::RouteAction) -> rpb::Route {
    rpb::Route {
        r#match: Some(m),
        action: Some(rpb::route::Action::Route(a)),
        ..Default::default()
    }
}

fn weighted(clusters: &[(&str, u32)]) -> rpb::route_action::ClusterSpecifier {
    rpb::route_action::ClusterSpecifier::WeightedClusters(rpb::WeightedCluster {
        clusters: clusters
            .iter()
            .map(|(n, w)| rpb::weighted_cluster::ClusterWeight {
                name: (*n).into(),
                weight: Some(UInt32Value { value: *w }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

fn fault_abort_grpc(code: u32, pct: u32) -> faultpb::HttpFault {
    faultpb::HttpFault {
        abort: Some(faultpb::FaultAbort {
            percentage: Some(percent(pct)),
            error_type: Some(faultpb::fault_abort::ErrorType::GrpcStatus(code)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn config(routes: Vec<rpb::Route>) -> rpb::RouteConfiguration {
    rpb::RouteConfiguration {
        name: NAME.into(),
        virtual_hosts: vec![rpb::VirtualHost {
            name: NAME.into(),
            domains: vec![
                NAME.into(),
                FQDN.into(),
                "reviews:9080".into(),
                "reviews".into(),
            ],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn decode_rc(rc: &rpb::RouteConfiguration) -> Result<Decoded, DecodeError> {
    super::super::decode(
        TypeUrl::RouteConfiguration,
        &any(TypeUrl::RouteConfiguration.as_str(), rc),
        &DecodeContext::default(),
    )
}

fn table(rc: &rpb::RouteConfiguration) -> (RouteTable, Vec<String>) {
    let d = decode_rc(rc).unwrap();
    assert_eq!(d.name, rc.name);
    match d.resource {
        XdsResource::RouteConfiguration(t) => (t, d.ignored),
        other => panic!("not a route table: {other:?}"),
    }
}

fn reason(rc: &rpb::RouteConfiguration) -> String {
    let e = decode_rc(rc).unwrap_err();
    assert_eq!(e.name.as_deref(), Some(rc.name.as_str()), "{e}");
    e.reason
}

/// What istiod's proxyless RDS generator sends for a VirtualService with a
/// header-matched 90/10 split carrying a timeout and a fault, then the
/// default route: every model value checked.
#[test]
fn istio_proxyless_route_configuration_translates_field_by_field() {
    let mut split = route(
        rpb::RouteMatch {
            headers: vec![rpb::HeaderMatcher {
                name: "end-user".into(),
                header_match_specifier: Some(
                    rpb::header_matcher::HeaderMatchSpecifier::StringMatch(mpb::StringMatcher {
                        match_pattern: Some(mpb::string_matcher::MatchPattern::Exact(
                            "jason".into(),
                        )),
                        ignore_case: false,
                    }),
                ),
                ..Default::default()
            }],
            case_sensitive: Some(BoolValue { value: true }),
            ..prefix("/reviews.Reviews/")
        },
        rpb::RouteAction {
            cluster_specifier: Some(weighted(&[
                ("outbound|9080|v2|reviews.default.svc.cluster.local", 90),
                ("outbound|9080|v3|reviews.default.svc.cluster.local", 10),
            ])),
            timeout: Some(dur(2, 0)),
            max_stream_duration: Some(rpb::route_action::MaxStreamDuration {
                max_stream_duration: Some(dur(2, 0)),
                grpc_timeout_header_max: Some(dur(2, 0)),
                grpc_timeout_header_offset: None,
            }),
            retry_policy: Some(istio_retry()),
            ..Default::default()
        },
    );
    split.name = "canary".into();
    split.typed_per_filter_config = HashMap::from([(
        ISTIO_FAULT_FILTER.to_owned(),
        any(super::FAULT_TYPE, &fault_abort_grpc(14, 50)),
    )]);
    let default = route(
        prefix("/"),
        rpb::RouteAction {
            timeout: Some(dur(0, 0)),
            max_stream_duration: Some(rpb::route_action::MaxStreamDuration {
                max_stream_duration: Some(dur(0, 0)),
                grpc_timeout_header_max: Some(dur(0, 0)),
                grpc_timeout_header_offset: None,
            }),
            retry_policy: Some(istio_retry()),
            ..to_cluster("outbound|9080||reviews.default.svc.cluster.local")
        },
    );
    let (t, ignored) = table(&config(vec![split, default]));
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(t.name().as_str(), NAME);
    let [vh] = t.virtual_hosts() else {
        panic!("one virtual host")
    };
    assert_eq!(vh.name.as_ref(), NAME);
    let domains: Vec<&str> = vh.domains.iter().map(|d| &**d).collect();
    assert_eq!(domains, [NAME, FQDN, "reviews:9080", "reviews"]);
    assert_eq!(t.virtual_host("reviews").map(|v| &*v.name), Some(NAME));
    assert_eq!(vh.routes.len(), 2);

    let canary = &vh.routes[0];
    assert_eq!(canary.name.as_deref(), Some("canary"));
    let [m] = &*canary.matches else {
        panic!("one clause")
    };
    assert_eq!(m.path, PathMatch::Prefix("/reviews.Reviews/".into()));
    assert!(!m.ignore_case);
    assert_eq!(m.method, None);
    assert_eq!(m.authority, None);
    assert_eq!(
        &*m.headers,
        [HeaderMatch {
            name: http::HeaderName::from_static("end-user"),
            rule: HeaderRule::Value(StringMatch::Exact("jason".into())),
            invert: false,
        }]
    );
    let RouteAction::Forward(fwd) = &canary.action else {
        panic!("forward")
    };
    let targets: Vec<(&str, u32)> = fwd
        .clusters
        .targets()
        .iter()
        .map(|w| (w.cluster.as_str(), w.weight))
        .collect();
    assert_eq!(
        targets,
        [
            ("outbound|9080|v2|reviews.default.svc.cluster.local", 90),
            ("outbound|9080|v3|reviews.default.svc.cluster.local", 10)
        ]
    );
    assert_eq!(fwd.timeout, Some(Duration::from_secs(2)));
    assert_eq!(fwd.retry, Some(RetryPolicy::istio_default()));
    assert_eq!(
        fwd.fault,
        Some(FaultPolicy {
            delay: None,
            abort: Some(FaultAbort {
                status: AbortStatus::Grpc(14),
                fraction: Fraction::from_ppm(500_000),
            }),
        })
    );
    assert_eq!(fwd.rewrite, None);
    assert!(fwd.request_headers.is_empty() && fwd.response_headers.is_empty());
    assert!(fwd.mirrors.is_empty());
    assert!(fwd.target_headers.is_empty());
    assert_eq!(fwd.hedge, None);

    let RouteAction::Forward(def) = &vh.routes[1].action else {
        panic!("forward")
    };
    assert_eq!(vh.routes[1].name, None);
    assert_eq!(
        def.clusters.targets()[0].cluster.as_str(),
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(def.timeout, None, "0 disables the timeout, as in Istio");
    assert_eq!(def.fault, None);
    assert_eq!(def.retry, Some(RetryPolicy::istio_default()));
}

#[test]
fn matchers_translate_with_envoy_semantics() {
    use rpb::header_matcher::HeaderMatchSpecifier as H;
    let header = |name: &str, spec: H, invert: bool| rpb::HeaderMatcher {
        name: name.into(),
        invert_match: invert,
        header_match_specifier: Some(spec),
        ..Default::default()
    };
    let m = rpb::RouteMatch {
        path_specifier: Some(rpb::route_match::PathSpecifier::Path("/Exact".into())),
        case_sensitive: Some(BoolValue { value: false }),
        headers: vec![
            header(":method", H::ExactMatch("POST".into()), false),
            header("x-present", H::PresentMatch(true), false),
            header("x-absent", H::PresentMatch(true), true),
            header(
                "x-ci",
                H::StringMatch(mpb::StringMatcher {
                    match_pattern: Some(mpb::string_matcher::MatchPattern::Prefix("a.b".into())),
                    ignore_case: true,
                }),
                false,
            ),
        ],
        grpc: Some(Default::default()),
        ..Default::default()
    };
    let (t, _) = table(&config(vec![route(m, to_cluster("c"))]));
    let clause = &t.virtual_hosts()[0].routes[0].matches[0];
    assert_eq!(clause.path, PathMatch::Exact("/Exact".into()));
    assert!(clause.ignore_case);
    assert_eq!(clause.method, Some(StringMatch::Exact("POST".into())));
    let h = &clause.headers;
    assert_eq!(h.len(), 4);
    assert_eq!(h[0].rule, HeaderRule::Present(true));
    assert_eq!(
        (h[1].rule.clone(), h[1].invert),
        (HeaderRule::Present(true), true)
    );
    let HeaderRule::Value(StringMatch::Regex(r)) = &h[2].rule else {
        panic!("case-insensitive prefix becomes a regex: {:?}", h[2])
    };
    assert!(r.is_match("A.B-anything") && !r.is_match("axb"));
    assert_eq!(h[3].name, http::header::CONTENT_TYPE);
    assert_eq!(
        h[3].rule,
        HeaderRule::Value(StringMatch::Prefix("application/grpc".into()))
    );
}

#[test]
fn path_separated_prefix_matches_whole_segments() {
    let m = rpb::RouteMatch {
        path_specifier: Some(rpb::route_match::PathSpecifier::PathSeparatedPrefix(
            "/api".into(),
        )),
        ..Default::default()
    };
    let (t, _) = table(&config(vec![route(m, to_cluster("c"))]));
    let PathMatch::Regex(r) = &t.virtual_hosts()[0].routes[0].matches[0].path else {
        panic!("regex")
    };
    assert!(r.is_match("/api") && r.is_match("/api/v1"));
    assert!(!r.is_match("/apis"));
}

#[test]
fn routes_grpc_skips_are_recorded_not_applied() {
    let with_query = route(
        rpb::RouteMatch {
            query_parameters: vec![rpb::QueryParameterMatcher {
                name: "q".into(),
                ..Default::default()
            }],
            ..prefix("/")
        },
        to_cluster("a"),
    );
    let by_header = route(
        prefix("/"),
        rpb::RouteAction {
            cluster_specifier: Some(rpb::route_action::ClusterSpecifier::ClusterHeader(
                "x-cluster".into(),
            )),
            ..Default::default()
        },
    );
    let (t, ignored) = table(&config(vec![
        with_query,
        by_header,
        route(prefix("/"), to_cluster("b")),
    ]));
    assert_eq!(t.virtual_hosts()[0].routes.len(), 1);
    assert_eq!(
        ignored,
        [
            "virtual_hosts[0].routes[0].match.query_parameters",
            "virtual_hosts[0].routes[1].route.cluster_header"
        ]
    );
}

#[test]
fn retry_policy_follows_grfc_a44() {
    let mut rp = rpb::RetryPolicy {
        retry_on: "unavailable,envoy-ratelimited".into(),
        num_retries: Some(UInt32Value { value: 10 }),
        retry_back_off: Some(rpb::retry_policy::RetryBackOff {
            base_interval: Some(dur(0, 100)),
            max_interval: None,
        }),
        ..Default::default()
    };
    let mut ignored = Vec::new();
    let p = retry_policy(&rp, "r", &mut ignored).unwrap().unwrap();
    assert_eq!(p.num_retries, 4, "attempts are capped at 5");
    assert_eq!(
        p.retry_on.conditions,
        mesh_core::model::RetryConditions::UNAVAILABLE
    );
    assert_eq!(p.backoff.base, Duration::from_millis(100));
    assert_eq!(p.backoff.max, Duration::from_secs(1), "10x base by default");
    assert!(!p.ignore_previous_hosts);
    assert_eq!(ignored, ["r.retry_on: \"envoy-ratelimited\""]);

    rp.retry_on = "envoy-ratelimited".into();
    assert_eq!(
        retry_policy(&rp, "r", &mut Vec::new()).unwrap(),
        None,
        "nothing converts"
    );

    rp.retry_on = "cancelled".into();
    rp.num_retries = None;
    rp.retry_back_off = None;
    let p = retry_policy(&rp, "r", &mut Vec::new()).unwrap().unwrap();
    assert_eq!(p.num_retries, 1, "Envoy's default num_retries");
    assert_eq!(p.backoff.base, Duration::from_millis(25));
    assert_eq!(p.backoff.max, Duration::from_millis(250));

    rp.retry_back_off = Some(rpb::retry_policy::RetryBackOff {
        base_interval: Some(dur(1, 0)),
        max_interval: Some(dur(0, 500)),
    });
    assert_eq!(
        retry_policy(&rp, "r", &mut Vec::new()).unwrap_err(),
        "r.retry_back_off.max_interval: 500ms is below base_interval 1s"
    );
}

#[test]
fn header_mutations_merge_levels_and_outer_set_wins() {
    let hv = |k: &str, v: &str, action: i32| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.into(),
            value: v.into(),
            raw_value: Vec::new(),
        }),
        append_action: action,
        ..Default::default()
    };
    let mut r = route(prefix("/"), to_cluster("c"));
    r.request_headers_to_add = vec![hv("x-a", "route", 2), hv("x-add", "1", 0)];
    r.response_headers_to_remove = vec!["x-secret".into()];
    let mut rc = config(vec![r]);
    rc.virtual_hosts[0].request_headers_to_add = vec![hv("x-a", "vhost", 2)];
    let (t, _) = table(&rc);
    let RouteAction::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
        panic!()
    };
    let set: Vec<(&str, &str)> = f
        .request_headers
        .set
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(set, [("x-a", "vhost")]);
    assert_eq!(f.request_headers.add.len(), 1);
    assert_eq!(f.response_headers.remove[0].as_str(), "x-secret");

    rc.most_specific_header_mutations_wins = true;
    let (t, _) = table(&rc);
    let RouteAction::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
        panic!()
    };
    assert_eq!(f.request_headers.set[0].1.to_str().unwrap(), "route");
}

#[test]
fn fault_overrides_most_specific_wins_and_disabled_clears() {
    let fc = rpb::FilterConfig {
        config: None,
        is_optional: false,
        disabled: true,
    };
    let mut vh_level = config(vec![route(prefix("/a"), to_cluster("c")), {
        let mut r = route(prefix("/b"), to_cluster("c"));
        r.typed_per_filter_config = HashMap::from([(
            ISTIO_FAULT_FILTER.to_owned(),
            any(
                "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                &fc,
            ),
        )]);
        r
    }]);
    vh_level.virtual_hosts[0].typed_per_filter_config = HashMap::from([(
        ISTIO_FAULT_FILTER.to_owned(),
        any(super::FAULT_TYPE, &fault_abort_grpc(14, 100)),
    )]);
    let (t, _) = table(&vh_level);
    let fault = |i: usize| match &t.virtual_hosts()[0].routes[i].action {
        RouteAction::Forward(f) => f.fault,
        _ => panic!(),
    };
    assert_eq!(
        fault(0).and_then(|f| f.abort).map(|a| a.status),
        Some(AbortStatus::Grpc(14))
    );
    assert_eq!(
        fault(1),
        None,
        "a disabled override clears the virtual host's"
    );
}

#[test]
fn direct_response_redirect_and_non_forwarding_actions() {
    let direct = rpb::Route {
        r#match: Some(prefix("/d")),
        action: Some(rpb::route::Action::DirectResponse(
            rpb::DirectResponseAction {
                status: 418,
                body: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString("tea".into())),
                    ..Default::default()
                }),
                body_format: None,
            },
        )),
        ..Default::default()
    };
    let redirect = rpb::Route {
        r#match: Some(prefix("/r")),
        action: Some(rpb::route::Action::Redirect(rpb::RedirectAction {
            host_redirect: "new.example".into(),
            response_code: 3,
            scheme_rewrite_specifier: Some(
                rpb::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
            ),
            ..Default::default()
        })),
        ..Default::default()
    };
    let nfa = rpb::Route {
        r#match: Some(prefix("/")),
        action: Some(rpb::route::Action::NonForwardingAction(Default::default())),
        ..Default::default()
    };
    let (t, ignored) = table(&config(vec![direct, redirect, nfa]));
    let r = &t.virtual_hosts()[0].routes;
    let RouteAction::DirectResponse(d) = &r[0].action else {
        panic!()
    };
    assert_eq!((d.status, d.body.as_deref()), (418, Some(&b"tea"[..])));
    let RouteAction::Redirect(rd) = &r[1].action else {
        panic!()
    };
    assert_eq!(rd.status, 307);
    assert_eq!(rd.scheme.as_deref(), Some("https"));
    assert_eq!(rd.authority.as_deref(), Some("new.example"));
    let RouteAction::DirectResponse(n) = &r[2].action else {
        panic!()
    };
    assert_eq!(
        n.status, 503,
        "gRFC A36: a client fails non-forwarding routes"
    );
    assert_eq!(
        ignored,
        ["virtual_hosts[0].routes[2].non_forwarding_action"]
    );
}

#[test]
fn defaults_from_the_listener_apply_where_routes_set_nothing() {
    let rc = config(vec![route(prefix("/"), to_cluster("c"))]);
    let defaults = HttpDefaults {
        fault_filter: Some((
            Arc::from("fault"),
            FaultPolicy {
                delay: None,
                abort: Some(FaultAbort {
                    status: AbortStatus::Http(503),
                    fraction: Fraction::ALL,
                }),
            },
        )),
        max_stream_duration: Some(Duration::from_secs(7)),
    };
    assert!(!defaults.is_default());
    let d = route_configuration(&rc.encode_to_vec(), &DecodeContext::default(), &defaults).unwrap();
    let XdsResource::RouteConfiguration(t) = d.resource else {
        panic!()
    };
    let RouteAction::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
        panic!()
    };
    assert_eq!(f.timeout, Some(Duration::from_secs(7)));
    assert_eq!(
        f.fault.and_then(|f| f.abort).map(|a| a.status),
        Some(AbortStatus::Http(503))
    );
}

// --- one test per rejection rule -------------------------------------------

#[test]
fn nack_weighted_clusters_summing_to_zero() {
    let r = route(
        prefix("/"),
        rpb::RouteAction {
            cluster_specifier: Some(weighted(&[("a", 0), ("b", 0)])),
            ..Default::default()
        },
    );
    assert_eq!(
        reason(&config(vec![r])),
        "virtual_hosts[0].routes[0].route.weighted_clusters: weights sum to 0"
    );
}

#[test]
fn nack_total_weight_that_differs_from_the_sum() {
    let mut spec = weighted(&[("a", 60), ("b", 30)]);
    if let rpb::route_action::ClusterSpecifier::WeightedClusters(w) = &mut spec {
        #[allow(deprecated)]
        {
            w.total_weight = Some(UInt32Value { value: 100 });
        }
    }
    let r = route(
        prefix("/"),
        rpb::RouteAction {
            cluster_specifier: Some(spec),
            ..Default::default()
        },
    );
    assert_eq!(
        reason(&config(vec![r])),
        "virtual_hosts[0].routes[0].route.weighted_clusters.total_weight: 100 differs from the sum of the weights, 90"
    );
}

#[test]
fn nack_invalid_regex() {
    let m = rpb::RouteMatch {
        path_specifier: Some(rpb::route_match::PathSpecifier::SafeRegex(
            mpb::RegexMatcher {
                regex: "/a(b".into(),
                engine_type: None,
            },
        )),
        ..Default::default()
    };
    let r = reason(&config(vec![route(m, to_cluster("c"))]));
    assert!(
        r.starts_with("virtual_hosts[0].routes[0].match.safe_regex.regex: invalid regex \"/a(b\""),
        "{r}"
    );
}

#[test]
fn nack_range_header_matcher() {
    let m = rpb::RouteMatch {
        headers: vec![rpb::HeaderMatcher {
            name: "x-n".into(),
            header_match_specifier: Some(rpb::header_matcher::HeaderMatchSpecifier::RangeMatch(
                envoy_types::pb::envoy::r#type::v3::Int64Range { start: 1, end: 5 },
            )),
            ..Default::default()
        }],
        ..prefix("/")
    };
    assert_eq!(
        reason(&config(vec![route(m, to_cluster("c"))])),
        "virtual_hosts[0].routes[0].match.headers[0].range_match: [1, 5) range matchers are not supported"
    );
}

#[test]
fn nack_partial_runtime_fraction() {
    let m = rpb::RouteMatch {
        runtime_fraction: Some(core::RuntimeFractionalPercent {
            default_value: Some(percent(25)),
            runtime_key: String::new(),
        }),
        ..prefix("/")
    };
    assert_eq!(
        reason(&config(vec![route(m, to_cluster("c"))])),
        "virtual_hosts[0].routes[0].match.runtime_fraction: matching 25% of requests is not supported"
    );
}

#[test]
fn nack_regex_rewrite() {
    let a = rpb::RouteAction {
        regex_rewrite: Some(mpb::RegexMatchAndSubstitute {
            pattern: Some(mpb::RegexMatcher {
                regex: "a".into(),
                engine_type: None,
            }),
            substitution: "b".into(),
        }),
        ..to_cluster("c")
    };
    assert_eq!(
        reason(&config(vec![route(prefix("/"), a)])),
        "virtual_hosts[0].routes[0].route.regex_rewrite: not supported"
    );
}

#[test]
fn nack_header_driven_fault() {
    let f = faultpb::HttpFault {
        abort: Some(faultpb::FaultAbort {
            error_type: Some(faultpb::fault_abort::ErrorType::HeaderAbort(
                Default::default(),
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut r = route(prefix("/"), to_cluster("c"));
    r.typed_per_filter_config =
        HashMap::from([(ISTIO_FAULT_FILTER.to_owned(), any(super::FAULT_TYPE, &f))]);
    assert_eq!(
        reason(&config(vec![r])),
        "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].abort.header_abort: not supported"
    );
}

#[test]
fn nack_unknown_per_route_filter_config_unless_optional() {
    let mut r = route(prefix("/"), to_cluster("c"));
    r.typed_per_filter_config = HashMap::from([(
        "x".to_owned(),
        Any {
            type_url: "type.googleapis.com/acme.Filter".into(),
            value: Vec::new(),
        },
    )]);
    assert_eq!(
        reason(&config(vec![r.clone()])),
        "virtual_hosts[0].routes[0].typed_per_filter_config[\"x\"]: unsupported filter config type \"type.googleapis.com/acme.Filter\""
    );
    let wrapped = rpb::FilterConfig {
        config: Some(Any {
            type_url: "type.googleapis.com/acme.Filter".into(),
            value: Vec::new(),
        }),
        is_optional: true,
        disabled: false,
    };
    r.typed_per_filter_config = HashMap::from([(
        "x".to_owned(),
        any(
            "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            &wrapped,
        ),
    )]);
    let (_, ignored) = table(&config(vec![r]));
    assert_eq!(
        ignored,
        ["virtual_hosts[0].routes[0].typed_per_filter_config[\"x\"]"]
    );
}

#[test]
fn nack_duplicate_domains() {
    let mut rc = config(vec![route(prefix("/"), to_cluster("c"))]);
    let mut second = rc.virtual_hosts[0].clone();
    second.name = "other".into();
    second.domains = vec!["REVIEWS".into()];
    rc.virtual_hosts.push(second);
    assert_eq!(
        reason(&rc),
        format!(
            "virtual_hosts[1].domains[0]: domain \"reviews\" is already served by virtual host \"{NAME}\""
        )
    );
}

#[test]
fn hash_policy_becomes_the_route_key_and_replaces_the_cds_placeholder() {
    use mesh_core::model::{Cluster, HashKey, LbPolicy};
    use rpb::route_action::hash_policy::{self as hp, PolicySpecifier as H};
    let policy = |spec: H| rpb::route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    };
    let a = rpb::RouteAction {
        hash_policy: vec![
            policy(H::FilterState(hp::FilterState {
                key: "io.grpc.channel_id".into(),
            })),
            policy(H::Header(hp::Header {
                header_name: "X-User".into(),
                regex_rewrite: None,
            })),
            policy(H::ConnectionProperties(hp::ConnectionProperties {
                source_ip: true,
            })),
        ],
        ..to_cluster("ring")
    };
    let (t, ignored) = table(&config(vec![route(prefix("/"), a)]));
    let RouteAction::Forward(f) = &t.virtual_hosts()[0].routes[0].action else {
        panic!()
    };
    let key = HashKey::Header(http::HeaderName::from_static("x-user"));
    assert_eq!(f.hash_policy, Some(key.clone()));
    assert_eq!(
        ignored,
        [
            "virtual_hosts[0].routes[0].route.hash_policy[0]",
            "virtual_hosts[0].routes[0].route.hash_policy[2]"
        ]
    );

    let placeholder = HashKey::Header(http::HeaderName::from_static(
        super::super::ROUTE_HASH_POLICY_HEADER,
    ));
    let ring = |name: &str| {
        Cluster::new(name).with_lb_policy(LbPolicy::RingHash {
            key: placeholder.clone(),
            minimum_ring_size: 1024,
            maximum_ring_size: 8 << 20,
        })
    };
    let mut clusters = vec![ring("ring"), ring("other")];
    assert!(resolve_route_hash_keys([&t], &mut clusters).is_empty());
    let LbPolicy::RingHash { key: got, .. } = &clusters[0].lb_policy else {
        panic!()
    };
    assert_eq!(got, &key);
    let LbPolicy::RingHash { key: untouched, .. } = &clusters[1].lb_policy else {
        panic!()
    };
    assert_eq!(
        untouched, &placeholder,
        "no route asks: random, as gRFC A42 says"
    );
}
