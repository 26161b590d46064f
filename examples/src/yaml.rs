//! Mesh YAML for the demo's services, in Istio's kinds.

use std::fmt::Write;
use std::net::SocketAddr;

use crate::backends::Reviews;

/// A `ServiceEntry` for `host` on `port` with STATIC endpoints, each with a
/// `version` label. `protocol` is `HTTP`, `HTTP2` or `GRPC`.
pub fn service_entry(
    host: &str,
    port: u16,
    protocol: &str,
    endpoints: &[(SocketAddr, &str)],
) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {host}\nspec:\n  hosts: [{host}]\n  ports:\n  - {{ number: {port}, name: http, protocol: {protocol} }}\n  resolution: STATIC\n  endpoints:\n"
    );
    for (addr, version) in endpoints {
        let _ = writeln!(
            s,
            "  - {{ address: {}, ports: {{ http: {} }}, labels: {{ app: {host}, version: {version} }} }}",
            addr.ip(),
            addr.port()
        );
    }
    s
}

/// A `DestinationRule` for `host` with one subset per version and the
/// `simple` load balancer `lb`.
pub fn destination_rule(host: &str, lb: &str, versions: &[&str]) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {host}\nspec:\n  host: {host}\n  trafficPolicy:\n    loadBalancer: {{ simple: {lb} }}\n  subsets:\n"
    );
    for v in versions {
        let _ = writeln!(s, "  - {{ name: {v}, labels: {{ version: {v} }} }}");
    }
    s
}

/// How `reviews` traffic is split.
#[derive(Clone, Copy, Debug)]
pub enum Split<'a> {
    /// Subsets with weights summing to 100.
    Weights(&'a [(&'a str, u32)]),
    /// Requests with `header: value` go to `canary`, the rest to `stable`.
    Header {
        /// The header name.
        header: &'a str,
        /// Its value.
        value: &'a str,
        /// The subset for matching requests.
        canary: &'a str,
        /// The subset for the rest.
        stable: &'a str,
    },
}

/// A `VirtualService` for `host` that splits by `split`, with an optional
/// route timeout (`"100ms"`).
pub fn virtual_service(host: &str, split: &Split<'_>, timeout: Option<&str>) -> String {
    let mut s = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {host}\nspec:\n  hosts: [{host}]\n  http:\n"
    );
    let timeout = timeout
        .map(|t| format!("    timeout: {t}\n"))
        .unwrap_or_default();
    match split {
        Split::Weights(weights) => {
            s.push_str("  - route:\n");
            for (subset, w) in *weights {
                let _ = writeln!(
                    s,
                    "    - {{ destination: {{ host: {host}, subset: {subset} }}, weight: {w} }}"
                );
            }
            s.push_str(&timeout);
        }
        Split::Header {
            header,
            value,
            canary,
            stable,
        } => {
            let _ = write!(
                s,
                "  - match: [{{ headers: {{ {header}: {{ exact: \"{value}\" }} }} }}]\n    route: [{{ destination: {{ host: {host}, subset: {canary} }} }}]\n{timeout}  - route: [{{ destination: {{ host: {host}, subset: {stable} }} }}]\n{timeout}"
            );
        }
    }
    s
}

/// The whole file for `reviews` instances: a ServiceEntry on port 9080,
/// a DestinationRule with a subset per version, and a VirtualService.
pub fn reviews(instances: &[(&Reviews, &str)], split: &Split<'_>) -> String {
    reviews_with(instances, split, None, "ROUND_ROBIN")
}

/// [`reviews`] with a route timeout and a load balancer.
pub fn reviews_with(
    instances: &[(&Reviews, &str)],
    split: &Split<'_>,
    timeout: Option<&str>,
    lb: &str,
) -> String {
    let endpoints: Vec<(SocketAddr, &str)> =
        instances.iter().map(|(r, v)| (r.addr(), *v)).collect();
    let mut versions: Vec<&str> = Vec::new();
    for (_, v) in instances {
        if !versions.contains(v) {
            versions.push(v);
        }
    }
    [
        service_entry("reviews", 9080, "HTTP", &endpoints),
        destination_rule("reviews", lb, &versions),
        virtual_service("reviews", split, timeout),
    ]
    .join("---\n")
}

/// A benchmark-sized config: service `bench` on port 8080 with `endpoints`
/// (label `version: v1`), a DestinationRule with `lb`, and a
/// VirtualService of `routes` routes: mostly path prefixes
/// (`/api/r<i>/`), with exact paths, header matches and one regex mixed
/// in, and a catch-all last.
pub fn many_routes(routes: usize, endpoints: &[SocketAddr], lb: &str) -> String {
    let eps: Vec<(SocketAddr, &str)> = endpoints.iter().map(|a| (*a, "v1")).collect();
    let mut s = [
        service_entry("bench", 8080, "HTTP2", &eps),
        destination_rule("bench", lb, &["v1"]),
    ]
    .join("---\n");
    s.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bench\nspec:\n  hosts: [bench]\n  http:\n");
    for i in 0..routes.saturating_sub(1) {
        let m = match i % 10 {
            3 => format!("[{{ uri: {{ exact: /api/r{i}/item }} }}]"),
            7 => format!(
                "[{{ uri: {{ prefix: /api/r{i}/ }}, headers: {{ x-tenant: {{ exact: t{i} }} }} }}]"
            ),
            _ if i == routes - 5 => format!("[{{ uri: {{ regex: \"/api/r{i}/[0-9]+\" }} }}]"),
            _ => format!("[{{ uri: {{ prefix: /api/r{i}/ }} }}]"),
        };
        let _ = writeln!(
            s,
            "  - name: r{i}\n    match: {m}\n    route: [{{ destination: {{ host: bench, subset: v1 }} }}]"
        );
    }
    s.push_str("  - name: catch-all\n    route: [{ destination: { host: bench, subset: v1 } }]\n");
    s
}
