//! Translation of Istio YAML, checked through the resources it produces
//! and through offline route checks.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::check::{CheckError, CheckRequest, check_route};
use crate::model::{EndpointAddress, LbPolicy, Protocol};
use crate::snapshot::NoRoute;

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: default }
spec:
  hosts: [reviews]
  ports:
  - { number: 9080, name: http, protocol: HTTP }
  resolution: STATIC
  endpoints:
  - { address: 10.0.0.1, labels: { app: reviews, version: v1 } }
  - { address: 10.0.0.2, labels: { app: reviews, version: v2 } }
  - { address: 10.0.0.3, labels: { app: reviews, version: v3 }, ports: { http: 9999 }, weight: 3 }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: ratings, namespace: default }
spec:
  hosts: [ratings]
  ports:
  - { number: 50051, name: grpc }
  resolution: STATIC
  endpoints:
  - { address: 10.0.1.1 }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
  subsets:
  - name: v1
    labels: { version: v1 }
  - name: v2
    labels: { version: v2 }
    trafficPolicy:
      loadBalancer: { simple: RANDOM }
  - name: v3
    labels: { version: v3 }
"#;

fn with(extra: &str) -> String {
    format!("{SERVICES}---\n{extra}")
}

fn parse(text: &str) -> Translation {
    match FileSource::parse_str("mesh.yaml", text) {
        Ok(t) => t,
        Err(e) => panic!("unexpected error:\n{e}"),
    }
}

fn error(text: &str) -> String {
    FileSource::parse_str("mesh.yaml", text)
        .expect_err("expected an error")
        .to_string()
}

fn check(t: &Translation, req: CheckRequest) -> Result<crate::RouteCheck, CheckError> {
    check_route(&t.snapshot().unwrap(), &req)
}

fn get(url: &str) -> CheckRequest {
    CheckRequest::get(url).unwrap()
}

fn subsets(c: &crate::RouteCheck) -> Vec<(Option<&str>, u32)> {
    c.destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

#[test]
fn service_entries_become_listeners_tables_clusters_and_endpoints() {
    let t = parse(SERVICES);
    let snap = t.snapshot().unwrap();
    assert!(snap.listener("0.0.0.0_9080").is_some());
    assert!(snap.listener("0.0.0.0_50051").is_some());
    let base = snap.cluster(&format!("outbound|9080||{REVIEWS}")).unwrap();
    assert_eq!(base.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(base.protocol, Protocol::Http1);
    assert_eq!(base.service.as_deref(), Some(REVIEWS));
    assert_eq!(base.connect_timeout, Duration::from_secs(10));
    let eps = snap
        .endpoints(&format!("outbound|9080||{REVIEWS}"))
        .unwrap();
    let addrs: Vec<String> = eps
        .endpoints()
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:9080", "10.0.0.2:9080", "10.0.0.3:9999"]);
    assert_eq!(eps.endpoints()[2].weight, 3);

    let grpc = snap
        .cluster("outbound|50051||ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        grpc.protocol,
        Protocol::Http2,
        "port named grpc speaks HTTP/2"
    );
    assert_eq!(
        grpc.lb_policy,
        LbPolicy::LeastRequest { choice_count: 2 },
        "Istio's default"
    );
}

#[test]
fn subsets_select_endpoints_by_labels_and_override_the_policy() {
    let snap = parse(SERVICES).snapshot().unwrap();
    let v1 = snap
        .endpoints(&format!("outbound|9080|v1|{REVIEWS}"))
        .unwrap();
    assert_eq!(
        v1.endpoints()[0].address,
        EndpointAddress::Socket(SocketAddr::from(([10, 0, 0, 1], 9080)))
    );
    assert_eq!(v1.endpoints().len(), 1);
    let v2 = snap
        .cluster(&format!("outbound|9080|v2|{REVIEWS}"))
        .unwrap();
    assert_eq!(
        v2.lb_policy,
        LbPolicy::Random,
        "subset policy overrides the rule's"
    );
    assert_eq!(v2.subset.as_deref(), Some("v2"));
    let v3 = snap
        .cluster(&format!("outbound|9080|v3|{REVIEWS}"))
        .unwrap();
    assert_eq!(
        v3.lb_policy,
        LbPolicy::RoundRobin,
        "inherits the rule's policy"
    );
}

#[test]
fn services_without_virtual_service_get_a_catch_all_route() {
    let t = parse(SERVICES);
    let c = check(&t, get("http://reviews:9080/anything")).unwrap();
    assert_eq!(
        c.destinations[0].cluster.as_str(),
        format!("outbound|9080||{REVIEWS}")
    );
    assert_eq!(c.destinations[0].endpoints, 3);
    assert_eq!(c.route_name.as_deref(), Some("default"));
}

#[test]
fn every_kubernetes_name_of_a_service_reaches_it() {
    let t = parse(SERVICES);
    for authority in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local:9080",
        "REVIEWS.default.svc.cluster.local",
    ] {
        let c = check(
            &t,
            CheckRequest::get("/")
                .unwrap()
                .header("host", authority)
                .unwrap(),
        );
        // Without a port the request is on port 80, which has no listener.
        if authority.contains(':') {
            assert!(c.is_ok(), "{authority}: {c:?}");
        } else {
            assert_eq!(
                c.unwrap_err(),
                CheckError::NoRoute(NoRoute::NoListener { port: 80 }),
                "{authority}"
            );
        }
    }
    let c = check(&t, get("http://reviews.default.svc:9080/"));
    assert!(c.is_ok());
    let other = check(&t, get("http://details:9080/")).unwrap_err();
    assert!(matches!(
        other,
        CheckError::NoRoute(NoRoute::NoVirtualHost { .. })
    ));
}

#[test]
fn short_names_resolve_only_in_the_clients_namespace() {
    let text = SERVICES.replace(
        "metadata: { name: reviews, namespace: default }",
        "metadata: { name: reviews, namespace: shop }",
    );
    let text = text.replace(
        "metadata: { name: reviews }\nspec:\n  host: reviews",
        "metadata: { name: reviews, namespace: shop }\nspec:\n  host: reviews",
    );
    let t = parse(&text);
    assert!(check(&t, get("http://reviews.shop:9080/")).is_ok());
    assert!(check(&t, get("http://reviews.shop.svc.cluster.local:9080/")).is_ok());
    assert!(
        check(&t, get("http://reviews:9080/")).is_err(),
        "the client runs in namespace default"
    );
    let in_shop = FileSource::new("mesh.yaml")
        .with_namespace("shop")
        .parse(&text)
        .unwrap();
    assert!(check(&in_shop, get("http://reviews:9080/")).is_ok());
}

#[test]
fn weighted_split_translates_weights_and_subsets() {
    let t = parse(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 90 }
    - { destination: { host: reviews, subset: v2 }, weight: 10 }
"#,
    ));
    let c = check(&t, get("http://reviews:9080/")).unwrap();
    assert_eq!(subsets(&c), [(Some("v1"), 90), (Some("v2"), 10)]);
    assert_eq!(c.destinations[0].share, 0.9);
    assert_eq!(c.destinations[1].endpoints, 1);
}

