//! The same intent through both sources: a VirtualService read by the
//! Istio file source, and the `RouteConfiguration` istiod's proxyless
//! generator sends for it (`pilot/pkg/networking/core/route`: weighted
//! subsets, `timeout` + `max_stream_duration`, the fault filter override,
//! header edits, Istio's retry policy), translated by `mesh-xds`. The
//! model values must be equal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use mesh_core::file::FileSource;
use mesh_core::model::{PathMatch, RouteAction, RouteTable};
use mesh_xds::pb::envoy::config::core::v3 as core;
use mesh_xds::pb::envoy::config::route::v3 as rpb;
use mesh_xds::pb::envoy::extensions::filters::http::fault::v3 as faultpb;
use mesh_xds::pb::envoy::r#type::matcher::v3 as mpb;
use mesh_xds::pb::envoy::r#type::v3::FractionalPercent;
use mesh_xds::pb::google::protobuf::{self, Any, BoolValue, UInt32Value};
use mesh_xds::{DecodeContext, TypeUrl, XdsResource};
use prost::Message;

const FQDN: &str = "reviews.default.svc.cluster.local";

const YAML: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: default }
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{ number: 9080, name: grpc, protocol: GRPC }]
  resolution: STATIC
  endpoints:
  - { address: 10.0.0.2, labels: { version: v2 } }
  - { address: 10.0.0.3, labels: { version: v3 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews, namespace: default }
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - { name: v2, labels: { version: v2 } }
  - { name: v3, labels: { version: v3 } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews, namespace: default }
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - name: canary
    match:
    - uri: { prefix: /reviews.Reviews/ }
      headers: { end-user: { exact: jason } }
    route:
    - { destination: { host: reviews.default.svc.cluster.local, subset: v2 }, weight: 90 }
    - { destination: { host: reviews.default.svc.cluster.local, subset: v3 }, weight: 10 }
    timeout: 2s
    retries: { attempts: 3, perTryTimeout: 1s, retryOn: "unavailable,5xx" }
    fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 50 } } }
    headers: { request: { set: { x-canary: "1" } } }
  - route:
    - destination: { host: reviews.default.svc.cluster.local, subset: v2 }
"#;

