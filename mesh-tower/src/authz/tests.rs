//! The authorization layer over a service that echoes what it received.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::model::{Labels, Workload};
use mesh_core::{ConfigStore, file::FileSource};
use mesh_identity::SpiffeId;
use tower::{Layer, ServiceExt};

use super::*;
use crate::serve::SecurityMode;
use crate::{Mesh, serve::ConnectionSecurity};

/// Answers `<path and query> <audited policy or ->`.
fn echo() -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: Request<()>| async move {
        let audited = req
            .extensions()
            .get::<AuditedBy>()
            .map_or("-".to_owned(), |a| format!("{}/{}", a.namespace, a.name));
        let pq = req.uri().path_and_query().map_or("", |p| p.as_str());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
            "{pq} {audited}"
        )))))
    })
}

fn request(path: &str, peer: Option<&str>) -> Request<()> {
    let mut req = Request::get(path).header("host", "cart").body(()).unwrap();
    let remote: SocketAddr = "10.0.0.7:40000".parse().unwrap();
    let local: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let (mode, peer) = match peer {
        Some(p) => (SecurityMode::MutualTls, Some(SpiffeId::parse(p).unwrap())),
        None => (SecurityMode::Plaintext, None),
    };
    req.extensions_mut()
        .insert(ConnectionSecurity::new(mode, peer, remote, local));
    req
}

async fn call<S>(svc: &S, req: Request<()>) -> (StatusCode, String, Option<String>)
where
    S: tower::Service<Request<()>, Response = Response<AuthzBody<Full<Bytes>>>, Error = Infallible>
        + Clone,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let grpc = res
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap(), grpc)
}

fn policies(yaml: &str) -> Vec<AuthorizationPolicy> {
    FileSource::parse_str("t.yaml", yaml)
        .unwrap()
        .resources
        .security
        .authorization_policies
}

use mesh_core::model::AuthorizationPolicy;

const ONLY_WEB: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: only-web, namespace: shop }
spec:
  rules:
  - from: [{ source: { principals: [cluster.local/ns/shop/sa/web] } }]
    to: [{ operation: { paths: ["/api/*"] } }]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: audit-api, namespace: shop }
spec:
  action: AUDIT
  rules: [{ to: [{ operation: { paths: ["/api/pay"] } }] }]
"#;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

#[tokio::test]
async fn denies_with_envoys_403_and_allows_the_rest() {
    let layer = AuthorizationLayer::new(policies(ONLY_WEB));
    let svc = layer.layer(echo());
    assert_eq!(
        call(&svc, request("/api/x?q=1", Some(WEB))).await,
        (StatusCode::OK, "/api/x?q=1 -".into(), None)
    );
    assert_eq!(
        call(&svc, request("/api/x", Some(DB))).await,
        (StatusCode::FORBIDDEN, DENIED_BODY.into(), None)
    );
    assert_eq!(
        call(&svc, request("/api/x", None)).await.0,
        StatusCode::FORBIDDEN
    );
    let stats = layer.stats();
    assert_eq!((stats.allowed(), stats.denied()), (1, 2));
}

#[tokio::test]
async fn grpc_denials_are_permission_denied_trailers_only() {
    let svc = AuthorizationLayer::new(policies(ONLY_WEB)).layer(echo());
    let mut req = request("/pkg.Svc/Method", Some(WEB));
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let (status, body, grpc) = call(&svc, req).await;
    assert_eq!(
        (status, body.as_str(), grpc.as_deref()),
        (StatusCode::OK, "", Some("7"))
    );
}

#[tokio::test]
async fn audit_marks_the_request() {
    let layer = AuthorizationLayer::new(policies(ONLY_WEB));
    let svc = layer.layer(echo());
    assert_eq!(
        call(&svc, request("/api/pay", Some(WEB))).await.1,
        "/api/pay shop/audit-api"
    );
    assert_eq!(layer.stats().audited(), 1);
}

#[tokio::test]
async fn the_normalized_path_is_authorized_and_forwarded() {
    let svc = AuthorizationLayer::new(policies(ONLY_WEB)).layer(echo());
    assert_eq!(
        call(&svc, request("/public/../api/%78?a=b", Some(WEB))).await,
        (StatusCode::OK, "/api/x?a=b -".into(), None)
    );
    let (status, _, _) = call(&svc, request("/api%2Fx", Some(WEB))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut twice = request("/api/x", Some(WEB));
    twice.headers_mut().append("host", "other".parse().unwrap());
    assert_eq!(call(&svc, twice).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn dry_run_layer_and_dry_run_policies_do_not_enforce() {
    let layer = AuthorizationLayer::new(policies(ONLY_WEB)).with_dry_run(true);
    let svc = layer.layer(echo());
    assert_eq!(
        call(&svc, request("/api/x", Some(DB))).await.0,
        StatusCode::OK
    );
    assert_eq!(layer.stats().dry_run_denied(), 1);

    let annotated = policies(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: deny-all, namespace: shop, annotations: { istio.io/dry-run: "true" } }
spec: { action: DENY, rules: [{}] }
"#,
    );
    let layer = AuthorizationLayer::new(annotated);
    let svc = layer.layer(echo());
    assert_eq!(call(&svc, request("/", Some(DB))).await.0, StatusCode::OK);
    assert_eq!(
        (layer.stats().dry_run_denied(), layer.stats().denied()),
        (1, 0)
    );
}

#[tokio::test]
async fn mesh_policies_follow_the_config_live() {
    let store = ConfigStore::new();
    let mesh = Mesh::new(store.clone());
    let workload = Workload::new("shop", Labels::new([("app", "cart")]));
    let svc = AuthorizationLayer::for_workload(mesh.clone(), workload).layer(echo());
    assert_eq!(call(&svc, request("/", Some(DB))).await.0, StatusCode::OK);

    let publish = |yaml: &str| {
        let t = FileSource::parse_str("mesh.yaml", yaml).unwrap();
        store.publish("file:mesh.yaml".into(), t.resources).unwrap()
    };
    mesh.applied(publish(ONLY_WEB)).await;
    assert_eq!(
        call(&svc, request("/", Some(DB))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&svc, request("/api/x", Some(WEB))).await.0,
        StatusCode::OK
    );
    let other_workload = ONLY_WEB.replace(
        "spec:\n  rules:",
        "spec:\n  selector: { matchLabels: { app: web } }\n  rules:",
    );
    mesh.applied(publish(&other_workload)).await;
    assert_eq!(call(&svc, request("/", Some(DB))).await.0, StatusCode::OK);
}