const ROUTES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - name: canary-header
    match:
    - headers: { x-canary: { exact: "true" } }
    route: [{ destination: { host: reviews, subset: v2 } }]
  - name: exact
    match: [{ uri: { exact: /health } }]
    route: [{ destination: { host: reviews, subset: v3 } }]
    timeout: 1.5s
  - name: regex
    match: [{ uri: { regex: "/users/[0-9]+" } }]
    route: [{ destination: { host: reviews, subset: v3 } }]
  - name: prefix-and-method
    match: [{ uri: { prefix: /api }, method: { exact: POST } }]
    route: [{ destination: { host: reviews, subset: v2 } }]
  - name: either
    match:
    - uri: { prefix: /a/ }
    - uri: { prefix: /b/ }
    route: [{ destination: { host: reviews, subset: v2 } }]
  - name: present-and-absent
    match:
    - headers: { x-debug: {} }
      withoutHeaders: { x-skip: {} }
    route: [{ destination: { host: reviews, subset: v3 } }]
  - name: header-prefix-and-regex
    match:
    - headers:
        user-agent: { prefix: curl/ }
        x-tenant: { regex: "t-[a-z]+" }
    route: [{ destination: { host: reviews, subset: v3 } }]
  - name: case-insensitive
    match: [{ uri: { exact: /CamelCase }, ignoreUriCase: true }]
    route: [{ destination: { host: reviews, subset: v3 } }]
  - name: authority
    match: [{ authority: { prefix: reviews.default } }]
    route: [{ destination: { host: reviews, subset: v3 } }]
  - name: fallback
    match: [{ uri: { prefix: / } }]
    route: [{ destination: { host: reviews, subset: v1 } }]
"#;

fn route_name(t: &Translation, req: CheckRequest) -> String {
    check(t, req)
        .map(|c| c.route_name.map(|n| n.to_string()).unwrap_or_default())
        .unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn routes_match_in_order_and_first_match_wins() {
    let t = parse(&with(ROUTES));
    let h = |req: CheckRequest, name: &str, value: &str| req.header(name, value).unwrap();
    assert_eq!(
        route_name(&t, h(get("http://reviews:9080/health"), "x-canary", "true")),
        "canary-header"
    );
    assert_eq!(
        route_name(
            &t,
            h(get("http://reviews:9080/health"), "x-canary", "false")
        ),
        "exact"
    );
    assert_eq!(route_name(&t, get("http://reviews:9080/health")), "exact");
    assert_eq!(
        route_name(&t, get("http://reviews:9080/health/x")),
        "fallback"
    );
    assert_eq!(
        route_name(&t, get("http://reviews:9080/health?probe=1")),
        "exact",
        "query excluded"
    );
    assert_eq!(route_name(&t, get("http://reviews:9080/users/42")), "regex");
    assert_eq!(
        route_name(&t, get("http://reviews:9080/users/42/x")),
        "fallback",
        "regex matches whole paths"
    );
    assert_eq!(
        route_name(&t, get("http://reviews:9080/users/abc")),
        "fallback"
    );
    assert_eq!(
        route_name(
            &t,
            CheckRequest::new("POST", "http://reviews:9080/api/v1").unwrap()
        ),
        "prefix-and-method"
    );
    assert_eq!(
        route_name(&t, get("http://reviews:9080/api/v1")),
        "fallback",
        "GET fails the method condition"
    );
    assert_eq!(route_name(&t, get("http://reviews:9080/a/1")), "either");
    assert_eq!(route_name(&t, get("http://reviews:9080/b/1")), "either");
    assert_eq!(
        route_name(&t, h(get("http://reviews:9080/x"), "x-debug", "")),
        "present-and-absent"
    );
    assert_eq!(
        route_name(
            &t,
            h(
                h(get("http://reviews:9080/x"), "x-debug", "1"),
                "x-skip",
                "1"
            )
        ),
        "fallback",
        "withoutHeaders inverts"
    );
    assert_eq!(
        route_name(
            &t,
            h(
                h(get("http://reviews:9080/x"), "user-agent", "curl/8.0"),
                "x-tenant",
                "t-abc"
            )
        ),
        "header-prefix-and-regex"
    );
    assert_eq!(
        route_name(
            &t,
            h(
                h(get("http://reviews:9080/x"), "user-agent", "curl/8.0"),
                "x-tenant",
                "t-ABC"
            )
        ),
        "fallback",
        "both header conditions must hold"
    );
    assert_eq!(
        route_name(&t, get("http://reviews:9080/camelcase")),
        "case-insensitive"
    );
    assert_eq!(
        route_name(&t, get("http://reviews.default:9080/zzz")),
        "authority"
    );
}

#[test]
fn route_timeouts_are_parsed() {
    let t = parse(&with(ROUTES));
    let c = check(&t, get("http://reviews:9080/health")).unwrap();
    assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    let c = check(&t, get("http://reviews:9080/other")).unwrap();
    assert_eq!(c.timeout, None, "Istio: disabled by default");
}

#[test]
fn no_matching_route_is_an_error_not_a_fallthrough() {
    let t = parse(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ uri: { prefix: /only } }]
    route: [{ destination: { host: reviews } }]
"#,
    ));
    assert!(check(&t, get("http://reviews:9080/only/x")).is_ok());
    let err = check(&t, get("http://reviews:9080/other")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no route of virtual host \"{REVIEWS}:9080\" (route table \"9080\") matches")
    );
}

