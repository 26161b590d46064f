//! Real handshakes over loopback against [`serve`] in each mode.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_identity::test_util::TestCa;
use mesh_identity::tls::{PeerMatcher, client_config, server_config};
use mesh_identity::{CredentialStore, Credentials, SpiffeId};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::*;

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";

/// Answers `<version> <mode> <peer>` from what the request carries.
fn app() -> Router {
    Router::new().route(
        "/",
        get(
            |version: Version, Extension(security): Extension<ConnectionSecurity>| async move {
                let peer = security.peer().map_or("-".to_owned(), |p| p.to_string());
                format!("{version:?} {:?} {peer}", security.mode())
            },
        ),
    )
}

struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(config: ServeConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, config, app()));
    Server { addr, task }
}

fn store(creds: Credentials, ca: &TestCa) -> Arc<CredentialStore> {
    Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()))
}

fn server_tls(ca: &TestCa) -> Arc<rustls::ServerConfig> {
    let creds = ca.leaf(SERVER).credentials().unwrap();
    Arc::new(server_config(store(creds, ca), PeerMatcher::AnyTrusted).unwrap())
}

fn client_tls(creds: Credentials, ca: &TestCa, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut config = client_config(store(creds, ca), PeerMatcher::exact(id(SERVER))).unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// One GET over `io` with HTTP/2 or HTTP/1.1; the status and body.
async fn get_over<I>(io: I, h2: bool) -> Result<(StatusCode, String), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::get("http://server.default.svc/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        sender.send_request(request).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        sender.send_request(request).await?
    };
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

async fn tls_get<I>(
    io: I,
    config: Arc<rustls::ClientConfig>,
) -> Result<(StatusCode, String), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let name = ServerName::try_from("server.default.svc").unwrap();
    let tls = TlsConnector::from(config).connect(name, io).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    get_over(tls, h2).await
}

async fn mtls_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(StatusCode, String), BoxError> {
    tls_get(TcpStream::connect(addr).await?, config).await
}

async fn plain_get(addr: SocketAddr, h2: bool) -> Result<(StatusCode, String), BoxError> {
    get_over(TcpStream::connect(addr).await?, h2).await
}

fn ok(body: &str) -> (StatusCode, String) {
    (StatusCode::OK, body.to_owned())
}

#[tokio::test(start_paused = true)]
async fn strict_serves_mtls_with_the_peer_identity_over_h2_and_http1() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = start(ServeConfig::new(TransportMode::Strict(server_tls(&ca)))).await;
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    assert_eq!(
        mtls_get(server.addr, client_tls(creds.clone(), &ca, b"h2"))
            .await
            .unwrap(),
        ok(&format!("HTTP/2.0 MutualTls {CLIENT}"))
    );
    assert_eq!(
        mtls_get(server.addr, client_tls(creds, &ca, b"http/1.1"))
            .await
            .unwrap(),
        ok(&format!("HTTP/1.1 MutualTls {CLIENT}"))
    );
}

#[tokio::test(start_paused = true)]
async fn strict_rejects_plaintext() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = start(ServeConfig::new(TransportMode::Strict(server_tls(&ca)))).await;
    assert!(plain_get(server.addr, false).await.is_err());
    assert!(plain_get(server.addr, true).await.is_err());
    // What a plaintext client reads back is never an HTTP response.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(!answer.starts_with(b"HTTP"), "{answer:?}");
}

#[tokio::test(start_paused = true)]
async fn strict_rejects_a_client_from_another_trust_domain_expired_or_unexpected() {
    let ca = TestCa::new("cluster.local").unwrap();
    let other = TestCa::new("other.local").unwrap();
    let server = start(ServeConfig::new(TransportMode::Strict(server_tls(&ca)))).await;
    // Another trust domain, which the server's bundle does not hold.
    let foreign = other
        .leaf("spiffe://other.local/ns/default/sa/client")
        .credentials()
        .unwrap();
    assert!(
        mtls_get(server.addr, client_tls(foreign, &ca, b"h2"))
            .await
            .is_err()
    );
    // An expired client certificate.
    let now = SystemTime::now();
    let expired = ca
        .leaf(CLIENT)
        .validity(
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .credentials()
        .unwrap();
    assert!(
        mtls_get(server.addr, client_tls(expired, &ca, b"h2"))
            .await
            .is_err()
    );
    // A server that only admits one client ID refuses another.
    let only_reviews = Arc::new(
        server_config(
            store(ca.leaf(SERVER).credentials().unwrap(), &ca),
            PeerMatcher::exact(id("spiffe://cluster.local/ns/default/sa/reviews")),
        )
        .unwrap(),
    );
    let picky = start(ServeConfig::new(TransportMode::Strict(only_reviews))).await;
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    assert!(
        mtls_get(picky.addr, client_tls(creds.clone(), &ca, b"h2"))
            .await
            .is_err()
    );
    // The client refuses a server whose SAN is not the one it expects.
    let mut wrong_san = client_config(
        store(creds.clone(), &ca),
        PeerMatcher::exact(id("spiffe://cluster.local/ns/default/sa/db")),
    )
    .unwrap();
    wrong_san.alpn_protocols = vec![b"h2".to_vec()];
    let e = mtls_get(server.addr, Arc::new(wrong_san))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("UnexpectedPeer"), "{e}");
    // And the same client is served when everything is right.
    assert_eq!(
        mtls_get(server.addr, client_tls(creds, &ca, b"h2"))
            .await
            .unwrap(),
        ok(&format!("HTTP/2.0 MutualTls {CLIENT}"))
    );
}

