//! The admin endpoint: an axum [`Router`] the application mounts or
//! serves on a port of its own. Nothing is exposed unless the application
//! asks for it.
//!
//! - `GET /live`: `200 live` while the process serves (Kubernetes
//!   liveness).
//! - `GET /ready`: `200 ready` once the mesh routes by a config that came
//!   from a source (store version above 0), else `503 not ready`
//!   (Kubernetes readiness; Istio's sidecar is ready once it has its
//!   first config).
//! - `GET /metrics`: [`Mesh::prometheus_text`] as
//!   `text/plain; version=0.0.4`, the Prometheus text format.
//! - `GET /clusters`: every cluster with its circuit breaker and outlier
//!   counters and its endpoints (address, weight, health, ejection,
//!   readiness, requests in flight, the balancer's load score), as JSON.
//! - `GET /config_dump`: the effective config as JSON (Envoy's admin
//!   `/config_dump`, in this mesh's model): every listener, route table,
//!   cluster and endpoint set with the source that defines it and the
//!   store version at which it last changed ([`Snapshot::provenance`]),
//!   the security policies, and each source's status (accepted version
//!   and time, last rejection, warnings: the fields and kinds it
//!   ignored, update counts). A resource's `config` is its Rust `Debug`
//!   rendering: complete, but not a stable schema.
//! - `GET /check_route?authority=reviews&port=9080&path=/x&method=GET&header=k:v`:
//!   where such a request would go under the live config
//!   ([`mesh_core::check_route`]): route table, virtual host, route,
//!   clusters with weights and shares, timeout, or the local response.
//!   `authority` is required (it may carry the port); `path` defaults to
//!   `/`, `method` to `GET`; `header` may repeat. `200` with the answer,
//!   `404` when no route matches, `400` for a malformed query, each
//!   with a JSON body.
//! - `GET /xds_status` (feature `xds`, with a subscriber): every xDS
//!   resource the process watches with its state (REQUESTED, ACKED,
//!   NACKED, DOES_NOT_EXIST, TIMEOUT, RECEIVED_ERROR), version, update
//!   time, rejection reason and ignored fields, and the store's view of
//!   the `xds` source, as JSON ([`Mesh::xds_status_json`]); `404` when the
//!   mesh has no subscriber. The same status is served over CSDS by
//!   `mesh_xds::csds`.
//!
//! ```no_run
//! # async fn f(mesh: mesh_tower::Mesh) -> std::io::Result<()> {
//! let admin = mesh_tower::admin::router(mesh.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15000").await?;
//! tokio::spawn(async move { axum::serve(listener, admin).await });
//! # Ok(()) }
//! ```

use std::time::SystemTime;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use mesh_core::{CheckRequest, ResourceKind, Snapshot, check_route};
use serde_json::{Value, json};

use crate::Mesh;
use crate::access_log::Rfc3339;