#[test]
fn three_way_split_and_port_selection() {
    let t = parse(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route:
    - { destination: { host: reviews, subset: v1, port: { number: 9080 } }, weight: 50 }
    - { destination: { host: reviews, subset: v2 }, weight: 30 }
    - { destination: { host: reviews, subset: v3 }, weight: 20 }
"#,
    ));
    let c = check(&t, get("http://reviews:9080/")).unwrap();
    assert_eq!(
        subsets(&c),
        [(Some("v1"), 50), (Some("v2"), 30), (Some("v3"), 20)]
    );
}

#[test]
fn dns_resolution_keeps_host_names() {
    let t = parse(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: external }
spec:
  hosts: [api.example.com]
  ports: [{ number: 443, name: http-tls, protocol: HTTP }]
  resolution: DNS
"#,
    );
    let snap = t.snapshot().unwrap();
    let eps = snap.endpoints("outbound|443||api.example.com").unwrap();
    assert_eq!(
        eps.endpoints()[0].address,
        EndpointAddress::Dns {
            host: "api.example.com".into(),
            port: 443
        }
    );
    assert!(check(&t, get("http://api.example.com:443/")).is_ok());
}

#[test]
fn unsupported_fields_and_kinds_are_reported_not_dropped() {
    let t = parse(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews } }]
    corsPolicy: { allowOrigins: [{ exact: "https://example.com" }] }
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: { name: ingress }
spec: {}
"#,
    ));
    assert_eq!(
        t.warnings(),
        [
            "mesh.yaml: document 4 (VirtualService reviews): http[0].corsPolicy: not supported yet; ignored",
            "mesh.yaml: document 5 (Gateway ingress): kind Gateway (networking.istio.io/v1) is not supported yet; document ignored",
        ]
    );
}

// --- errors, by exact message ---

#[test]
fn malformed_yaml_names_file_document_and_line() {
    let text = format!(
        "{SERVICES}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: broken\nspec: {{}}\n"
    );
    // The parser notices the unclosed mapping on the next line, 'spec'.
    let line = text.lines().position(|l| l == "spec: {}").unwrap() + 1;
    assert_eq!(
        error(&text),
        format!(
            "mesh.yaml: document 4: invalid YAML at line {line}, column 5: while parsing a flow mapping, did not find expected ',' or '}}'"
        )
    );
    assert_eq!(
        error("a: [1, 2\n"),
        "mesh.yaml: document 1: invalid YAML at line 1, column 4: unclosed bracket '['"
    );
}

#[test]
fn weights_must_sum_to_100() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 80 }
    - { destination: { host: reviews, subset: v2 }, weight: 10 }
"#,
    ));
    assert_eq!(
        err,
        "mesh.yaml: document 4 (VirtualService reviews): http[0].route[1].weight: weights sum to 90, expected 100"
    );
}

#[test]
fn unknown_subset_is_an_error() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews, subset: v9 } }]
"#,
    ));
    assert_eq!(
        err,
        format!(
            "mesh.yaml: document 4 (VirtualService reviews): http[0].route[0].destination.subset: unknown subset \"v9\" for host \"{REVIEWS}\""
        )
    );
}

#[test]
fn negative_timeout_is_an_error() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews } }]
    timeout: -1s
"#,
    ));
    assert_eq!(
        err,
        "mesh.yaml: document 4 (VirtualService reviews): http[0].timeout: invalid duration \"-1s\": must not be negative"
    );
}

#[test]
fn unknown_fields_are_errors_with_a_hint() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews }, wieght: 100 }]
"#,
    ));
    assert_eq!(
        err,
        "mesh.yaml: document 4 (VirtualService reviews): http[0].route[0].wieght: unknown field (did you mean \"weight\"?)"
    );
}

#[test]
fn unknown_destination_host_is_an_error() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: details } }]
"#,
    ));
    assert_eq!(
        err,
        "mesh.yaml: document 4 (VirtualService reviews): http[0].route[0].destination.host: no ServiceEntry declares host \"details.default.svc.cluster.local\""
    );
}

#[test]
fn match_conditions_that_cannot_be_honoured_are_errors() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ queryParams: { debug: { exact: "1" } } }]
    route: [{ destination: { host: reviews } }]
"#,
    ));
    assert_eq!(
        err,
        "mesh.yaml: document 4 (VirtualService reviews): http[0].match[0].queryParams: not supported yet (a route cannot ignore a match condition)"
    );
}

#[test]
fn invalid_regex_and_several_errors_at_once() {
    let err = error(&with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - match: [{ uri: { regex: "a(" } }]
    route: [{ destination: { host: reviews } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: ratings }
spec:
  host: ratings
  trafficPolicy: { loadBalancer: { simple: FASTEST } }
"#,
    ));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("mesh.yaml: document 4 (VirtualService reviews): http[0].match[0].uri.regex: invalid regex \"a(\""),
        "{err}"
    );
    assert_eq!(
        lines[1],
        "mesh.yaml: document 5 (DestinationRule ratings): trafficPolicy.loadBalancer.simple: unknown policy \"FASTEST\" (expected ROUND_ROBIN, LEAST_REQUEST or RANDOM)"
    );
}

#[test]
fn missing_and_mistyped_fields() {
    assert_eq!(
        error("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nspec: {}\n"),
        "mesh.yaml: document 1: metadata: required"
    );
    assert_eq!(
        error(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: x }\nspec:\n  hosts: [x]\n  resolution: STATIC\n  ports: [{ number: \"80\", name: http }]\n"
        ),
        "mesh.yaml: document 1 (ServiceEntry x): ports[0].number: expected an integer, found a string"
    );
    assert_eq!(
        error(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: x }\nspec:\n  hosts: [x]\n  resolution: STATIC\n  ports: [{ number: 70000, name: http }]\n"
        ),
        "mesh.yaml: document 1 (ServiceEntry x): ports[0].number: 70000 is out of range (1 to 65535)"
    );
    assert_eq!(
        error(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: x }\nspec:\n  hosts: [x]\n  ports: [{ number: 80, name: http }]\n"
        ),
        "mesh.yaml: document 1 (ServiceEntry x): resolution: the default, NONE, is not supported: the mesh client needs endpoints to balance over; use STATIC or DNS"
    );
    assert_eq!(
        error(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: x }\nspec:\n  hosts: [x]\n  resolution: STATIC\n  ports: [{ number: 80, name: http }]\n  endpoints: [{ address: example.com }]\n"
        ),
        "mesh.yaml: document 1 (ServiceEntry x): endpoints[0].address: \"example.com\" is not an IP address, which resolution STATIC requires"
    );
}

