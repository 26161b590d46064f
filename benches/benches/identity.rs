//! mTLS handshake cost: our SPIFFE verifiers (`mesh_identity::tls`) against
//! plain rustls with webpki's DNS-name verifiers, same certificates, same
//! ring provider, both without session resumption, so each iteration is a
//! full TLS 1.3 mutual handshake run in memory (no sockets), plus one
//! 1 KiB application record each way over the established session.
//!
//! `mtls_h2_request`: the per-request cost over one established mTLS
//! HTTP/2 connection on loopback, one request at a time, through our
//! STRICT `mesh_tower::serve` server and our client config, against a
//! plain tokio-rustls + hyper-util server and client with webpki's
//! verifiers, the same handler and certificates, in the same run (a
//! current-thread runtime runs both ends, so the number is CPU per
//! request, not scheduling).

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_identity::test_util::TestCa;
use mesh_identity::tls::{PeerMatcher, client_config, server_config};
use mesh_identity::{CredentialStore, SpiffeId};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use std::io::{Read, Write};
use std::net::SocketAddr;
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_tower::{ServeConfig, TransportMode, serve};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
const NAME: &str = "server.default.svc";

/// Moves every pending TLS byte from `from` to `to`.
fn pump(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    buf: &mut Vec<u8>,
) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn handshake(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> (ClientConnection, ServerConnection) {
    let mut c = ClientConnection::new(client.clone(), ServerName::try_from(NAME).unwrap()).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        pump(&mut c, &mut s, &mut buf);
        pump(&mut s, &mut c, &mut buf);
    }
    (c, s)
}

fn round_trip(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    payload: &[u8],
    buf: &mut Vec<u8>,
    out: &mut [u8],
) {
    c.writer().write_all(payload).unwrap();
    pump(c, s, buf);
    s.reader().read_exact(out).unwrap();
    s.writer().write_all(payload).unwrap();
    pump(s, c, buf);
    c.reader().read_exact(out).unwrap();
}

type Pair = (Arc<ClientConfig>, Arc<ServerConfig>);

/// (ours, plain rustls).
fn configs() -> (Pair, Pair) {
    let ca = TestCa::new("cluster.local").unwrap();
    let client_leaf = ca
        .leaf(CLIENT)
        .with_dns_name("client.default.svc")
        .issue()
        .unwrap();
    let server_leaf = ca.leaf(SERVER).with_dns_name(NAME).issue().unwrap();

    let creds = |leaf: &mesh_identity::test_util::IssuedLeaf| {
        mesh_identity::Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap()
    };
    let server_store = Arc::new(CredentialStore::new(
        creds(&server_leaf),
        ca.bundle().unwrap(),
    ));
    let client_store = Arc::new(CredentialStore::new(
        creds(&client_leaf),
        ca.bundle().unwrap(),
    ));
    let ours = (
        Arc::new(
            client_config(
                client_store,
                PeerMatcher::exact(SpiffeId::parse(SERVER).unwrap()),
            )
            .unwrap(),
        ),
        Arc::new(server_config(server_store, PeerMatcher::AnyTrusted).unwrap()),
    );

    let provider = mesh_identity::tls::provider();
    let mut roots = RootCertStore::empty();
    roots.add(ca.root_der().clone()).unwrap();
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .unwrap();
    let mut plain_server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_leaf.chain.clone(), server_leaf.key.clone_key())
        .unwrap();
    plain_server.session_storage = Arc::new(NoServerSessionStorage {});
    plain_server.send_tls13_tickets = 0;
    let mut plain_client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(client_leaf.chain.clone(), client_leaf.key.clone_key())
        .unwrap();
    plain_client.resumption = Resumption::disabled();
    (ours, (Arc::new(plain_client), Arc::new(plain_server)))
}

fn bench(c: &mut Criterion) {
    let (ours, plain) = configs();
    let mut group = c.benchmark_group("mtls_handshake");
    group.bench_function("spiffe_verifiers", |b| {
        b.iter(|| handshake(&ours.0, &ours.1))
    });
    group.bench_function("plain_rustls_webpki", |b| {
        b.iter(|| handshake(&plain.0, &plain.1))
    });
    group.finish();

    let payload = [7u8; 1024];
    let mut group = c.benchmark_group("mtls_record_round_trip_1k");
    for (name, (client, server)) in [("spiffe_verifiers", &ours), ("plain_rustls_webpki", &plain)] {
        let (mut cc, mut sc) = handshake(client, server);
        let (mut buf, mut out) = (Vec::with_capacity(4096), [0u8; 1024]);
        group.bench_function(name, |b| {
            b.iter(|| round_trip(&mut cc, &mut sc, &payload, &mut buf, &mut out))
        });
    }
    group.finish();
}

/// The handler both servers run.
async fn handler<B>(_: http::Request<B>) -> Result<http::Response<Full<Bytes>>, hyper::Error> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// Our STRICT server on loopback; its address.
async fn our_server(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower::service_fn(handler);
    tokio::spawn(serve(
        listener,
        ServeConfig::new(TransportMode::Strict(config)),
        service,
    ));
    addr
}

/// A plain tokio-rustls + hyper-util server: accept, handshake, serve.
async fn plain_server(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(handler))
                    .await;
            });
        }
    });
    addr
}

/// One mTLS HTTP/2 connection to `addr`.
async fn h2_client(addr: SocketAddr, mut config: ClientConfig) -> SendRequest<Empty<Bytes>> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one_request(sender: &mut SendRequest<Empty<Bytes>>) {
    let request = http::Request::get(format!("https://{NAME}/"))
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

fn bench_requests(c: &mut Criterion) {
    let (ours, plain) = configs();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let senders = rt.block_on(async {
        let ours_addr = our_server(ours.1.clone()).await;
        // The plain server offers h2 as ours does.
        let mut plain_server_config = (*plain.1).clone();
        plain_server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let plain_addr = plain_server(Arc::new(plain_server_config)).await;
        [
            (
                "spiffe_serve_strict",
                h2_client(ours_addr, (*ours.0).clone()).await,
            ),
            (
                "plain_tokio_rustls_hyper",
                h2_client(plain_addr, (*plain.0).clone()).await,
            ),
        ]
    });
    let mut group = c.benchmark_group("mtls_h2_request");
    for (name, sender) in senders {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let mut sender = sender.clone();
                async move {
                    let started = Instant::now(); // real time: the runtime is not paused
                    for _ in 0..iters {
                        one_request(&mut sender).await;
                    }
                    started.elapsed()
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, bench_requests);
criterion_main!(benches);
