//! RequestAuthentication end to end: an axum app behind the JWT layer on a
//! real socket, configured from Istio YAML, with its key set served over
//! HTTPS (a test-CA certificate) by a local JWKS server that can rotate
//! keys and go down. Tokens are signed here with ring; the RSA key is the
//! test-only one in `mesh-tower/src/authn/testdata` (ring cannot generate
//! RSA keys).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::model::{Labels, VerifiedJwt, Workload};
use mesh_examples::backends::Server;
use mesh_identity::test_util::TestCa;
use mesh_tower::authn::{AuthnOptions, RequestAuthnLayer};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const ISS: &str = "https://issuer.example";
const RSA_TEST_KEY: &str =
    include_str!("../../mesh-tower/src/authn/testdata/rsa-2048-test-only.pem");

// === tokens ===

enum Key {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Signer {
    key: Key,
    kid: &'static str,
}

impl Signer {
    fn rsa(kid: &'static str) -> Self {
        let b64: String = RSA_TEST_KEY
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(b64).unwrap();
        Self {
            key: Key::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap()),
            kid,
        }
    }

    fn ec(kid: &'static str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Self {
            key: Key::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap()),
            kid,
        }
    }

    fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(p) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(p.public());
                json!({"kty":"RSA","kid":self.kid,"alg":"RS256","use":"sig",
                    "n":URL_SAFE_NO_PAD.encode(&c.n),"e":URL_SAFE_NO_PAD.encode(&c.e)})
            }
            Key::Ec(p) => {
                let point = p.public_key().as_ref();
                json!({"kty":"EC","crv":"P-256","kid":self.kid,
                    "x":URL_SAFE_NO_PAD.encode(&point[1..33]),"y":URL_SAFE_NO_PAD.encode(&point[33..])})
            }
        }
    }

    fn mint(&self, claims: &Value) -> String {
        let alg = match self.key {
            Key::Rsa(_) => "RS256",
            Key::Ec(_) => "ES256",
        };
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(json!({"alg":alg,"kid":self.kid,"typ":"JWT"}).to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(p) => {
                let mut sig = vec![0; p.public().modulus_len()];
                p.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            Key::Ec(p) => p.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "cart", "azp": "web-ui", "exp": now() + 600,
           "groups": ["admin"], "tier": "gold", "level": 3})
}

// === the JWKS server ===

/// An HTTPS server of one JWKS document, with a certificate for
/// `localhost` from a test CA.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(ca: &TestCa, body: String) -> Self {
        let leaf = ca
            .leaf("spiffe://test.local/jwks")
            .with_dns_name("localhost")
            .issue()
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (body, hits) = (Arc::clone(&body), Arc::clone(&hits));
            async move {
                let mut conns = tokio::task::JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, body, hits) =
                        (acceptor.clone(), Arc::clone(&body), Arc::clone(&hits));
                    let port = addr.port();
                    conns.spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                            let (body, hits) = (Arc::clone(&body), Arc::clone(&hits));
                            async move {
                                hits.fetch_add(1, Ordering::SeqCst);
                                let res = if req.uri().path() == "/jwks.json" {
                                    let text = body.lock().unwrap().clone();
                                    http::Response::new(Full::new(Bytes::from(text)))
                                } else if req.uri().path() == "/.well-known/openid-configuration" {
                                    let doc = json!({
                                        "issuer": format!("https://localhost:{port}"),
                                        "jwks_uri": format!("https://localhost:{port}/jwks.json"),
                                    });
                                    http::Response::new(Full::new(Bytes::from(doc.to_string())))
                                } else {
                                    let mut r = http::Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = http::StatusCode::NOT_FOUND;
                                    r
                                };
                                Ok::<_, Infallible>(res)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            }
        });
        Self {
            addr,
            body,
            hits,
            task,
        }
    }

    fn uri(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.addr.port())
    }

    fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// === the app ===

/// The handler's view: principal, audiences, presenter and the headers the
/// layer writes or removes.
async fn whoami(req: http::Request<axum::body::Body>) -> axum::Json<Value> {
    let jwt = req.extensions().get::<VerifiedJwt>();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    axum::Json(json!({
        "principal": jwt.map(|j| j.principal.clone()),
        "audiences": jwt.map(|j| j.audiences.clone()),
        "presenter": jwt.and_then(|j| j.presenter.clone()),
        "groups": jwt.map(|j| j.claims["groups"].clone()),
        "authorization": header("authorization"),
        "x-tier": header("x-tier"),
        "x-level": header("x-level"),
        "x-jwt-payload": header("x-jwt-payload"),
        "query": req.uri().query(),
    }))
}

