//! `PeerAuthentication` from an Istio YAML file, applied by `serve` to new
//! connections over real loopback handshakes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_core::model::{Labels, Workload};
use mesh_identity::CredentialStore;
use mesh_identity::test_util::TestCa;
use mesh_identity::tls::{PeerMatcher, client_config};
use mesh_tower::serve::{ConnectionSecurity, PolicyTransport, ServeConfig, TransportMode, serve};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/web";
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn app() -> Router {
    Router::new().route(
        "/",
        get(|Extension(s): Extension<ConnectionSecurity>| async move { format!("{:?}", s.mode()) }),
    )
}

type Reply = Result<String, Box<dyn std::error::Error + Send + Sync>>;

async fn over<I>(io: I) -> Reply
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let request = http::Request::get("http://cart.shop/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}

async fn plain(addr: SocketAddr) -> Reply {
    over(TcpStream::connect(addr).await?).await
}

async fn mtls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Reply {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("cart.shop").unwrap();
    over(TlsConnector::from(config).connect(name, tcp).await?).await
}

fn policy(mode: &str, port_level: Option<(u16, &str)>) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  \
         namespace: istio-system\nspec:\n  mtls:\n    mode: {mode}\n"
    );
    if let Some((port, port_mode)) = port_level {
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: \
             cart\n  namespace: shop\nspec:\n  selector:\n    matchLabels:\n      app: cart\n  \
             portLevelMtls:\n    {port}:\n      mode: {port_mode}\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn peer_authentication_from_a_file_decides_each_new_connection() {
    let ca = TestCa::new("cluster.local").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    let source = FileSource::new(&path);
    let store = ConfigStore::new();
    let apply = |yaml: String| {
        std::fs::write(&path, yaml).unwrap();
        source.publish(&store)
    };
    apply(policy("STRICT", None)).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let credentials = Arc::new(CredentialStore::new(
        ca.leaf(SERVER).credentials().unwrap(),
        ca.bundle().unwrap(),
    ));
    let workload = Workload::new("shop", Labels::new([("app", "cart")]));
    let transport =
        PolicyTransport::from_credentials(store.clone(), workload, credentials).unwrap();
    let server = tokio::spawn(serve(
        listener,
        ServeConfig::new(TransportMode::Policy(transport)),
        app(),
    ));
    let client = Arc::new(
        client_config(
            Arc::new(CredentialStore::new(
                ca.leaf(CLIENT).credentials().unwrap(),
                ca.bundle().unwrap(),
            )),
            PeerMatcher::exact(SERVER.parse().unwrap()),
        )
        .unwrap(),
    );

    // Mesh-wide STRICT.
    assert!(plain(addr).await.is_err());
    assert_eq!(mtls(addr, client.clone()).await.unwrap(), "MutualTls");

    // A policy the file source rejects (a lower-case mode) changes nothing:
    // STRICT is never silently weakened.
    let e = apply(policy("permissive", None)).unwrap_err();
    assert!(
        e.to_string().contains(
            "document 1 (PeerAuthentication default): mtls.mode: unknown mode \"permissive\""
        ),
        "{e}"
    );
    assert!(plain(addr).await.is_err());

    // PERMISSIVE: both.
    apply(policy("PERMISSIVE", None)).unwrap();
    assert_eq!(plain(addr).await.unwrap(), "Plaintext");
    assert_eq!(mtls(addr, client.clone()).await.unwrap(), "MutualTls");

    // DISABLE: plaintext only.
    apply(policy("DISABLE", None)).unwrap();
    assert_eq!(plain(addr).await.unwrap(), "Plaintext");
    assert!(mtls(addr, client.clone()).await.is_err());

    // Mesh-wide DISABLE, but the workload's port STRICT.
    apply(policy("DISABLE", Some((addr.port(), "STRICT")))).unwrap();
    assert!(plain(addr).await.is_err());
    assert_eq!(mtls(addr, client.clone()).await.unwrap(), "MutualTls");
    // Another port named: this one inherits DISABLE.
    let other = if addr.port() == 65535 {
        1
    } else {
        addr.port() + 1
    };
    apply(policy("DISABLE", Some((other, "STRICT")))).unwrap();
    assert_eq!(plain(addr).await.unwrap(), "Plaintext");

    server.abort();
}
