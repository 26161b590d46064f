//! The security example's logic: mutual TLS, identities and authorization
//! on loopback, driven by Istio YAML (see `src/bin/secure.rs`).
//!
//! A test CA issues SPIFFE certificates. `reviews` is served with
//! [`serve`] in STRICT mode (PeerAuthentication) behind an
//! [`AuthorizationLayer`] that allows only `productpage` to `GET
//! /reviews/*`. Mesh clients dial it with `ISTIO_MUTUAL`
//! (DestinationRule). [`run`] sends one request per step and returns what
//! each step expected and got.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::ConfigStore;
use mesh_core::model::{Labels, Workload};
use mesh_identity::CredentialStore;
use mesh_identity::test_util::TestCa;
use mesh_tower::authz::AuthorizationLayer;
use mesh_tower::serve::{ConnectionSecurity, PolicyTransport, ServeConfig, TransportMode, serve};
use mesh_tower::{Mesh, MeshClient};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// Any error of the example's setup.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// `reviews`' identity (its service account).
pub const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
/// The identity the AuthorizationPolicy allows.
pub const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";
/// An identity from the same CA that no policy allows.
pub const ATTACKER: &str = "spiffe://cluster.local/ns/default/sa/attacker";

/// The mesh config: `reviews` at `addr`, reached with ISTIO_MUTUAL, served
/// STRICT, and only `productpage` may `GET /reviews/*`.
pub fn yaml(addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: reviews, namespace: default }}
spec:
  hosts: [reviews]
  ports: [{{ number: 9080, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints:
  - {{ address: {ip}, ports: {{ http: {port} }}, serviceAccount: reviews }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: reviews, namespace: default }}
spec:
  host: reviews
  trafficPolicy:
    tls: {{ mode: ISTIO_MUTUAL }}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{ name: default, namespace: istio-system }}
spec:
  mtls: {{ mode: STRICT }}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: reviews-viewer, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: reviews }} }}
  action: ALLOW
  rules:
  - from: [{{ source: {{ principals: [cluster.local/ns/default/sa/productpage] }} }}]
    to: [{{ operation: {{ methods: [GET], paths: [/reviews/*] }} }}]
",
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// One step: what was sent, what the config says, what came back.
#[derive(Debug, Clone)]
pub struct Step {
    /// Who sent what.
    pub name: &'static str,
    /// The expected outcome, e.g. `200 spiffe://...` or `refused`.
    pub want: String,
    /// The outcome.
    pub got: String,
}

impl Step {
    /// Whether the outcome is the expected one.
    pub fn ok(&self) -> bool {
        self.want == self.got
    }
}

/// Every step of [`run`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// Whether every step got what it expected.
    pub fn ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(Step::ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.steps {
            if s.ok() {
                writeln!(f, "ok    {:<38} -> {}", s.name, s.got)?;
            } else {
                writeln!(f, "FAIL  {:<38} -> {} (want {})", s.name, s.got, s.want)?;
            }
        }
        Ok(())
    }
}

/// Starts `reviews` and sends each step's request; the servers stop when
/// it returns.
///
/// # Errors
///
/// When the setup fails (certificates, a socket, the config); a step that
/// gets an unexpected answer is in the report instead.
pub async fn run() -> Result<Report, Error> {
    let ca = TestCa::new("cluster.local")?;
    let identity = |id: &str| -> Result<Arc<CredentialStore>, Error> {
        Ok(Arc::new(CredentialStore::new(
            ca.leaf(id).credentials()?,
            ca.bundle()?,
        )))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store = ConfigStore::new();
    crate::publish_yaml(&store, &yaml(addr));

    // The server: mTLS as PeerAuthentication says, then AuthorizationPolicy.
    let workload = Workload::new("default", Labels::new([("app", "reviews")]));
    let mesh = Mesh::new(store.clone());
    let app = axum::Router::new()
        .route("/reviews/{id}", get(hello))
        .layer(AuthorizationLayer::for_workload(mesh, workload.clone()));
    let transport = PolicyTransport::from_credentials(store.clone(), workload, identity(REVIEWS)?)?;
    let server = tokio::spawn(serve(
        listener,
        ServeConfig::new(TransportMode::Policy(transport)),
        app,
    ));

    // The clients: each a mesh with its own workload identity.
    let client = |id: &str| -> Result<MeshClient, Error> {
        let mesh = Mesh::builder(store.clone())
            .with_credentials(identity(id)?)
            .build();
        Ok(mesh.client())
    };
    let productpage = client(PRODUCTPAGE)?;
    let attacker = client(ATTACKER)?;

    let denied = "403 RBAC: access denied".to_owned();
    let steps = vec![
        Step {
            name: "productpage GET /reviews/1 (mTLS)",
            want: format!("200 hello {PRODUCTPAGE}"),
            got: fetch(&productpage, "GET", "/reviews/1").await,
        },
        Step {
            name: "productpage DELETE /reviews/1 (mTLS)",
            want: denied.clone(),
            got: fetch(&productpage, "DELETE", "/reviews/1").await,
        },
        Step {
            name: "attacker GET /reviews/1 (mTLS)",
            want: denied,
            got: fetch(&attacker, "GET", "/reviews/1").await,
        },
        Step {
            name: "plaintext GET /reviews/1 (no TLS)",
            want: "refused".into(),
            got: plaintext(addr).await,
        },
    ];
    server.abort();
    Ok(Report { steps })
}

/// The handler: greets the caller by the SPIFFE ID its certificate proved.
async fn hello(Extension(conn): Extension<ConnectionSecurity>) -> String {
    let peer = conn.peer().map_or("nobody".into(), |p| p.to_string());
    format!("hello {peer}")
}

/// `method http://reviews:9080{path}` through the mesh: `status body`.
async fn fetch(client: &MeshClient, method: &str, path: &str) -> String {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://reviews:9080{path}"))
        .body(Empty::<Bytes>::new());
    let res = match req {
        Ok(req) => client.clone().oneshot(req).await,
        Err(e) => return format!("bad request: {e}"),
    };
    match res {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.into_body().collect().await {
                Ok(body) => format!("{status} {}", String::from_utf8_lossy(&body.to_bytes())),
                Err(e) => format!("{status} <body error: {e}>"),
            }
        }
        Err(e) => format!("{} {e}", e.http_status().as_u16()),
    }
}

/// A plaintext HTTP/1.1 request straight to the socket, outside the mesh:
/// `refused` when STRICT closes the connection.
async fn plaintext(addr: SocketAddr) -> String {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = http::Request::get("http://reviews/reviews/1").body(Empty::<Bytes>::new())?;
        let res = sender.send_request(req).await?;
        Ok::<_, Error>(res.status().as_u16())
    };
    match attempt.await {
        Ok(status) => format!("{status} (served in plaintext!)"),
        Err(_) => "refused".into(),
    }
}
