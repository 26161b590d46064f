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
//!   readiness, requests in flight), as JSON.
//!
//! ```no_run
//! # async fn f(mesh: mesh_tower::Mesh) -> std::io::Result<()> {
//! let admin = mesh_tower::admin::router(mesh.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:15000").await?;
//! tokio::spawn(async move { axum::serve(listener, admin).await });
//! # Ok(()) }
//! ```

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::Mesh;

/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin router over `mesh`; see the module docs.
pub fn router(mesh: Mesh) -> Router {
    Router::new()
        .route("/live", get(|| async { "live" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/clusters", get(clusters))
        .with_state(mesh)
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