#[test]
fn duplicate_hosts_name_the_other_document() {
    let err = error(&format!(
        "{SERVICES}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: again }}\nspec:\n  hosts: [reviews]\n  resolution: STATIC\n  ports: [{{ number: 80, name: http }}]\n"
    ));
    assert_eq!(
        err,
        format!(
            "mesh.yaml: document 4 (ServiceEntry again): hosts[0]: host \"{REVIEWS}\" is already declared by document 1 (ServiceEntry reviews)"
        )
    );
}

#[test]
fn empty_documents_count_in_the_numbering() {
    let err = error(
        "---\n# nothing here\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nspec: {}\n",
    );
    assert_eq!(err, "mesh.yaml: document 2: metadata: required");
}

#[test]
fn an_empty_file_is_an_empty_config() {
    let t = parse("# no services yet\n");
    assert!(t.resources.clusters.is_empty());
    assert!(t.warnings().is_empty());
}

#[test]
fn warnings_and_rejections_reach_the_store_status() {
    let dir = std::env::temp_dir().join(format!("mesh-core-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mesh.yaml");
    std::fs::write(&path, with("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: ratings }\nspec:\n  host: ratings\n  trafficPolicy: { tunnel: { protocol: CONNECT, targetHost: x, targetPort: 1 } }\n")).unwrap();
    let store = crate::ConfigStore::new();
    let source = FileSource::new(&path);
    let v = source.publish(&store).unwrap();
    let status = store.source_status(&source.source_id()).unwrap();
    assert_eq!(status.accepted_version, Some(v));
    assert_eq!(
        &*status.warnings,
        [format!(
            "{}: document 4 (DestinationRule ratings): trafficPolicy.tunnel: not supported yet; ignored",
            path.display()
        )]
    );

    std::fs::write(&path, "kind: [").unwrap();
    let err = source.publish(&store).unwrap_err();
    assert_eq!(store.version(), v, "the last good config stays");
    let status = store.source_status(&source.source_id()).unwrap();
    assert_eq!(status.last_rejection.unwrap().reason, err.to_string());
    assert_eq!(status.accepted_version, Some(v));
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- traffic shaping: fault, rewrite, headers, mirror, redirect, directResponse ---

fn vs_route(http: &str) -> String {
    with(&format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: reviews }}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    ))
}

fn first_route(t: &Translation) -> crate::model::Route {
    let snap = t.snapshot().unwrap();
    let table = snap.route_table("9080").unwrap();
    let vh = table
        .virtual_hosts()
        .iter()
        .find(|v| v.name.starts_with(REVIEWS))
        .unwrap();
    vh.routes[0].clone()
}

fn forward(t: &Translation) -> crate::model::ForwardAction {
    match first_route(t).action {
        crate::model::RouteAction::Forward(f) => *f,
        other => panic!("not a forward: {other:?}"),
    }
}

#[test]
fn faults_translate_with_percentages() {
    use crate::model::{AbortStatus, Fraction};
    let t = parse(&vs_route(
        r#"  - route: [{ destination: { host: reviews } }]
    fault:
      delay: { fixedDelay: 5s, percentage: { value: 12.5 } }
      abort: { grpcStatus: UNAVAILABLE, percent: 3 }
"#,
    ));
    let fault = forward(&t).fault.unwrap();
    let delay = fault.delay.unwrap();
    assert_eq!(delay.delay, Duration::from_secs(5));
    assert_eq!(delay.fraction, Fraction::from_percent(12.5).unwrap());
    let abort = fault.abort.unwrap();
    assert_eq!(abort.status, AbortStatus::Grpc(14));
    assert_eq!(
        abort.fraction,
        Fraction::from_ppm(30_000),
        "legacy integer percent"
    );

    let t = parse(&vs_route(
        r#"  - route: [{ destination: { host: reviews } }]
    fault:
      abort: { httpStatus: 503 }
"#,
    ));
    let abort = forward(&t).fault.unwrap().abort.unwrap();
    assert_eq!(abort.status, AbortStatus::Http(503));
    // Istio's translateFault leaves an unset percentage unset, which
    // Envoy reads as 0%.
    assert_eq!(abort.fraction, Fraction::NONE);
    assert_eq!(
        t.warnings(),
        [
            "mesh.yaml: document 4 (VirtualService reviews): http[0].fault.abort.percentage: not set: as in Istio, the fault applies to no request"
        ]
    );
}

#[test]
fn fault_errors_name_the_field() {
    let cases = [
        (
            "abort: { http2Error: 7, percentage: { value: 1 } }",
            "http[0].fault.abort.http2Error: not supported",
        ),
        (
            "abort: { grpcStatus: \"14\" }",
            "http[0].fault.abort.grpcStatus: unknown gRPC status \"14\" (expected a name such as UNAVAILABLE)",
        ),
        (
            "abort: { httpStatus: 503, grpcStatus: UNAVAILABLE }",
            "http[0].fault.abort: only one of httpStatus and grpcStatus may be set",
        ),
        (
            "abort: { httpStatus: 999 }",
            "http[0].fault.abort.httpStatus: 999 is out of range (200 to 599)",
        ),
        (
            "delay: { exponentialDelay: 1s }",
            "http[0].fault.delay.exponentialDelay: not supported",
        ),
        (
            "delay: { fixedDelay: 1s, percentage: { value: 101 } }",
            "http[0].fault.delay.percentage.value: 101 is out of range (0 to 100)",
        ),
    ];
    for (fault, expected) in cases {
        let err = error(&vs_route(&format!(
            "  - route: [{{ destination: {{ host: reviews }} }}]\n    fault: {{ {fault} }}\n"
        )));
        assert_eq!(
            err,
            format!("mesh.yaml: document 4 (VirtualService reviews): {expected}"),
            "for {fault}"
        );
    }
}

