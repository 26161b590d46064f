//! RBAC → AuthorizationPolicy: istiod-shaped filters asserted value by
//! value and through the model's authorization engine, and the rules that
//! reject.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3 as rpb;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as filterpb;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::google::protobuf::UInt32Value;
use mesh_core::authz::{AuthzRequest, PolicySet};
use mesh_core::model::security::{
    AuthzAction, AuthzRule, Condition, ConditionKey, ConditionValues, IpBlock, OneOf, Operation,
    Source, StrPattern,
};
use mesh_core::model::{PolicyScope, Workload};

use crate::translate::listener::tests::{
    INBOUND, filter, istio_downstream_tls, istio_inbound, reason, resource,
};
use crate::translate::listener::{HCM_TYPE, RBAC_TYPE};

fn sm(p: mpb::string_matcher::MatchPattern, ignore_case: bool) -> mpb::StringMatcher {
    mpb::StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

fn exact(s: &str) -> mpb::StringMatcher {
    sm(mpb::string_matcher::MatchPattern::Exact(s.into()), false)
}

fn prefix(s: &str) -> mpb::StringMatcher {
    sm(mpb::string_matcher::MatchPattern::Prefix(s.into()), false)
}

fn regex(s: &str) -> mpb::StringMatcher {
    sm(
        mpb::string_matcher::MatchPattern::SafeRegex(mpb::RegexMatcher {
            regex: s.into(),
            engine_type: None,
        }),
        false,
    )
}

fn perm(rule: rpb::permission::Rule) -> rpb::Permission {
    rpb::Permission { rule: Some(rule) }
}

fn or_perms(rules: Vec<rpb::Permission>) -> rpb::Permission {
    perm(rpb::permission::Rule::OrRules(rpb::permission::Set {
        rules,
    }))
}

fn and_perms(rules: Vec<rpb::Permission>) -> rpb::Permission {
    perm(rpb::permission::Rule::AndRules(rpb::permission::Set {
        rules,
    }))
}

fn header(name: &str, m: mpb::StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn path(m: mpb::StringMatcher) -> rpb::Permission {
    perm(rpb::permission::Rule::UrlPath(mpb::PathMatcher {
        rule: Some(mpb::path_matcher::Rule::Path(m)),
    }))
}

fn id(i: rpb::principal::Identifier) -> rpb::Principal {
    rpb::Principal {
        identifier: Some(i),
    }
}

fn authn(m: mpb::StringMatcher) -> rpb::Principal {
    id(rpb::principal::Identifier::Authenticated(
        rpb::principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

fn or_ids(ids: Vec<rpb::Principal>) -> rpb::Principal {
    id(rpb::principal::Identifier::OrIds(rpb::principal::Set {
        ids,
    }))
}

fn and_ids(ids: Vec<rpb::Principal>) -> rpb::Principal {
    id(rpb::principal::Identifier::AndIds(rpb::principal::Set {
        ids,
    }))
}

fn any_id() -> rpb::Principal {
    id(rpb::principal::Identifier::Any(true))
}

fn rbac(action: i32, policies: Vec<(&str, rpb::Policy)>) -> filterpb::Rbac {
    filterpb::Rbac {
        rules: Some(rpb::Rbac {
            action,
            policies: policies
                .into_iter()
                .map(|(n, p)| (n.to_owned(), p))
                .collect::<HashMap<_, _>>(),
            audit_logging_options: None,
        }),
        ..Default::default()
    }
}

/// What istiod's `buildRBAC` generates for
///
/// ```yaml
/// action: ALLOW
/// rules:
/// - from: [{source: {principals: [cluster.local/ns/default/sa/sleep], namespaces: ["prod-*"]}}]
///   to: [{operation: {methods: [GET], paths: ["/info*"], notPaths: [/info/secret]}}]
///   when: [{key: "request.headers[x-token]", values: [abc]}]
/// ```
fn istio_allow() -> filterpb::Rbac {
    let permission = and_perms(vec![
        or_perms(vec![perm(rpb::permission::Rule::Header(header(
            ":method",
            exact("GET"),
        )))]),
        or_perms(vec![path(prefix("/info"))]),
        perm(rpb::permission::Rule::NotRule(Box::new(or_perms(vec![
            path(exact("/info/secret")),
        ])))),
        or_perms(vec![perm(rpb::permission::Rule::Header(header(
            "x-token",
            exact("abc"),
        )))]),
    ]);
    let principal = and_ids(vec![
        or_ids(vec![authn(exact(
            "spiffe://cluster.local/ns/default/sa/sleep",
        ))]),
        or_ids(vec![authn(regex(".*/ns/prod-.*/.*"))]),
    ]);
    rbac(
        0,
        vec![(
            "default-allow-sleep-0",
            rpb::Policy {
                permissions: vec![permission],
                principals: vec![principal],
                ..Default::default()
            },
        )],
    )
}

/// istiod's DENY filter for `notPorts`-free `to: [{operation: {hosts:
/// [admin.example.com]}}]` from any source.
fn istio_deny() -> filterpb::Rbac {
    rbac(
        1,
        vec![(
            "default-deny-admin-0",
            rpb::Policy {
                permissions: vec![and_perms(vec![or_perms(vec![perm(
                    rpb::permission::Rule::Header(header(
                        ":authority",
                        sm(
                            mpb::string_matcher::MatchPattern::Exact("Admin.example.com".into()),
                            true,
                        ),
                    )),
                )])])],
                principals: vec![any_id()],
                ..Default::default()
            },
        )],
    )
}

fn inbound_with(
    filters: Vec<filterpb::Rbac>,
) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    let names = ["envoy.filters.http.rbac.DENY", "envoy.filters.http.rbac"];
    istio_inbound(
        Some(istio_downstream_tls()),
        filters
            .iter()
            .enumerate()
            .map(|(i, r)| filter(names[i % 2], RBAC_TYPE, r))
            .collect(),
    )
}

#[test]
fn istio_inbound_rbac_translates_to_authorization_policies() {
    let (r, ignored) = resource(&inbound_with(vec![istio_deny(), istio_allow()]));
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(r.security.peer_authentications.len(), 1);
    let [deny, allow] = r.security.authorization_policies.as_slice() else {
        panic!("two policies: {:?}", r.security.authorization_policies)
    };
    let hcm = "filter_chains[0].filters[0].typed_config.http_filters";
    assert_eq!(
        deny.scope,
        PolicyScope::new(format!("{INBOUND}/{hcm}[0].typed_config"), "istio-system")
    );
    assert_eq!(deny.action, AuthzAction::Deny);
    assert_eq!(
        &*deny.rules,
        [AuthzRule {
            from: Arc::from([]),
            to: Arc::from([Operation {
                hosts: OneOf::new(vec![StrPattern::Exact("admin.example.com".into())], vec![]),
                ports: OneOf::new(vec![8080], vec![]),
                ..Operation::default()
            }]),
            when: Arc::from([]),
        }]
    );
    assert_eq!(allow.action, AuthzAction::Allow);
    assert!(!allow.dry_run);
    assert_eq!(
        &*allow.rules,
        [AuthzRule {
            from: Arc::from([Source {
                principals: OneOf::new(
                    vec![StrPattern::Exact(
                        "cluster.local/ns/default/sa/sleep".into()
                    )],
                    vec![]
                ),
                namespaces: OneOf::new(vec![StrPattern::Prefix("prod-".into())], vec![]),
                ..Source::default()
            }]),
            to: Arc::from([Operation {
                methods: OneOf::new(vec![StrPattern::Exact("GET".into())], vec![]),
                paths: OneOf::new(
                    vec![StrPattern::Prefix("/info".into())],
                    vec![StrPattern::Exact("/info/secret".into())]
                ),
                ports: OneOf::new(vec![8080], vec![]),
                ..Operation::default()
            }]),
            when: Arc::from([Condition {
                key: ConditionKey::RequestHeader(http::HeaderName::from_static("x-token")),
                values: ConditionValues::Strings(OneOf::new(
                    vec![StrPattern::Exact("abc".into())],
                    vec![]
                )),
            }]),
        }]
    );
}

/// The translated policies decide as the RBAC filters would.
#[test]
fn translated_rbac_decides_like_the_filters() {
    let (r, _) = resource(&inbound_with(vec![istio_deny(), istio_allow()]));
    let set = PolicySet::for_workload(
        &r.security,
        &Workload::new("default", mesh_core::model::Labels::default()),
    );
    let mut headers = http::HeaderMap::new();
    headers.insert("x-token", "abc".parse().unwrap());
    let decide =
        |method: &str, path: &str, host: &str, principal: &str, port: u16, h: &http::HeaderMap| {
            let mut req = AuthzRequest::new(method, path, h).with_principal(principal);
            req.host = Some(host);
            req.destination_port = Some(port);
            set.evaluate(&req).verdict.is_allow()
        };
    let sleep = "spiffe://cluster.local/ns/prod-eu/sa/sleep";
    let good = "spiffe://cluster.local/ns/default/sa/sleep";
    // The principal must be default/sleep AND in a prod-* namespace: no
    // identity is both, so nothing is allowed. Check each half fails.
    assert!(!decide("GET", "/info/a", "svc", sleep, 8080, &headers));
    assert!(!decide("GET", "/info/a", "svc", good, 8080, &headers));

    // A policy whose source is only the principal.
    let mut allow = istio_allow();
    if let Some(rules) = &mut allow.rules {
        for p in rules.policies.values_mut() {
            p.principals = vec![authn(exact("spiffe://cluster.local/ns/default/sa/sleep"))];
        }
    }
    let (r, _) = resource(&inbound_with(vec![istio_deny(), allow]));
    let set = PolicySet::for_workload(
        &r.security,
        &Workload::new("default", mesh_core::model::Labels::default()),
    );
    let decide = |method: &str, path: &str, host: &str, port: u16, h: &http::HeaderMap| {
        let mut req = AuthzRequest::new(method, path, h).with_principal(good);
        req.host = Some(host);
        req.destination_port = Some(port);
        set.evaluate(&req).verdict.is_allow()
    };
    assert!(decide("GET", "/info/a", "svc", 8080, &headers));
    assert!(
        !decide("GET", "/info/secret", "svc", 8080, &headers),
        "notPaths"
    );
    assert!(!decide("POST", "/info/a", "svc", 8080, &headers), "methods");
    assert!(
        !decide("GET", "/info/a", "svc", 8080, &http::HeaderMap::new()),
        "when"
    );
    assert!(
        !decide("GET", "/info/a", "ADMIN.example.com", 8080, &headers),
        "DENY first, any case"
    );
    assert!(
        !decide("GET", "/info/a", "svc", 9090, &headers),
        "an ALLOW scoped to its port allows nothing elsewhere"
    );
}

#[test]
fn allow_without_policies_denies_everything_on_its_port_only() {
    let (r, _) = resource(&inbound_with(vec![rbac(1, vec![]), rbac(0, vec![])]));
    let [p] = r.security.authorization_policies.as_slice() else {
        panic!("{:?}", r.security.authorization_policies)
    };
    assert_eq!(p.action, AuthzAction::Deny);
    assert_eq!(
        &*p.rules,
        [AuthzRule {
            to: Arc::from([Operation {
                ports: OneOf::new(vec![8080], vec![]),
                ..Operation::default()
            }]),
            ..AuthzRule::default()
        }]
    );
}

#[test]
fn ip_blocks_and_negated_principals_translate() {
    let principal = and_ids(vec![
        or_ids(vec![id(rpb::principal::Identifier::DirectRemoteIp(
            CidrRange {
                address_prefix: "10.0.0.0".into(),
                prefix_len: Some(UInt32Value { value: 8 }),
            },
        ))]),
        id(rpb::principal::Identifier::NotId(Box::new(or_ids(vec![
            authn(prefix("spiffe://cluster.local/ns/test/")),
        ])))),
    ]);
    let f = rbac(
        0,
        vec![(
            "p",
            rpb::Policy {
                permissions: vec![perm(rpb::permission::Rule::Any(true))],
                principals: vec![principal],
                ..Default::default()
            },
        )],
    );
    let (r, _) = resource(&inbound_with(vec![rbac(1, vec![]), f]));
    let src = &r.security.authorization_policies[0].rules[0].from[0];
    assert_eq!(
        src.ip_blocks.values[..],
        ["10.0.0.0/8".parse::<IpBlock>().unwrap()]
    );
    assert_eq!(
        src.principals.not_values[..],
        [StrPattern::Prefix("cluster.local/ns/test/".into())]
    );
}

// --- rejections ----------------------------------------------------------------

fn one_policy(
    action: i32,
    permission: rpb::Permission,
    principal: rpb::Principal,
) -> filterpb::Rbac {
    rbac(
        action,
        vec![(
            "p",
            rpb::Policy {
                permissions: vec![permission],
                principals: vec![principal],
                ..Default::default()
            },
        )],
    )
}

fn allow_reason(f: filterpb::Rbac) -> String {
    reason(&inbound_with(vec![rbac(1, vec![]), f]))
}

const RULES: &str =
    "filter_chains[0].filters[0].typed_config.http_filters[1].typed_config.rules.policies[\"p\"]";

#[test]
fn nack_cel_condition() {
    let mut f = one_policy(0, perm(rpb::permission::Rule::Any(true)), any_id());
    if let Some(r) = &mut f.rules {
        r.policies.get_mut("p").unwrap().condition = Some(Default::default());
    }
    assert_eq!(
        allow_reason(f),
        format!("{RULES}.condition: CEL conditions are not supported")
    );
}

#[test]
fn nack_grpc_and_scheme_header_matchers() {
    for name in ["grpc-timeout", ":scheme"] {
        let f = one_policy(
            1,
            perm(rpb::permission::Rule::Header(header(name, exact("x")))),
            any_id(),
        );
        assert_eq!(
            allow_reason(f),
            format!(
                "{RULES}.permissions[0].header.name: matching {name:?} is not supported (gRFC A41)"
            )
        );
    }
}

#[test]
fn nack_request_principal_metadata() {
    let f = one_policy(
        0,
        perm(rpb::permission::Rule::Any(true)),
        id(rpb::principal::Identifier::Metadata(Default::default())),
    );
    assert_eq!(
        allow_reason(f),
        format!(
            "{RULES}.principals[0].metadata: not supported (request principals need JWT metadata)"
        )
    );
}

#[test]
fn nack_or_across_attributes() {
    let f = one_policy(
        0,
        or_perms(vec![
            path(exact("/a")),
            perm(rpb::permission::Rule::DestinationPort(80)),
        ]),
        any_id(),
    );
    assert_eq!(
        allow_reason(f),
        format!(
            "{RULES}.permissions[0]: an OR across different request attributes is not supported"
        )
    );
}

#[test]
fn nack_case_sensitive_host() {
    let f = one_policy(
        0,
        perm(rpb::permission::Rule::Header(header(
            ":authority",
            exact("a.com"),
        ))),
        any_id(),
    );
    assert_eq!(
        allow_reason(f),
        format!(
            "{RULES}.permissions[0].header.string_match.ignore_case: case-sensitive matching is not supported here"
        )
    );
}

#[test]
fn nack_xff_trusted_hops_with_rbac() {
    let mut l = inbound_with(vec![istio_deny()]);
    let fc = &mut l.filter_chains[0];
    if let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) =
        &mut fc.filters[0].config_type
    {
        use prost::Message;
        let mut hcm = envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(a.value.as_slice()).unwrap();
        hcm.xff_num_trusted_hops = 1;
        a.type_url = HCM_TYPE.into();
        a.value = hcm.encode_to_vec();
    }
    assert_eq!(
        reason(&l),
        "filter_chains[0].filters[0].typed_config.xff_num_trusted_hops: 1 is not supported with RBAC"
    );
}