/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin router over `mesh`; see the module docs.
pub fn router(mesh: Mesh) -> Router {
    let router = Router::new()
        .route("/live", get(|| async { "live" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/clusters", get(clusters))
        .route("/config_dump", get(config_dump))
        .route("/check_route", get(check));
    #[cfg(feature = "xds")]
    let router = router.route("/xds_status", get(xds_status));
    router.with_state(mesh)
}

#[cfg(feature = "xds")]
async fn xds_status(State(mesh): State<Mesh>) -> axum::response::Response {
    match mesh.xds_status_json() {
        Some(json) => axum::Json(json).into_response(),
        None => (StatusCode::NOT_FOUND, "no xDS subscriber").into_response(),
    }
}

async fn ready(State(mesh): State<Mesh>) -> impl IntoResponse {
    if mesh.applied_version().0 > 0 {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(State(mesh): State<Mesh>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        mesh.prometheus_text(),
    )
}

async fn clusters(State(mesh): State<Mesh>) -> impl IntoResponse {
    let clusters: Vec<serde_json::Value> = mesh
        .cluster_names()
        .into_iter()
        .filter_map(|name| {
            let stats = mesh.cluster_stats(name.as_str())?;
            let endpoints: Vec<serde_json::Value> = mesh
                .cluster_endpoints(name.as_str())?
                .into_iter()
                .map(|e| {
                    json!({
                        "address": e.address,
                        "weight": e.weight,
                        "health": format!("{:?}", e.health).to_lowercase(),
                        "ejected": e.ejected,
                        "ready": e.ready,
                        "in_flight": e.in_flight,
                        "connect_failures": e.connect_failures,
                        "load_score": e.load_score,
                    })
                })
                .collect();
            Some(json!({
                "name": name.as_str(),
                "requests_in_flight": stats.requests_in_flight,
                "requests_pending": stats.requests_pending,
                "overflow_requests": stats.overflow_requests,
                "overflow_pending": stats.overflow_pending,
                "ejected": stats.ejected,
                "ejections_total": stats.ejections_total,
                "endpoints": endpoints,
            }))
        })
        .collect();
    axum::Json(json!({ "clusters": clusters }))
}

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(Rfc3339(t).to_string()))
}

/// Name, source, version and `Debug` config of one resource.
fn resource(snap: &Snapshot, kind: ResourceKind, name: &str, config: String) -> Value {
    let p = snap.provenance(kind, name);
    json!({
        "name": name,
        "source": p.map(|p| p.source.as_str()),
        "version": p.map(|p| p.version.0),
        "config": config,
    })
}

async fn config_dump(State(mesh): State<Mesh>) -> impl IntoResponse {
    let store = mesh.store();
    let snap = store.snapshot();
    let counts = store.update_counts();
    let sources: Vec<Value> = store
        .status()
        .into_iter()
        .map(|s| {
            let updates = counts
                .iter()
                .find(|(id, _)| *id == s.source)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            json!({
                "source": s.source.as_str(),
                "accepted_version": s.accepted_version.map(|v| v.0),
                "accepted_at": time(s.accepted_at),
                "last_rejection": s.last_rejection.as_ref().map(|r| json!({
                    "at": time(Some(r.at)),
                    "reason": r.reason,
                })),
                "warnings": &*s.warnings,
                "updates": { "accepted": updates.accepted, "rejected": updates.rejected },
            })
        })
        .collect();
    let listeners: Vec<Value> = snap
        .listeners()
        .map(|l| {
            let mut v = resource(
                &snap,
                ResourceKind::Listener,
                l.name.as_str(),
                format!("{l:?}"),
            );
            v["port"] = json!(l.port);
            v
        })
        .collect();
    let route_tables: Vec<Value> = snap
        .route_tables()
        .map(|t| {
            let mut v = resource(
                &snap,
                ResourceKind::RouteTable,
                t.name().as_str(),
                format!("{t:?}"),
            );
            v["virtual_hosts"] = t
                .virtual_hosts()
                .iter()
                .map(|h| json!({ "name": &*h.name, "routes": h.routes.len() }))
                .collect();
            v
        })
        .collect();
    let clusters: Vec<Value> = snap
        .clusters()
        .map(|c| {
            let mut v = resource(
                &snap,
                ResourceKind::Cluster,
                c.name.as_str(),
                format!("{c:?}"),
            );
            v["service"] = json!(c.service.as_deref());
            v["subset"] = json!(c.subset.as_deref());
            v
        })
        .collect();
    let endpoints: Vec<Value> = snap
        .endpoint_sets()
        .map(|set| {
            let p = snap.provenance(ResourceKind::EndpointSet, set.cluster().as_str());
            json!({
                "cluster": set.cluster().as_str(),
                "source": p.map(|p| p.source.as_str()),
                "version": p.map(|p| p.version.0),
                "endpoints": set.endpoints().iter().map(|e| json!({
                    "address": e.address.to_string(),
                    "weight": e.weight,
                    "health": format!("{:?}", e.health).to_lowercase(),
                    "priority": e.priority,
                    "locality": format!("{:?}", e.locality),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let sec = snap.security();
    let policy = |name: &str, namespace: &str, config: String| json!({ "name": name, "namespace": namespace, "config": config });
    let security = json!({
        "peer_authentications": sec.peer_authentications.iter()
            .map(|p| policy(&p.scope.name, &p.scope.namespace, format!("{p:?}")))
            .collect::<Vec<_>>(),
        "request_authentications": sec.request_authentications.iter()
            .map(|p| policy(&p.scope.name, &p.scope.namespace, format!("{p:?}")))
            .collect::<Vec<_>>(),
        "authorization_policies": sec.authorization_policies.iter()
            .map(|p| policy(&p.scope.name, &p.scope.namespace, format!("{p:?}")))
            .collect::<Vec<_>>(),
    });
    axum::Json(json!({
        "version": snap.version().0,
        "applied_version": mesh.applied_version().0,
        "sources": sources,
        "listeners": listeners,
        "route_tables": route_tables,
        "clusters": clusters,
        "endpoints": endpoints,
        "security": security,
    }))
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn bad(message: String) -> (StatusCode, axum::Json<Value>) {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message })),
    )
}

/// The check request a `/check_route` query describes.
fn check_request(query: &str) -> Result<CheckRequest, String> {
    let (mut authority, mut port, mut path, mut method) = (None, None, None, None);
    let mut headers = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v).ok_or_else(|| format!("query parameter {k:?}: invalid encoding"))?;
        match k {
            "authority" => authority = Some(v),
            "port" => {
                port = Some(
                    v.parse::<u16>()
                        .map_err(|_| format!("port: not a port number: {v:?}"))?,
                )
            }
            "path" => path = Some(v),
            "method" => method = Some(v),
            "header" => {
                let (name, value) = v
                    .split_once(':')
                    .ok_or_else(|| format!("header: expected name:value, got {v:?}"))?;
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            other => return Err(format!("unknown query parameter {other:?}")),
        }
    }
    let authority = authority.ok_or("authority: required (for example authority=reviews)")?;
    let authority = match port {
        Some(p) => format!("{authority}:{p}"),
        None => authority,
    };
    let path = path.unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') {
        return Err(format!("path: must start with '/': {path:?}"));
    }
    let url = format!("http://{authority}{path}");
    let mut req =
        CheckRequest::new(method.as_deref().unwrap_or("GET"), &url).map_err(|e| e.to_string())?;
    for (name, value) in headers {
        req = req
            .header(&name, &value)
            .map_err(|e| format!("header {name:?}: {e}"))?;
    }
    Ok(req)
}

async fn check(State(mesh): State<Mesh>, RawQuery(query): RawQuery) -> impl IntoResponse {
    let req = match check_request(query.as_deref().unwrap_or("")) {
        Ok(req) => req,
        Err(e) => return bad(e),
    };
    let snap = mesh.store().load();
    match check_route(&snap, &req) {
        Ok(c) => (
            StatusCode::OK,
            axum::Json(json!({
                "version": snap.version().0,
                "route_table": c.route_table.as_str(),
                "virtual_host": &*c.virtual_host,
                "route_index": c.route_index,
                "route_name": c.route_name.as_deref(),
                "timeout_ms": c.timeout.map(|t| t.as_millis() as u64),
                "local_response": c.local_response,
                "destinations": c.destinations.iter().map(|d| json!({
                    "cluster": d.cluster.as_str(),
                    "service": d.service.as_deref(),
                    "subset": d.subset.as_deref(),
                    "weight": d.weight,
                    "share": d.share,
                    "endpoints": d.endpoints,
                })).collect::<Vec<_>>(),
                "summary": c.to_string(),
            })),
        ),
        Err(e) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "version": snap.version().0, "error": e.to_string() })),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_queries_decode_and_report_their_errors() {
        assert!(check_request("authority=reviews&port=9080&path=%2Fa%2Fb&header=x-v:%201").is_ok());
        assert_eq!(decode("a+b%2F%3a").as_deref(), Some("a b/:"));
        assert_eq!(decode("%zz"), None);
        let e = |q: &str| check_request(q).unwrap_err();
        assert!(e("path=/").contains("authority: required"));
        assert!(e("authority=a&port=x").contains("port: not a port number"));
        assert!(e("authority=a&header=novalue").contains("header: expected name:value"));
        assert!(e("authority=a&colour=red").contains("unknown query parameter \"colour\""));
        assert!(e("authority=a&path=x").contains("path: must start with '/'"));
        assert!(e("authority=a&method=G%20T").contains("invalid method"));
    }
}