#[test]
fn rewrite_headers_and_mirror_translate() {
    use crate::model::Fraction;
    let t = parse(&vs_route(
        r#"  - match: [{ uri: { prefix: /old } }]
    route: [{ destination: { host: reviews, subset: v1 } }]
    rewrite: { uri: /new, authority: reviews-v2 }
    headers:
      request: { set: { x-a: "1" }, add: { x-b: "2" }, remove: [x-c] }
      response: { set: { x-d: "4" } }
    mirror: { host: reviews, subset: v2 }
    mirrorPercentage: { value: 25 }
"#,
    ));
    let f = forward(&t);
    let rewrite = f.rewrite.unwrap();
    assert_eq!(rewrite.path_prefix.as_deref(), Some("/new"));
    assert_eq!(rewrite.authority.as_deref(), Some("reviews-v2"));
    assert_eq!(f.request_headers.set[0].0, "x-a");
    assert_eq!(f.request_headers.add[0].1, "2");
    assert_eq!(f.request_headers.remove[0], "x-c");
    assert_eq!(f.response_headers.set[0].0, "x-d");
    assert_eq!(f.mirrors.len(), 1);
    assert_eq!(
        f.mirrors[0].cluster.as_str(),
        format!("outbound|9080|v2|{REVIEWS}")
    );
    assert_eq!(f.mirrors[0].fraction, Fraction::from_percent(25.0).unwrap());

    assert!(f.target_headers.is_empty(), "no destination edits headers");

    let t = parse(&vs_route(
        r#"  - route:
    - { destination: { host: reviews, subset: v1 }, weight: 50, headers: { request: { set: { x-v: "1" } } } }
    - { destination: { host: reviews, subset: v2 }, weight: 50 }
"#,
    ));
    let f = forward(&t);
    assert_eq!(f.target_headers.len(), 2, "one entry per target");
    assert_eq!(f.target_headers[0].0.set[0].1, "1");
    assert!(f.target_headers[1].0.is_empty());

    // istio.io VirtualService reference, `mirrorPercentage`: "If this
    // field is absent, all the traffic (100%) will be mirrored."
    let t = parse(&vs_route(
        r#"  - route: [{ destination: { host: reviews } }]
    mirror: { host: reviews, subset: v3 }
"#,
    ));
    assert_eq!(forward(&t).mirrors[0].fraction, Fraction::ALL);
}

#[test]
fn redirect_and_direct_response_answer_locally() {
    use crate::model::RouteAction;
    let t = parse(&vs_route(
        r#"  - redirect: { uri: /v2, authority: new.example.com, port: 8443, scheme: https }
"#,
    ));
    let RouteAction::Redirect(r) = first_route(&t).action else {
        panic!("not a redirect");
    };
    // istio.io VirtualService reference, `HTTPRedirect.redirectCode`:
    // "Defaults to 301."
    assert_eq!(r.status, 301);
    assert_eq!(r.path.as_deref(), Some("/v2"));
    assert_eq!(r.port, Some(8443));
    assert_eq!(r.scheme.as_deref(), Some("https"));

    let t = parse(&vs_route(
        r#"  - directResponse: { status: 503, body: { bytes: aGVsbG8= } }
"#,
    ));
    let RouteAction::DirectResponse(d) = first_route(&t).action else {
        panic!("not a direct response");
    };
    assert_eq!((d.status, d.body.as_deref()), (503, Some(&b"hello"[..])));
}

#[test]
fn shaping_errors_name_the_field() {
    let cases = [
        (
            "  - route: [{ destination: { host: reviews } }]\n    rewrite: { uriRegexRewrite: { match: a, rewrite: b } }\n",
            "http[0].rewrite.uriRegexRewrite: not supported",
        ),
        (
            "  - redirect: { uri: /x, derivePort: FROM_REQUEST_PORT }\n",
            "http[0].redirect.derivePort: not supported",
        ),
        (
            "  - redirect: { uri: /x, redirectCode: 200 }\n",
            "http[0].redirect.redirectCode: 200 is not a redirect code (expected 301, 302, 303, 307 or 308)",
        ),
        (
            "  - redirect: { uri: /x }\n    route: [{ destination: { host: reviews } }]\n",
            "http[0].route: cannot be combined with redirect or directResponse",
        ),
        (
            "  - directResponse: { status: 200 }\n    fault: { abort: { httpStatus: 500 } }\n",
            "http[0].fault: applies to forwarded requests only; cannot be combined with redirect or directResponse",
        ),
        (
            "  - directResponse: { status: 200, body: { string: a, bytes: YQ== } }\n",
            "http[0].directResponse.body: exactly one of string and bytes is required",
        ),
        (
            "  - route: [{ destination: { host: reviews } }]\n    headers: { request: { set: { host: x } } }\n",
            "http[0].headers.request.set[\"host\"]: header \"host\" cannot be edited; use rewrite.authority",
        ),
        (
            "  - route: [{ destination: { host: reviews } }]\n    mirror: { host: nowhere }\n",
            "http[0].mirror.host: no ServiceEntry declares host \"nowhere.default.svc.cluster.local\"",
        ),
        (
            "  - route: [{ destination: { host: reviews } }]\n    mirrorPercentage: { value: 5 }\n",
            "http[0].mirrorPercentage: set without mirror",
        ),
    ];
    for (http, expected) in cases {
        assert_eq!(
            error(&vs_route(http)),
            format!("mesh.yaml: document 4 (VirtualService reviews): {expected}"),
            "for {http}"
        );
    }
}

// --- EnvoyFilter: local rate limits ---

fn envoy_filter(body: &str) -> String {
    with(&format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{ name: rl, namespace: default }}\nspec:\n{body}"
    ))
}

