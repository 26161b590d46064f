//! Credential rotation under continuous load: the server's certificate
//! comes from files reloaded by a `FileWatcher` every second, the client's
//! is pushed into its `CredentialStore`, both re-issued every second for
//! 10 s, while clients keep sending over long-lived HTTP/2 connections and
//! over new connections. No request may fail, and new handshakes must see
//! the new server certificates (reference checklist B.4).
//!
//! The one long test of the suite (10 s of real time: rotation, refresh
//! and handshakes are real).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_identity::test_util::{IssuedLeaf, TestCa};
use mesh_identity::tls::{PeerMatcher, client_config, server_config};
use mesh_identity::{CredentialStore, FileWatcher, FileWatcherConfig};
use mesh_tower::serve::{ConnectionSecurity, ServeConfig, TransportMode, serve};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/web";
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const ROTATIONS: usize = 10;

type H2 = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn app() -> Router {
    Router::new().route(
        "/",
        get(|Extension(s): Extension<ConnectionSecurity>| async move {
            s.peer().map(|p| p.to_string()).unwrap_or_default()
        }),
    )
}

/// A TLS connection and the server leaf (DER) its handshake saw.
async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<(H2, Vec<u8>), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("cart.shop").unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok((sender, leaf))
}

async fn request(sender: &mut H2) -> Result<(), BoxError> {
    sender.ready().await?;
    let response = sender
        .send_request(http::Request::get("http://cart.shop/").body(Empty::new())?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != 200 || body != CLIENT.as_bytes() {
        return Err(format!("{status} {body:?}").into());
    }
    Ok(())
}

fn write_leaf(dir: &std::path::Path, leaf: &IssuedLeaf) {
    // One file after the other, as a naive writer does: a refresh may read
    // a new certificate with the old key, which must be a failed reload.
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_every_second_under_load_fails_no_request() {
    let ca = TestCa::new("cluster.local").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), &ca.leaf(SERVER).issue().unwrap());
    std::fs::write(dir.path().join("ca.pem"), ca.root_pem()).unwrap();
    let config = FileWatcherConfig::new(
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
        dir.path().join("ca.pem"),
    )
    .with_refresh_interval(Duration::from_secs(1));
    let watcher = FileWatcher::start(config).await.unwrap();
    let server_tls = server_config(Arc::clone(watcher.store()), PeerMatcher::AnyTrusted).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        ServeConfig::new(TransportMode::Strict(Arc::new(server_tls))),
        app(),
    ));

    let client_store = Arc::new(CredentialStore::new(
        ca.leaf(CLIENT).credentials().unwrap(),
        ca.bundle().unwrap(),
    ));
    let client_tls = Arc::new(
        client_config(
            Arc::clone(&client_store),
            PeerMatcher::exact(SERVER.parse().unwrap()),
        )
        .unwrap(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let kept = Arc::new(Counts::default());
    let fresh = Arc::new(Counts::default());
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut load = tokio::task::JoinSet::new();
    // Long-lived connections, made before the first rotation.
    for _ in 0..2 {
        let (mut sender, _) = connect(addr, Arc::clone(&client_tls)).await.unwrap();
        let (stop, counts) = (Arc::clone(&stop), Arc::clone(&kept));
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match request(&mut sender).await {
                    Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        println!("request on a kept connection failed: {e}");
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    // A new connection (a full handshake) per request.
    for _ in 0..2 {
        let (stop, counts, seen) = (Arc::clone(&stop), Arc::clone(&fresh), Arc::clone(&seen));
        let tls = Arc::clone(&client_tls);
        load.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let (mut sender, leaf) = connect(addr, Arc::clone(&tls)).await?;
                    seen.lock().unwrap().insert(leaf);
                    request(&mut sender).await
                }
                .await;
                match result {
                    Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        println!("request on a new connection failed: {e}");
                        counts.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    // Re-issue both certificates every second for 10 s.
    let mut rotation = tokio::time::interval(Duration::from_secs(1));
    rotation.tick().await;
    for _ in 0..ROTATIONS {
        rotation.tick().await;
        write_leaf(dir.path(), &ca.leaf(SERVER).issue().unwrap());
        client_store.set_credentials(ca.leaf(CLIENT).credentials().unwrap());
    }
    // One more refresh to pick up the last files.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = load.join_next().await {
        joined.unwrap();
    }
    server.abort();

    let distinct = seen.lock().unwrap().len();
    let (kept_ok, kept_failed) = (
        kept.ok.load(Ordering::Relaxed),
        kept.failed.load(Ordering::Relaxed),
    );
    let (fresh_ok, fresh_failed) = (
        fresh.ok.load(Ordering::Relaxed),
        fresh.failed.load(Ordering::Relaxed),
    );
    let stats = watcher.stats();
    println!(
        "rotation: {ROTATIONS} rotations; kept connections {kept_ok} ok / {kept_failed} failed; \
         new connections {fresh_ok} ok / {fresh_failed} failed; {distinct} distinct server \
         certificates seen; file watcher {} updates, {} failed reloads",
        stats.updates(),
        stats.failures()
    );
    assert_eq!(kept_failed + fresh_failed, 0, "no request may fail");
    assert!(
        kept_ok > 100 && fresh_ok > 50,
        "load ran: {kept_ok} / {fresh_ok}"
    );
    // Each refresh that read a complete pair swapped it in: most of the
    // ten rotations, and new handshakes presented them.
    assert!(stats.updates() >= 6, "{} updates", stats.updates());
    assert!(distinct >= 6, "{distinct} distinct server certificates");
}