fn policy_yaml(jwks_uri: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: cart-jwt, namespace: shop }}
spec:
  selector:
    matchLabels: {{ app: cart }}
  jwtRules:
  - issuer: {ISS}
    audiences: [cart]
    jwksUri: {jwks_uri}
{extra}
"#
    )
}

struct App {
    server: Server,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    _mesh: mesh_tower::Mesh,
}

impl App {
    async fn start(ca: &TestCa, yaml: &str, options: AuthnOptions) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.root_der().clone()).unwrap();
        let mesh = mesh_tests::mesh_from_yaml(yaml);
        let workload = Workload::new("shop", Labels::new([("app", "cart")]));
        let authn =
            RequestAuthnLayer::for_workload(&mesh, workload, options.with_root_store(roots));
        let router = axum::Router::new()
            .route("/whoami", get(whoami))
            .route("/pkg.Cart/Get", post(|| async { "grpc handler ran" }))
            .layer(authn);
        let server = Server::start(router).await.unwrap();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Empty<Bytes>>();
        Self {
            server,
            client,
            _mesh: mesh,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = http::Request::get(format!("http://{}{path}", self.server.addr()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = self
            .client
            .request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

fn forged(token: &str, header: Value, claims: &Value) -> String {
    let sig = token.rsplit('.').next().unwrap();
    format!(
        "{}.{}.{sig}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_with_keys_fetched_over_https() {
    let ca = TestCa::new("test.local").unwrap();
    let rsa = Signer::rsa("rsa-1");
    let jwks_server = JwksServer::start(&ca, jwks(&[&rsa])).await;
    let app = App::start(
        &ca,
        &policy_yaml(&jwks_server.uri(), ""),
        AuthnOptions::default(),
    )
    .await;

    // Valid: the handler sees the principal and claims; the token is gone.
    let (status, seen) = app.get("/whoami", Some(&rsa.mint(&claims()))).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["principal"], format!("{ISS}/alice"));
    assert_eq!(seen["audiences"], json!(["cart"]));
    assert_eq!(seen["presenter"], "web-ui");
    assert_eq!(seen["groups"], json!(["admin"]));
    assert_eq!(
        seen["authorization"],
        Value::Null,
        "token removed before the app"
    );

    // No token: passes, no principal (authorization decides later).
    let (status, seen) = app.get("/whoami", None).await;
    assert_eq!(status, 200);
    assert_eq!(seen["principal"], Value::Null);

    // Invalid tokens: 401.
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut wrong_iss = claims();
    wrong_iss["iss"] = json!("https://other.example");
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("billing");
    let valid = rsa.mint(&claims());
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let hs_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"rsa-1"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    // The classic confusion: HMAC keyed with the issuer's public key,
    // both as the JWK text and as the raw modulus.
    let mut hs256 = Vec::new();
    for secret in [
        jwks(&[&rsa]).into_bytes(),
        rsa.jwk()["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret),
            hs_input.as_bytes(),
        );
        hs256.push(format!(
            "{hs_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.as_ref())
        ));
    }
    let mut escalated = claims();
    escalated["sub"] = json!("root");
    for (name, token) in [
        ("expired", rsa.mint(&expired)),
        ("wrong issuer", rsa.mint(&wrong_iss)),
        ("wrong audience", rsa.mint(&wrong_aud)),
        ("alg none", none),
        ("hs256 keyed with the jwk", hs256[0].clone()),
        ("hs256 keyed with n", hs256[1].clone()),
        (
            "payload swapped under a valid signature",
            forged(&valid, json!({"alg":"RS256","kid":"rsa-1"}), &escalated),
        ),
    ] {
        let (status, body) = app.get("/whoami", Some(&token)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body, Value::Null, "{name}: no detail in the body");
    }
    assert_eq!(jwks_server.hits(), 1, "one fetch served every request");
    jwks_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_refetches_once_and_rotation_is_accepted() {
    let ca = TestCa::new("test.local").unwrap();
    let old = Signer::rsa("2026-11");
    let new = Signer::ec("2026-12");
    let later = Signer::ec("2027-01");
    let jwks_server = JwksServer::start(&ca, jwks(&[&old])).await;
    let app = App::start(
        &ca,
        &policy_yaml(&jwks_server.uri(), ""),
        AuthnOptions::default(),
    )
    .await;
    assert_eq!(app.get("/whoami", Some(&old.mint(&claims()))).await.0, 200);
    assert_eq!(jwks_server.hits(), 1);

    // The issuer publishes its new key and starts signing with it: the
    // unknown kid makes the layer refetch, and the token is accepted.
    jwks_server.set(jwks(&[&old, &new]));
    let (status, seen) = app.get("/whoami", Some(&new.mint(&claims()))).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["principal"], format!("{ISS}/alice"));
    assert_eq!(jwks_server.hits(), 2, "exactly one refetch");

    // A second rotation right away: the refetch is rate limited (30 s by
    // default), so a flood of made-up kids cannot hammer the issuer.
    jwks_server.set(jwks(&[&later]));
    for _ in 0..5 {
        assert_eq!(
            app.get("/whoami", Some(&later.mint(&claims()))).await.0,
            401
        );
    }
    assert_eq!(jwks_server.hits(), 2, "no refetch inside the interval");
    assert_eq!(app.get("/whoami", Some(&new.mint(&claims()))).await.0, 200);
    jwks_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_server_that_goes_down_leaves_the_last_good_keys() {
    let ca = TestCa::new("test.local").unwrap();
    let key = Signer::ec("k1");
    let stranger = Signer::ec("k9");
    let jwks_server = JwksServer::start(&ca, jwks(&[&key])).await;
    // No rate limit: every unknown kid refetches, so the refetch below
    // really meets the dead server.
    let options = AuthnOptions::default().with_min_refetch_interval(Duration::ZERO);
    let app = App::start(&ca, &policy_yaml(&jwks_server.uri(), ""), options).await;
    assert_eq!(app.get("/whoami", Some(&key.mint(&claims()))).await.0, 200);
    jwks_server.stop().await;

    // The refetch for k9 fails (connection refused): k9 is rejected, and
    // k1 still verifies with the set loaded before.
    assert_eq!(
        app.get("/whoami", Some(&stranger.mint(&claims()))).await.0,
        401
    );
    assert_eq!(app.get("/whoami", Some(&key.mint(&claims()))).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_that_never_loaded_rejects_tokens_but_not_anonymous_requests() {
    let ca = TestCa::new("test.local").unwrap();
    let key = Signer::ec("k1");
    // A server with a certificate from another CA: the TLS check fails.
    let other_ca = TestCa::new("other.local").unwrap();
    let jwks_server = JwksServer::start(&other_ca, jwks(&[&key])).await;
    let app = App::start(
        &ca,
        &policy_yaml(&jwks_server.uri(), ""),
        AuthnOptions::default(),
    )
    .await;
    assert_eq!(app.get("/whoami", Some(&key.mint(&claims()))).await.0, 401);
    assert_eq!(app.get("/whoami", None).await.0, 200);
    assert_eq!(
        jwks_server.hits(),
        0,
        "no request over an unverified connection"
    );
    jwks_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_output_headers_reach_the_handler() {
    let ca = TestCa::new("test.local").unwrap();
    let key = Signer::ec("k1");
    let jwks_server = JwksServer::start(&ca, jwks(&[&key])).await;
    let extra = "    fromParams: [token]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - { header: x-tier, claim: tier }
    - { header: x-level, claim: level }";
    let app = App::start(
        &ca,
        &policy_yaml(&jwks_server.uri(), extra),
        AuthnOptions::default(),
    )
    .await;
    let token = key.mint(&claims());
    let (status, seen) = app
        .get(&format!("/whoami?token={token}&page=2"), None)
        .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["principal"], format!("{ISS}/alice"));
    assert_eq!(
        seen["query"],
        format!("token={token}&page=2"),
        "forwardOriginalToken keeps it"
    );
    assert_eq!(seen["x-tier"], "gold");
    assert_eq!(seen["x-level"], "3");
    let payload = URL_SAFE_NO_PAD
        .decode(seen["x-jwt-payload"].as_str().unwrap())
        .unwrap();
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["sub"], "alice");

    // fromParams replaces the defaults: a bearer header is not read.
    let (status, seen) = app.get("/whoami", Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(seen["principal"], Value::Null);
    jwks_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_unauthenticated() {
    let ca = TestCa::new("test.local").unwrap();
    let key = Signer::ec("k1");
    let jwks_server = JwksServer::start(&ca, jwks(&[&key])).await;
    let app = App::start(
        &ca,
        &policy_yaml(&jwks_server.uri(), ""),
        AuthnOptions::default(),
    )
    .await;
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let call = |token: String| {
        let req = http::Request::post(format!("http://{}/pkg.Cart/Get", app.server.addr()))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap();
        h2.request(req)
    };
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let res = call(key.mint(&expired)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "16", "UNAUTHENTICATED");
    assert_eq!(res.headers()["content-type"], "application/grpc");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "the handler did not run");

    let res = call(key.mint(&claims())).await.unwrap();
    assert!(res.headers().get("grpc-status").is_none());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"grpc handler ran");
    jwks_server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_answers_bad_tokens_with_unauthenticated() {
    use mesh_core::model::security::{JwkSet, JwksSource, JwtRule};
    use mesh_core::model::{PolicyScope, RequestAuthentication};
    use mesh_examples::proto::RatingRequest;
    use mesh_examples::proto::ratings_client::RatingsClient;

    let key = Signer::ec("k1");
    let set = JwkSet::parse(&jwks(&[&key])).unwrap().0;
    let policy = RequestAuthentication::new(
        PolicyScope::new("ratings-jwt", "shop"),
        [JwtRule::new(ISS, JwksSource::Inline(set)).with_audiences(["cart"])],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(RequestAuthnLayer::new([policy]))
            .add_service(mesh_examples::backends::ratings_service("r1"))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut client = RatingsClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let call = |token: Option<String>| {
        let mut req = tonic::Request::new(RatingRequest {
            product: "p1".into(),
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };

    let reply = client.get(call(Some(key.mint(&claims())))).await.unwrap();
    assert_eq!(reply.get_ref().served_by, "r1");
    let reply = client.get(call(None)).await.unwrap();
    assert_eq!(reply.get_ref().served_by, "r1", "no token: authn passes");

    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("billing");
    let status = client
        .get(call(Some(key.mint(&wrong_aud))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "Jwt verification fails",
        "no reason, no key detail"
    );
    let status = client.get(call(Some("a.b.c".into()))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_without_keys_is_discovered_through_openid_configuration() {
    let ca = TestCa::new("test.local").unwrap();
    let key = Signer::ec("k1");
    let jwks_server = JwksServer::start(&ca, jwks(&[&key])).await;
    let issuer = format!("https://localhost:{}", jwks_server.addr.port());
    let yaml = format!(
        "
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{ name: discovered, namespace: shop }}
spec:
  jwtRules:
  - issuer: {issuer}
"
    );
    let app = App::start(&ca, &yaml, AuthnOptions::default()).await;
    let mut c = claims();
    c["iss"] = json!(issuer);
    let (status, seen) = app.get("/whoami", Some(&key.mint(&c))).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["principal"], format!("{issuer}/alice"));
    assert_eq!(jwks_server.hits(), 2, "the configuration, then the key set");
    jwks_server.stop().await;
}

/// The server stack Istio users write: authentication outside
/// authorization. RequestAuthentication alone lets anonymous requests
/// through; an AuthorizationPolicy with `requestPrincipals` is what
/// requires a token, and it reads the principal and claims the JWT layer
/// verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_reads_what_authentication_verified() {
    let ca = TestCa::new("test.local").unwrap();
    let key = Signer::ec("k1");
    let jwks_server = JwksServer::start(&ca, jwks(&[&key])).await;
    let yaml = format!(
        r#"{}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{ name: gold-alice, namespace: shop }}
spec:
  selector:
    matchLabels: {{ app: cart }}
  action: ALLOW
  rules:
  - from:
    - source:
        requestPrincipals: ["{ISS}/alice"]
    when:
    - key: request.auth.claims[tier]
      values: [gold]
"#,
        policy_yaml(&jwks_server.uri(), "")
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der().clone()).unwrap();
    let mesh = mesh_tests::mesh_from_yaml(&yaml);
    let workload = Workload::new("shop", Labels::new([("app", "cart")]));
    let authn = RequestAuthnLayer::for_workload(
        &mesh,
        workload.clone(),
        AuthnOptions::default().with_root_store(roots),
    );
    let authz = mesh_tower::authz::AuthorizationLayer::for_workload(mesh.clone(), workload);
    let router = axum::Router::new()
        .route("/whoami", get(whoami))
        .layer(authz)
        .layer(authn);
    let server = Server::start(router).await.unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let status = |token: Option<String>| {
        let mut req = http::Request::get(format!("http://{}/whoami", server.addr()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let res = client.request(req.body(Empty::new()).unwrap());
        async move { res.await.unwrap().status().as_u16() }
    };

    assert_eq!(status(Some(key.mint(&claims()))).await, 200, "alice, gold");
    assert_eq!(
        status(None).await,
        403,
        "no token: authn passes, authz denies"
    );
    let mut bob = claims();
    bob["sub"] = json!("bob");
    assert_eq!(status(Some(key.mint(&bob))).await, 403, "another principal");
    let mut silver = claims();
    silver["tier"] = json!("silver");
    assert_eq!(
        status(Some(key.mint(&silver))).await,
        403,
        "a claim condition"
    );
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    assert_eq!(
        status(Some(key.mint(&expired))).await,
        401,
        "authn answers first"
    );
    jwks_server.stop().await;
}