/// The inbound example of istio.io "Enabling Rate Limits using Envoy"
/// (local rate limit), as users write it.
const INBOUND_RL: &str = r#"  workloadSelector:
    labels: { app: productpage }
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener:
        filterChain:
          filter:
            name: "envoy.filters.network.http_connection_manager"
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket:
              max_tokens: 4
              tokens_per_fill: 4
              fill_interval: 60s
            filter_enabled:
              runtime_key: local_rate_limit_enabled
              default_value: { numerator: 100, denominator: HUNDRED }
            filter_enforced:
              runtime_key: local_rate_limit_enforced
              default_value: { numerator: 100, denominator: HUNDRED }
"#;

#[test]
fn inbound_local_rate_limit_becomes_a_server_listener() {
    use crate::model::{Labels, ListenerKind, TokenBucket};
    let t = parse(&envoy_filter(INBOUND_RL));
    let snap = t.snapshot().unwrap();
    let l = snap.listener("inbound|0|default/rl|0").unwrap();
    assert_eq!(l.port, 0, "no portNumber: every port");
    let ListenerKind::Server(policy) = &l.kind else {
        panic!("not a server listener");
    };
    assert_eq!(
        policy.rate_limit,
        Some(TokenBucket {
            max_tokens: 4,
            tokens_per_fill: 4,
            fill_interval: Duration::from_secs(60),
        })
    );
    assert_eq!(
        policy.workload_selector,
        Labels::new([("app", "productpage")])
    );
}

#[test]
fn outbound_local_rate_limit_goes_on_each_cluster_of_the_port() {
    let t = parse(&envoy_filter(
        r#"  configPatches:
  - applyTo: HTTP_FILTER
    match: { context: SIDECAR_OUTBOUND, listener: { portNumber: 9080 } }
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          stat_prefix: rl
          token_bucket: { max_tokens: 10, fill_interval: 1s }
          filter_enabled: { default_value: { numerator: 1000000, denominator: MILLION } }
          filter_enforced: { default_value: { numerator: 100 } }
"#,
    ));
    let snap = t.snapshot().unwrap();
    for subset in ["", "v1", "v2", "v3"] {
        let c = snap
            .cluster(&format!("outbound|9080|{subset}|{REVIEWS}"))
            .unwrap();
        let b = c.rate_limit.unwrap();
        // Envoy `TokenBucket.tokens_per_fill`: "If not specified,
        // defaults to a single token."
        assert_eq!((b.max_tokens, b.tokens_per_fill), (10, 1));
    }
    let ratings = snap
        .cluster("outbound|50051||ratings.default.svc.cluster.local")
        .unwrap();
    assert_eq!(ratings.rate_limit, None, "another port");
}

#[test]
fn local_rate_limit_filter_is_off_unless_enabled_and_enforced() {
    // Envoy `LocalRateLimit.filter_enabled` / `filter_enforced`: "Defaults
    // to 0% of requests for safety."
    let body = INBOUND_RL.replace(
        "            filter_enforced:\n              runtime_key: local_rate_limit_enforced\n              default_value: { numerator: 100, denominator: HUNDRED }\n",
        "",
    );
    let t = parse(&envoy_filter(&body));
    assert!(
        t.snapshot()
            .unwrap()
            .listener("inbound|0|default/rl|0")
            .is_none()
    );
    assert_eq!(
        t.warnings(),
        [
            "mesh.yaml: document 4 (EnvoyFilter rl): configPatches[0].patch.value.typed_config.value.filter_enforced: 0% (Envoy's default when unset): the filter limits no request"
        ]
    );
}

#[test]
fn envoy_filter_errors_name_the_field() {
    let p = "configPatches[0]";
    let cases: Vec<(String, String)> = vec![
        (
            INBOUND_RL.replace("applyTo: HTTP_FILTER", "applyTo: CLUSTER"),
            format!("{p}.applyTo: CLUSTER is not supported (only HTTP_FILTER patches inserting envoy.filters.http.local_ratelimit)"),
        ),
        (
            INBOUND_RL.replace("context: SIDECAR_INBOUND", "context: GATEWAY"),
            format!("{p}.match.context: GATEWAY is not supported (expected SIDECAR_INBOUND or SIDECAR_OUTBOUND)"),
        ),
        (
            INBOUND_RL.replace("context: SIDECAR_INBOUND", "context: SIDECAR_OUTBOUND"),
            "workloadSelector: not supported with SIDECAR_OUTBOUND: a mesh client has no workload labels to match".into(),
        ),
        (
            INBOUND_RL.replace("name: envoy.filters.http.local_ratelimit", "name: envoy.filters.http.lua"),
            format!("{p}.patch.value.name: filter \"envoy.filters.http.lua\" is not supported (only envoy.filters.http.local_ratelimit)"),
        ),
        (
            INBOUND_RL.replace("fill_interval: 60s", "fill_interval: 10ms"),
            format!("{p}.patch.value.typed_config.value.token_bucket.fill_interval: 10ms is below Envoy's minimum of 50ms"),
        ),
        (
            INBOUND_RL.replace("max_tokens: 4", "max_tokens: 0"),
            format!("{p}.patch.value.typed_config.value.token_bucket.max_tokens: must be at least 1"),
        ),
        (
            INBOUND_RL.replace("stat_prefix: http_local_rate_limiter", "stat_prefix: x\n            descriptors: []"),
            format!("{p}.patch.value.typed_config.value.descriptors: unknown field"),
        ),
        (
            INBOUND_RL.replacen("numerator: 100", "numerator: 50", 1),
            format!("{p}.patch.value.typed_config.value.filter_enabled.default_value: a share between 0% and 100% is not supported: the mesh limits all requests or none"),
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            error(&envoy_filter(&body)),
            format!("mesh.yaml: document 4 (EnvoyFilter rl): {expected}"),
        );
    }
}

// --- Linkerd ServiceProfile and SMI TrafficSplit ---

const SPLIT_SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: web }
spec:
  hosts: [web, web-v1, web-v2]
  ports: [{ number: 8080, name: http }]
  resolution: STATIC
  endpoints: [{ address: 10.0.2.1 }]
"#;

fn linkerd(extra: &str) -> String {
    format!("{SPLIT_SERVICES}---\n{extra}")
}