#[tokio::test(start_paused = true)]
async fn permissive_serves_mtls_and_plaintext_on_one_port() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = start(ServeConfig::new(TransportMode::Permissive(server_tls(&ca)))).await;
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    assert_eq!(
        mtls_get(server.addr, client_tls(creds.clone(), &ca, b"h2"))
            .await
            .unwrap(),
        ok(&format!("HTTP/2.0 MutualTls {CLIENT}"))
    );
    assert_eq!(
        mtls_get(server.addr, client_tls(creds, &ca, b"http/1.1"))
            .await
            .unwrap(),
        ok(&format!("HTTP/1.1 MutualTls {CLIENT}"))
    );
    assert_eq!(
        plain_get(server.addr, false).await.unwrap(),
        ok("HTTP/1.1 Plaintext -")
    );
    assert_eq!(
        plain_get(server.addr, true).await.unwrap(),
        ok("HTTP/2.0 Plaintext -")
    );
    // A TLS client that fails verification is not served as plaintext.
    let other = TestCa::new("other.local").unwrap();
    let foreign = other
        .leaf("spiffe://other.local/ns/default/sa/client")
        .credentials()
        .unwrap();
    assert!(
        mtls_get(server.addr, client_tls(foreign, &ca, b"h2"))
            .await
            .is_err()
    );
}

/// Writes at most one byte per call, so a ClientHello leaves in pieces.
struct Trickle(TcpStream);

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(1);
        Pin::new(&mut self.get_mut().0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn permissive_detects_a_fragmented_client_hello() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = start(ServeConfig::new(TransportMode::Permissive(server_tls(&ca)))).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    assert_eq!(
        tls_get(Trickle(tcp), client_tls(creds, &ca, b"h2"))
            .await
            .unwrap(),
        ok(&format!("HTTP/2.0 MutualTls {CLIENT}"))
    );
}

#[tokio::test(start_paused = true)]
async fn permissive_closes_a_silent_client_at_the_deadline_without_stalling_others() {
    let ca = TestCa::new("cluster.local").unwrap();
    let config = ServeConfig::new(TransportMode::Permissive(server_tls(&ca)));
    assert_eq!(
        config.handshake_timeout(),
        Duration::from_secs(10),
        "Linkerd's detect_protocol_timeout default"
    );
    let server = start(config).await;
    // Silent, and one that sends half a record header and stops.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(&[0x16, 0x03]).await.unwrap();
    // Others are served meanwhile.
    assert_eq!(
        plain_get(server.addr, false).await.unwrap(),
        ok("HTTP/1.1 Plaintext -")
    );
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(silent.read(&mut buf).await.unwrap(), 0, "closed");
    assert_eq!(slow.read(&mut buf).await.unwrap(), 0, "closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tls_client_stalled_mid_handshake_is_closed_at_the_deadline() {
    let ca = TestCa::new("cluster.local").unwrap();
    let config = ServeConfig::new(TransportMode::Strict(server_tls(&ca)))
        .with_handshake_timeout(Duration::from_secs(3));
    let server = start(config).await;
    // A complete ClientHello record header and type, then nothing more.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(stalled.read(&mut buf).await.unwrap(), 0, "closed");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn disable_serves_plaintext_only() {
    let ca = TestCa::new("cluster.local").unwrap();
    let server = start(ServeConfig::new(TransportMode::Disable)).await;
    assert_eq!(
        plain_get(server.addr, false).await.unwrap(),
        ok("HTTP/1.1 Plaintext -")
    );
    assert_eq!(
        plain_get(server.addr, true).await.unwrap(),
        ok("HTTP/2.0 Plaintext -")
    );
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    assert!(
        mtls_get(server.addr, client_tls(creds, &ca, b"h2"))
            .await
            .is_err()
    );
}
