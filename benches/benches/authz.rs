//! The authorization decision for a 20-policy set (issue 4 target: under
//! 1 µs and zero allocations): 5 DENY, 1 AUDIT and 14 ALLOW policies
//! mixing principals, namespaces, paths, methods, headers, ports and IP
//! blocks, read from Istio YAML through the file source. Each decision
//! normalizes the path and evaluates every policy a request can reach.
//! Also prints heap allocations per decision, counted by an instrumented
//! global allocator.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::alloc::System;
use std::fmt::Write;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use mesh_core::authz::{AuthzRequest, PathNormalization, PolicySet, normalize_path};
use mesh_core::file::FileSource;
use mesh_core::model::{Labels, Workload};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn policy(out: &mut String, name: &str, spec: &str) {
    write!(
        out,
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{ name: {name}, namespace: shop }}\nspec: {spec}\n"
    )
    .unwrap();
}

/// 20 policies for `app: cart` in `shop`.
fn twenty_policies() -> PolicySet {
    let mut y = String::new();
    policy(
        &mut y,
        "deny-admin",
        "{ action: DENY, rules: [{ to: [{ operation: { paths: [/admin*, /debug/*] } }] }] }",
    );
    policy(
        &mut y,
        "deny-outside",
        "{ action: DENY, rules: [{ from: [{ source: { ipBlocks: [192.168.0.0/16, 172.16.0.0/12] } }] }] }",
    );
    policy(
        &mut y,
        "deny-other-ns",
        "{ action: DENY, rules: [{ from: [{ source: { notNamespaces: [shop, web, istio-system] } }] }] }",
    );
    policy(
        &mut y,
        "deny-delete",
        "{ action: DENY, rules: [{ to: [{ operation: { methods: [DELETE], paths: [/api/*] } }] }] }",
    );
    policy(
        &mut y,
        "deny-debug-header",
        "{ action: DENY, rules: [{ when: [{ key: \"request.headers[x-debug]\", values: [\"*\"] }] }] }",
    );
    policy(
        &mut y,
        "audit-pay",
        "{ action: AUDIT, rules: [{ to: [{ operation: { paths: [/api/pay/*] } }] }] }",
    );
    for i in 0..13 {
        policy(
            &mut y,
            &format!("allow-{i}"),
            &format!(
                "{{ rules: [{{ from: [{{ source: {{ principals: [cluster.local/ns/shop/sa/svc-{i}] }} }}], \
                 to: [{{ operation: {{ methods: [GET, POST], paths: [/v{i}/*], ports: [\"8080\"] }} }}], \
                 when: [{{ key: \"request.headers[x-tenant]\", values: [tenant-{i}] }}] }}] }}"
            ),
        );
    }
    policy(
        &mut y,
        "allow-web",
        "{ rules: [{ from: [{ source: { principals: [\"cluster.local/ns/web/*\"], ipBlocks: [10.0.0.0/8] } }], \
         to: [{ operation: { hosts: [\"cart.shop.svc:*\"], methods: [GET], paths: [/api/*] } }], \
         when: [{ key: \"request.headers[x-tenant]\", values: [\"acme*\"] }] }] }",
    );
    let t = FileSource::parse_str("bench.yaml", &y).unwrap();
    assert_eq!(t.resources.security.authorization_policies.len(), 20);
    PolicySet::for_workload(
        &t.resources.security,
        &Workload::new("shop", Labels::new([("app", "cart")])),
    )
}

fn headers(tenant: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-tenant", tenant.parse().unwrap());
    h.insert("user-agent", "bench/1.0".parse().unwrap());
    h.insert("accept", "*/*".parse().unwrap());
    h
}

fn decide(set: &PolicySet, raw_path: &str, headers: &HeaderMap, principal: &str) -> bool {
    let path = normalize_path(raw_path, PathNormalization::Base).unwrap();
    let ip: IpAddr = [10, 1, 2, 3].into();
    let mut req = AuthzRequest::new("GET", &path, headers).with_principal(principal);
    req.host = Some("cart.shop.svc:8080");
    req.source_ip = Some(ip);
    req.destination_port = Some(8080);
    set.evaluate(&req).verdict.is_allow()
}

fn authz(c: &mut Criterion) {
    let set = twenty_policies();
    let acme = headers("acme-corp");
    let web = "spiffe://cluster.local/ns/web/sa/frontend";
    let db = "spiffe://cluster.local/ns/shop/sa/db";
    // Allowed by the last ALLOW policy: every DENY and ALLOW policy is
    // evaluated.
    assert!(decide(&set, "/api/items/42?page=2", &acme, web));
    // Denied: no ALLOW policy matches this peer.
    assert!(!decide(&set, "/api/items/42", &acme, db));
    // Denied by the first DENY policy after normalization.
    assert!(!decide(&set, "/api/../admin/x", &acme, web));

    let cases: [(&str, &str, &str); 3] = [
        ("allow_last_of_20", "/api/items/42?page=2", web),
        ("deny_no_allow_match", "/api/items/42", db),
        ("deny_dot_segments", "/api/../admin/x", web),
    ];
    for (name, path, peer) in cases {
        mesh_benches::print_allocs(GLOBAL, &format!("authz/{name}"), || {
            black_box(decide(&set, black_box(path), &acme, peer));
        });
    }
    let mut group = c.benchmark_group("authz");
    for (name, path, peer) in cases {
        group.bench_function(name, |b| {
            b.iter(|| decide(&set, black_box(path), &acme, black_box(peer)))
        });
    }
    group.finish();
}

criterion_group!(benches, authz);
criterion_main!(benches);