fn dur(s: i64) -> protobuf::Duration {
    protobuf::Duration {
        seconds: s,
        nanos: 0,
    }
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn cluster(subset: &str) -> String {
    format!("outbound|9080|{subset}|{FQDN}")
}

/// istiod's retry translation (`route/retry.ConvertPolicy`).
fn retry(on: &str, n: u32, per_try: Option<i64>, codes: Vec<u32>) -> rpb::RetryPolicy {
    rpb::RetryPolicy {
        retry_on: on.into(),
        num_retries: Some(UInt32Value { value: n }),
        per_try_timeout: per_try.map(dur),
        retriable_status_codes: codes,
        retry_host_predicate: vec![rpb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: None,
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn timeouts(
    s: i64,
) -> (
    Option<protobuf::Duration>,
    Option<rpb::route_action::MaxStreamDuration>,
) {
    (
        Some(dur(s)),
        Some(rpb::route_action::MaxStreamDuration {
            max_stream_duration: Some(dur(s)),
            grpc_timeout_header_max: Some(dur(s)),
            grpc_timeout_header_offset: None,
        }),
    )
}

fn istiod_route_configuration() -> rpb::RouteConfiguration {
    let (timeout, msd) = timeouts(2);
    let canary = rpb::Route {
        name: "canary".into(),
        r#match: Some(rpb::RouteMatch {
            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(
                "/reviews.Reviews/".into(),
            )),
            case_sensitive: Some(BoolValue { value: true }),
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
            ..Default::default()
        }),
        action: Some(rpb::route::Action::Route(rpb::RouteAction {
            cluster_specifier: Some(rpb::route_action::ClusterSpecifier::WeightedClusters(
                rpb::WeightedCluster {
                    clusters: [("v2", 90), ("v3", 10)]
                        .iter()
                        .map(|(s, w)| rpb::weighted_cluster::ClusterWeight {
                            name: cluster(s),
                            weight: Some(UInt32Value { value: *w }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )),
            timeout,
            max_stream_duration: msd,
            retry_policy: Some(retry("unavailable,5xx", 3, Some(1), vec![])),
            ..Default::default()
        })),
        request_headers_to_add: vec![core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: "x-canary".into(),
                value: "1".into(),
                raw_value: Vec::new(),
            }),
            append_action: 2,
            ..Default::default()
        }],
        typed_per_filter_config: HashMap::from([(
            "envoy.filters.http.fault".to_owned(),
            any(
                "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                &faultpb::HttpFault {
                    abort: Some(faultpb::FaultAbort {
                        percentage: Some(FractionalPercent {
                            numerator: 500_000,
                            denominator: 2,
                        }),
                        error_type: Some(faultpb::fault_abort::ErrorType::GrpcStatus(14)),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        )]),
        ..Default::default()
    };
    let (timeout, msd) = timeouts(0);
    let default = rpb::Route {
        r#match: Some(rpb::RouteMatch {
            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix("/".into())),
            case_sensitive: Some(BoolValue { value: true }),
            ..Default::default()
        }),
        action: Some(rpb::route::Action::Route(rpb::RouteAction {
            cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster(cluster("v2"))),
            timeout,
            max_stream_duration: msd,
            retry_policy: Some(retry(
                "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                2,
                None,
                vec![503],
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    rpb::RouteConfiguration {
        name: format!("{FQDN}:9080"),
        virtual_hosts: vec![rpb::VirtualHost {
            name: format!("{FQDN}:9080"),
            domains: vec![format!("{FQDN}:9080"), FQDN.into()],
            routes: vec![canary, default],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn from_xds() -> RouteTable {
    let rc = istiod_route_configuration();
    let d = mesh_xds::translate::decode(
        TypeUrl::RouteConfiguration,
        &any(TypeUrl::RouteConfiguration.as_str(), &rc),
        &DecodeContext::default(),
    )
    .unwrap();
    assert!(d.ignored.is_empty(), "{:?}", d.ignored);
    match d.resource {
        XdsResource::RouteConfiguration(t) => t,
        other => panic!("{other:?}"),
    }
}

fn from_file() -> RouteTable {
    let snap = FileSource::parse_str("mesh.yaml", YAML)
        .unwrap_or_else(|e| panic!("{e}"))
        .snapshot()
        .unwrap();
    let table = snap
        .route_table("9080")
        .expect("the file source's table for port 9080");
    (**table).clone()
}

#[test]
fn xds_and_the_file_source_give_the_same_routes_for_one_virtual_service() {
    let xds = from_xds();
    let file = from_file();
    let fvh = file
        .virtual_host(FQDN)
        .expect("the file source serves the FQDN");
    let xvh = xds.virtual_host(FQDN).expect("xDS serves the FQDN");
    assert_eq!(xvh.routes.len(), fvh.routes.len());

    // The canary route: same clause, same action, field by field.
    let (x, f) = (&xvh.routes[0], &fvh.routes[0]);
    assert_eq!(x.name, f.name);
    assert_eq!(x.matches, f.matches);
    let (RouteAction::Forward(xa), RouteAction::Forward(fa)) = (&x.action, &f.action) else {
        panic!("both forward: {x:?} / {f:?}")
    };
    assert_eq!(xa.clusters, fa.clusters);
    assert_eq!(xa.timeout, fa.timeout);
    assert_eq!(xa.retry, fa.retry);
    assert_eq!(xa.fault, fa.fault);
    assert_eq!(xa.request_headers, fa.request_headers);
    assert_eq!(xa.response_headers, fa.response_headers);
    assert_eq!(xa.rewrite, fa.rewrite);
    assert_eq!(xa.mirrors, fa.mirrors);
    assert_eq!(xa.target_headers, fa.target_headers);
    assert_eq!(xa, fa, "nothing else differs");

    // The catch-all: istiod writes `prefix: /`, the file source no clause;
    // both take every path, and the actions are equal.
    let (x, f) = (&xvh.routes[1], &fvh.routes[1]);
    assert_eq!(&x.matches[0].path, &PathMatch::Prefix("/".into()));
    assert!(f.matches.is_empty() || f.matches[0].path == PathMatch::Any);
    let (RouteAction::Forward(xa), RouteAction::Forward(fa)) = (&x.action, &f.action) else {
        panic!("both forward: {x:?} / {f:?}")
    };
    // One destination: istiod sends `cluster` (weight 1 in the model), the
    // file source keeps Istio's implicit weight 100. Same share: all.
    assert_eq!(shares(&xa.clusters), shares(&fa.clusters));
    let mut xa = (**xa).clone();
    xa.clusters = fa.clusters.clone();
    assert_eq!(&xa, &**fa);
}

fn shares(w: &mesh_core::model::WeightedClusters) -> Vec<(String, f64)> {
    w.targets()
        .iter()
        .map(|t| {
            (
                t.cluster.as_str().to_owned(),
                f64::from(t.weight) / f64::from(w.total()),
            )
        })
        .collect()
}