const WEB: &str = "web.default.svc.cluster.local";

fn web_routes(t: &Translation) -> Vec<crate::model::Route> {
    let snap = t.snapshot().unwrap();
    let table = snap.route_table("8080").unwrap();
    let vh = table
        .virtual_hosts()
        .iter()
        .find(|v| *v.name == *format!("{WEB}:8080"))
        .unwrap();
    vh.routes.to_vec()
}

fn fwd(r: &crate::model::Route) -> &crate::model::ForwardAction {
    match &r.action {
        crate::model::RouteAction::Forward(f) => f,
        other => panic!("not a forward: {other:?}"),
    }
}

#[test]
fn traffic_split_weights_accept_quantities() {
    for (version, w1, w2) in [
        ("v1alpha1", "900m", "100m"),
        ("v1alpha2", "900", "100"),
        ("v1alpha4", "\"0.9\"", "\"0.1\""),
    ] {
        let t = parse(&linkerd(&format!(
            "apiVersion: split.smi-spec.io/{version}\nkind: TrafficSplit\nmetadata: {{ name: web }}\nspec:\n  service: web\n  backends:\n  - {{ service: web-v1, weight: {w1} }}\n  - {{ service: web-v2, weight: {w2} }}\n"
        )));
        let routes = web_routes(&t);
        assert_eq!(routes.len(), 1, "just Linkerd's default route");
        let split = &fwd(&routes[0]).clusters;
        let shares: Vec<(String, f64)> = split
            .targets()
            .iter()
            .map(|t| {
                (
                    t.cluster.as_str().to_owned(),
                    f64::from(t.weight) / f64::from(split.total()),
                )
            })
            .collect();
        assert_eq!(
            shares,
            [
                (
                    "outbound|8080||web-v1.default.svc.cluster.local".to_owned(),
                    0.9
                ),
                (
                    "outbound|8080||web-v2.default.svc.cluster.local".to_owned(),
                    0.1
                ),
            ],
            "{version}"
        );
    }
}

const PROFILE: &str = r#"apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: { name: web.default.svc.cluster.local, namespace: default }
spec:
  routes:
  - name: GET /books/{id}
    condition:
      all:
      - method: GET
      - any:
        - pathRegex: /books/[^/]+
        - pathRegex: /authors/[^/]+
    isRetryable: true
    timeout: 300ms
    responseClasses:
    - condition: { status: { min: 500, max: 502 } }
      isFailure: true
    - condition: { all: [{ status: { min: 503 } }, { not: { status: { min: 504 } } }] }
      isFailure: false
  - name: POST /books
    condition: { method: POST }
  retryBudget:
    retryRatio: 0.5
    minRetriesPerSecond: 3
    ttl: 20s
"#;

#[test]
fn service_profile_routes_translate_with_their_policies() {
    use crate::model::{PathMatch, RetryBudget, StringMatch};
    let t = parse(&linkerd(PROFILE));
    let routes = web_routes(&t);
    let names: Vec<_> = routes.iter().map(|r| r.name.as_deref().unwrap()).collect();
    assert_eq!(names, ["GET /books/{id}", "POST /books", "default"]);

    // all [GET, any [a, b]] is two clauses, each with the method.
    let clauses = &routes[0].matches;
    assert_eq!(clauses.len(), 2);
    for c in clauses.iter() {
        assert_eq!(c.method, Some(StringMatch::Exact("GET".into())));
        assert!(matches!(c.path, PathMatch::Regex(_)));
    }
    let get = fwd(&routes[0]);
    assert_eq!(get.timeout, Some(Duration::from_millis(300)));
    // First matching class decides; unmatched statuses: any 5xx fails.
    assert!(get.is_failure(502) && !get.is_failure(503) && get.is_failure(504));
    assert!(!get.is_failure(200) && !get.is_failure(404));
    let retry = get.retry.as_ref().unwrap();
    let expected: Vec<u16> = (500..=599).filter(|s| *s != 503).collect();
    assert_eq!(&*retry.retry_on.status_codes, &expected[..]);
    assert!(
        retry.retry_non_idempotent,
        "isRetryable: always safe to retry"
    );

    // linkerd.io ServiceProfile reference: a route's timeout defaults to 10s.
    let post = fwd(&routes[1]);
    assert_eq!(post.timeout, Some(Duration::from_secs(10)));
    assert!(post.retry.is_none());
    assert!(post.is_failure(503), "default class: any 5xx is a failure");
    assert!(fwd(&routes[2]).retry.is_none(), "Linkerd's default route");

    let snap = t.snapshot().unwrap();
    let cluster = snap.cluster(&format!("outbound|8080||{WEB}")).unwrap();
    assert_eq!(
        cluster.retry_budget,
        RetryBudget {
            ratio: 0.5,
            min_per_second: 3,
            ttl: Duration::from_secs(20),
        }
    );
}

#[test]
fn retry_budget_fields_default_to_linkerds() {
    let t = parse(&linkerd(
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: { name: web.default.svc.cluster.local }\nspec:\n  retryBudget: { retryRatio: 0.1 }\n",
    ));
    let snap = t.snapshot().unwrap();
    let b = snap
        .cluster(&format!("outbound|8080||{WEB}"))
        .unwrap()
        .retry_budget;
    // linkerd.io: 20% plus 10 retries per second over 10 s by default.
    assert_eq!(
        (b.ratio, b.min_per_second, b.ttl),
        (0.1, 10, Duration::from_secs(10))
    );
}

