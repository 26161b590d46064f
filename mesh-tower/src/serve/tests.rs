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

/// Answers `<version> <mode> <peer>` from what the request carries;
/// `/sleep/{secs}` and `/sleep-ms/{ms}` answer `slept` after that long.
fn app() -> Router {
    Router::new()
        .route(
            "/",
            get(
                |version: Version, Extension(security): Extension<ConnectionSecurity>| async move {
                    let peer = security.peer().map_or("-".to_owned(), |p| p.to_string());
                    format!("{version:?} {:?} {peer}", security.mode())
                },
            ),
        )
        .route(
            "/sleep/{secs}",
            get(
                |axum::extract::Path(secs): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    "slept"
                },
            ),
        )
        .route(
            "/sleep-ms/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "slept"
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
    // A client certificate that is not valid yet.
    let early = ca
        .leaf(CLIENT)
        .validity(
            now + Duration::from_secs(3600),
            now + Duration::from_secs(7200),
        )
        .credentials()
        .unwrap();
    assert!(
        mtls_get(server.addr, client_tls(early, &ca, b"h2"))
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

/// A server presenting `creds`.
fn server_with(creds: Credentials, ca: &TestCa) -> Arc<rustls::ServerConfig> {
    Arc::new(server_config(store(creds, ca), PeerMatcher::AnyTrusted).unwrap())
}

#[tokio::test]
async fn clients_refuse_an_expired_or_not_yet_valid_server_certificate() {
    let ca = TestCa::new("cluster.local").unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let client = || client_tls(ca.leaf(CLIENT).credentials().unwrap(), &ca, b"h2");
    for (validity, expect) in [
        ((now - 2 * hour, now - hour), "Expired"),
        ((now + hour, now + 2 * hour), "NotValidYet"),
    ] {
        let creds = ca
            .leaf(SERVER)
            .validity(validity.0, validity.1)
            .credentials()
            .unwrap();
        let server = start(ServeConfig::new(TransportMode::Strict(server_with(
            creds, &ca,
        ))))
        .await;
        let e = mtls_get(server.addr, client()).await.unwrap_err();
        assert!(format!("{e:?}").contains(expect), "{expect}: {e:?}");
    }
    // The same server with a current certificate is accepted.
    let creds = ca.leaf(SERVER).credentials().unwrap();
    let server = start(ServeConfig::new(TransportMode::Strict(server_with(
        creds, &ca,
    ))))
    .await;
    assert!(mtls_get(server.addr, client()).await.is_ok());
}

// === live PeerAuthentication ===

use mesh_core::model::security::MtlsMode;
use mesh_core::model::{Labels, PeerAuthentication, PolicyScope, SecurityPolicies, Workload};
use mesh_core::{ConfigStore, Resources};

fn cart() -> Workload {
    Workload::new("shop", Labels::new([("app", "cart")]))
}

fn publish(store: &ConfigStore, policies: Vec<PeerAuthentication>) {
    let mut resources = Resources::new();
    resources.security = SecurityPolicies {
        peer_authentications: policies,
        ..SecurityPolicies::default()
    };
    store.publish("test".into(), resources).unwrap();
}

fn namespace_wide(mode: MtlsMode) -> PeerAuthentication {
    PeerAuthentication::new(PolicyScope::new("default", "shop"), mode)
}

/// Binds first, so that a policy can name the port, then serves.
async fn start_policy(store: &ConfigStore, ca: &TestCa) -> (Server, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let creds = Arc::new(CredentialStore::new(
        ca.leaf(SERVER).credentials().unwrap(),
        ca.bundle().unwrap(),
    ));
    let policy = PolicyTransport::from_credentials(store.clone(), cart(), creds).unwrap();
    let config = ServeConfig::new(TransportMode::Policy(policy));
    let task = tokio::spawn(serve(listener, config, app()));
    (Server { addr, task }, addr.port())
}

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An HTTP/2 connection over mutual TLS, kept open by the caller.
async fn h2_mtls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<H2, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("server.default.svc").unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut H2, path: &str) -> Result<(StatusCode, String), BoxError> {
    let request = Request::get(format!("http://server.default.svc{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

// Real time: these tests need no timer, and a paused clock would
// auto-advance to the handshake deadline whenever socket I/O is late.
#[tokio::test]
async fn a_peer_authentication_change_applies_to_new_connections_only() {
    let ca = TestCa::new("cluster.local").unwrap();
    let store = ConfigStore::new();
    publish(&store, vec![namespace_wide(MtlsMode::Strict)]);
    let (server, _) = start_policy(&store, &ca).await;
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    let tls = || client_tls(creds.clone(), &ca, b"h2");
    let mtls_ok = ok(&format!("HTTP/2.0 MutualTls {CLIENT}"));

    // STRICT: mutual TLS only.
    let mut kept = h2_mtls(server.addr, tls()).await.unwrap();
    assert_eq!(send(&mut kept, "/").await.unwrap(), mtls_ok);
    assert!(plain_get(server.addr, false).await.is_err());

    // PERMISSIVE: both on the one port.
    publish(&store, vec![namespace_wide(MtlsMode::Permissive)]);
    assert_eq!(
        plain_get(server.addr, false).await.unwrap(),
        ok("HTTP/1.1 Plaintext -")
    );
    assert_eq!(mtls_get(server.addr, tls()).await.unwrap(), mtls_ok);

    // DISABLE: plaintext only for new connections; the connection made
    // under STRICT keeps its mutual TLS.
    publish(&store, vec![namespace_wide(MtlsMode::Disable)]);
    assert_eq!(
        plain_get(server.addr, true).await.unwrap(),
        ok("HTTP/2.0 Plaintext -")
    );
    assert!(mtls_get(server.addr, tls()).await.is_err());
    assert_eq!(send(&mut kept, "/").await.unwrap(), mtls_ok);

    // Back to STRICT.
    publish(&store, vec![namespace_wide(MtlsMode::Strict)]);
    assert!(plain_get(server.addr, false).await.is_err());
    assert_eq!(mtls_get(server.addr, tls()).await.unwrap(), mtls_ok);
}

#[tokio::test]
async fn port_level_mtls_of_the_workload_policy_decides_the_listener_port() {
    let ca = TestCa::new("cluster.local").unwrap();
    let store = ConfigStore::new();
    let (server, port) = start_policy(&store, &ca).await;
    // No policy: PERMISSIVE.
    assert_eq!(
        plain_get(server.addr, false).await.unwrap(),
        ok("HTTP/1.1 Plaintext -")
    );
    let selected = |mode, ports: Vec<(u16, MtlsMode)>| {
        let scope = PolicyScope::new("cart", "shop").with_selector(Labels::new([("app", "cart")]));
        PeerAuthentication::new(scope, mode).with_port_level(ports)
    };
    // Mesh-wide STRICT, the workload's policy DISABLE on this port only.
    let mesh = PeerAuthentication::new(
        PolicyScope::new("default", "istio-system"),
        MtlsMode::Strict,
    );
    publish(
        &store,
        vec![
            mesh.clone(),
            selected(MtlsMode::Unset, vec![(port, MtlsMode::Disable)]),
        ],
    );
    assert_eq!(
        plain_get(server.addr, false).await.unwrap(),
        ok("HTTP/1.1 Plaintext -")
    );
    // The same policy naming another port: this one inherits STRICT.
    let other = port.wrapping_add(1).max(1);
    publish(
        &store,
        vec![
            mesh,
            selected(MtlsMode::Unset, vec![(other, MtlsMode::Disable)]),
        ],
    );
    assert!(plain_get(server.addr, false).await.is_err());
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    assert_eq!(
        mtls_get(server.addr, client_tls(creds, &ca, b"h2"))
            .await
            .unwrap(),
        ok(&format!("HTTP/2.0 MutualTls {CLIENT}"))
    );
}

// === max connection age ===
//
// Real time with short ages: a paused clock auto-advances whenever the
// runtime waits on socket I/O that arrives later in real time (small TLS
// writes held back by Nagle and delayed ACKs), which fired the age timer
// in the middle of a request. Only lower
// bounds on time are asserted (timers never fire early); the upper
// bounds are generous guards against a hang.

const AGE: Duration = Duration::from_millis(300);
const GUARD: Duration = Duration::from_secs(20);

#[test]
fn age_jitter_is_plus_or_minus_ten_percent() {
    let age = MaxConnectionAge {
        age: Duration::from_secs(100),
        grace: None,
    };
    let samples: Vec<Duration> = (0..1000).map(|_| age.jittered()).collect();
    assert!(
        samples
            .iter()
            .all(|d| *d >= Duration::from_secs(90) && *d <= Duration::from_secs(110))
    );
    let below = samples.iter().filter(|d| **d < age.age).count();
    assert!((300..700).contains(&below), "{below} of 1000 below the age");
}

#[tokio::test]
async fn max_connection_age_drains_h2_after_the_request_in_flight() {
    assert_eq!(
        ServeConfig::new(TransportMode::Disable).max_connection_age(),
        None,
        "off by default, as gRPC's is infinite"
    );
    let ca = TestCa::new("cluster.local").unwrap();
    let config =
        ServeConfig::new(TransportMode::Strict(server_tls(&ca))).with_max_connection_age(AGE, None);
    let server = start(config).await;
    let creds = ca.leaf(CLIENT).credentials().unwrap();
    let mut sender = h2_mtls(server.addr, client_tls(creds, &ca, b"h2"))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(send(&mut sender, "/").await.unwrap().0, StatusCode::OK);
    // In flight across the age (at most 330 ms): it still completes.
    let slow = format!("/sleep-ms/{}", 3 * AGE.as_millis());
    assert_eq!(send(&mut sender, &slow).await.unwrap(), ok("slept"));
    // And the connection is gone: GOAWAY was sent at the age.
    let closed = tokio::time::timeout(GUARD, sender.ready()).await.unwrap();
    assert!(closed.is_err(), "the connection closed");
    assert!(started.elapsed() >= 3 * AGE);
}

#[tokio::test]
async fn max_connection_age_grace_closes_a_connection_that_is_still_busy() {
    let config = ServeConfig::new(TransportMode::Disable).with_max_connection_age(AGE, Some(AGE));
    let server = start(config).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let started = tokio::time::Instant::now();
    let request = Request::get("http://server/sleep/3600")
        .body(Empty::<Bytes>::new())
        .unwrap();
    // The request outlives age plus grace: the connection is cut.
    let result = tokio::time::timeout(GUARD, sender.send_request(request))
        .await
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(started.elapsed() >= AGE.mul_f64(0.9) + AGE);
}

#[tokio::test]
async fn max_connection_age_closes_a_keep_alive_http1_connection() {
    let config = ServeConfig::new(TransportMode::Disable).with_max_connection_age(AGE, None);
    let server = start(config).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    // Keep-alive and idle: closed at the age.
    let n = tokio::time::timeout(GUARD, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "closed");
    assert!(started.elapsed() >= AGE.mul_f64(0.9));
}

#[tokio::test]
async fn max_connection_age_lets_an_http1_request_in_flight_finish_then_closes() {
    let config = ServeConfig::new(TransportMode::Disable).with_max_connection_age(AGE, None);
    let server = start(config).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = format!(
        "GET /sleep-ms/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        3 * AGE.as_millis()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // The whole response arrives, then the close: read to the end.
    let mut answer = Vec::new();
    tokio::time::timeout(GUARD, tcp.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("slept"), "{answer}");
    assert!(started.elapsed() >= 3 * AGE);
}