#[test]
fn linkerd_errors_name_the_field() {
    let sp = |spec: &str| {
        format!(
            "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {{ name: web.default.svc.cluster.local }}\nspec:\n{spec}"
        )
    };
    let ts = |spec: &str| {
        format!(
            "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {{ name: web }}\nspec:\n{spec}"
        )
    };
    let cases = [
        (
            sp("  routes:\n  - name: r\n    condition: { not: { method: GET } }\n"),
            "ServiceProfile web.default.svc.cluster.local): routes[0].condition.not: not supported: routes cannot negate a condition",
        ),
        (
            sp("  routes:\n  - name: r\n    condition: { method: GET, pathRegex: /x }\n"),
            "ServiceProfile web.default.svc.cluster.local): routes[0].condition: exactly one of pathRegex, method, all, any and not is required, found pathRegex and method",
        ),
        (
            sp(
                "  routes:\n  - name: r\n    condition: { all: [{ pathRegex: /a }, { pathRegex: /b }] }\n",
            ),
            "ServiceProfile web.default.svc.cluster.local): routes[0].condition.all[1]: not supported: two path (or two method) conditions in one all",
        ),
        (
            sp(
                "  routes:\n  - name: r\n    condition: { method: GET }\n    responseClasses: [{ condition: { status: { min: 503, max: 500 } }, isFailure: true }]\n",
            ),
            "ServiceProfile web.default.svc.cluster.local): routes[0].responseClasses[0].condition.status: min 503 is above max 500",
        ),
        (
            ts("  service: web\n  backends: [{ service: web-v1, weight: 9x }]\n"),
            "TrafficSplit web): backends[0].weight: invalid weight \"9x\": expected an integer or a quantity such as 900m",
        ),
        (
            ts("  service: web\n  backends: [{ service: nowhere, weight: 1 }]\n"),
            "TrafficSplit web): backends[0].service: no ServiceEntry declares host \"nowhere.default.svc.cluster.local\"",
        ),
        (
            ts("  service: web\n  backends: [{ service: web-v1, weight: 0 }]\n"),
            "TrafficSplit web): backends: weights sum to 0",
        ),
        (
            ts(
                "  service: web\n  matches: [{ kind: HTTPRouteGroup, name: x }]\n  backends: [{ service: web-v1, weight: 1 }]\n",
            ),
            "TrafficSplit web): matches: not supported (HTTPRouteGroup matches)",
        ),
    ];
    for (doc, expected) in cases {
        assert_eq!(
            error(&linkerd(&doc)),
            format!("mesh.yaml: document 2 ({expected}"),
        );
    }
    assert_eq!(
        error(&linkerd(
            "apiVersion: linkerd.io/v1alpha1\nkind: ServiceProfile\nmetadata: { name: web }\nspec: {}\n"
        )),
        "mesh.yaml: document 2 (ServiceProfile web): apiVersion: unsupported version \"linkerd.io/v1alpha1\" for ServiceProfile (expected linkerd.io/v1alpha2)"
    );
    let both = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: web }}\nspec:\n  hosts: [web]\n  http: [{{ route: [{{ destination: {{ host: web }} }}] }}]\n",
        linkerd(&ts(
            "  service: web\n  backends: [{ service: web-v1, weight: 1 }]\n"
        ))
    );
    assert_eq!(
        error(&both),
        "mesh.yaml: document 2 (TrafficSplit web): host \"web.default.svc.cluster.local\" is also routed by document 3 (VirtualService web); use either Istio or Linkerd routing for a host"
    );
}

// --- Telemetry (tracing) ---

#[test]
fn telemetry_tracing_is_read_with_levels_modes_and_tags() {
    let t = parse(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system }
spec:
  tracing:
  - randomSamplingPercentage: 1.5
    providers: [{ name: zipkin }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: reviews, namespace: bookinfo }
spec:
  selector: { matchLabels: { app: reviews } }
  tracing:
  - match: { mode: SERVER }
    randomSamplingPercentage: 100
    disableSpanReporting: false
    customTags:
      team: { literal: { value: books } }
      pod: { environment: { name: POD_NAME, defaultValue: unknown } }
      user: { header: { name: X-User } }
  metrics: [{ providers: [{ name: prometheus }] }]
"#,
    );
    let snap = t.snapshot().unwrap();
    let policies = snap.telemetry();
    assert_eq!(policies.len(), 2);
    assert_eq!(&*policies[0].scope.namespace, "istio-system");
    assert_eq!(policies[0].tracing[0].random_sampling_percentage, Some(1.5));
    let reviews = &policies[1];
    assert!(reviews.scope.selector.is_some());
    let tr = &reviews.tracing[0];
    assert_eq!(tr.mode, crate::model::TracingMode::Server);
    assert_eq!(tr.random_sampling_percentage, Some(100.0));
    assert_eq!(tr.disable_span_reporting, Some(false));
    assert_eq!(
        tr.custom_tags.iter().map(|(n, _)| &**n).collect::<Vec<_>>(),
        ["pod", "team", "user"]
    );
    assert!(tr.custom_tags.iter().any(|(_, t)| *t
        == crate::model::CustomTag::Header {
            name: "x-user".into(),
            default: None
        }));
    assert_eq!(
        t.warnings(),
        [
            "mesh.yaml: document 1 (Telemetry mesh-default): tracing[0].providers: not supported \
             yet; ignored",
            "mesh.yaml: document 2 (Telemetry reviews): metrics: not supported yet; ignored",
        ]
    );
}

#[test]
fn bad_telemetry_is_rejected_with_its_place() {
    let doc = |spec: &str| {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{ name: t }}\nspec:\n{spec}"
        )
    };
    let e = error(&doc("  tracing: [{ randomSamplingPercentage: 101 }]\n"));
    assert!(
        e.contains(
            "document 1 (Telemetry t): tracing[0].randomSamplingPercentage: 101 is out of range"
        ),
        "{e}"
    );
    let e = error(&doc("  tracing: [{ match: { mode: BOTH } }]\n"));
    assert!(
        e.contains("tracing[0].match.mode: unknown mode \"BOTH\""),
        "{e}"
    );
    let e = error(&doc(
        "  targetRefs: [{ kind: Gateway, name: gw }]\n  tracing: [{ randomSamplingPercentage: 5 }]\n",
    ));
    assert!(
        e.contains("targetRefs: targetRef(s) select gateways"),
        "{e}"
    );
    let e = error(&doc(
        "  tracing: [{ customTags: { a: { literal: { value: x }, header: { name: y } } } }]\n",
    ));
    assert!(
        e.contains("tracing[0].customTags[\"a\"]: exactly one of"),
        "{e}"
    );
    let e = error(
        "apiVersion: telemetry.istio.io/v2\nkind: Telemetry\nmetadata: { name: t }\nspec: {}\n",
    );
    assert!(e.contains("unsupported version"), "{e}");
}
