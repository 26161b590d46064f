use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use mesh_core::model::security::{ClaimToHeader, JwkSet, JwksSource, JwtHeader, JwtRule};
use mesh_core::model::{PolicyScope, RequestAuthentication, VerifiedJwt};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};

use super::*;

const RSA_TEST_KEY: &str = include_str!("testdata/rsa-2048-test-only.pem");
const ISS: &str = "https://issuer.example";

/// A signing key for minting test tokens.
enum Key {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair, &'static str, &'static str),
    Rsa(RsaKeyPair),
}

struct Signer {
    key: Key,
    kid: String,
}

impl Signer {
    fn ed(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Self {
            key: Key::Ed(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
            kid: kid.into(),
        }
    }

    fn ec(kid: &str, p384: bool) -> Self {
        let rng = SystemRandom::new();
        let (alg, crv) = if p384 {
            (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
        } else {
            (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let name = if p384 { "ES384" } else { "ES256" };
        Self {
            key: Key::Ec(pair, crv, name),
            kid: kid.into(),
        }
    }

    fn rsa(kid: &str) -> Self {
        let b64: String = RSA_TEST_KEY
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD.decode(b64).unwrap();
        Self {
            key: Key::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap()),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> Value {
        match &self.key {
            Key::Ed(p) => {
                json!({"kty":"OKP","crv":"Ed25519","kid":self.kid,"x":URL_SAFE_NO_PAD.encode(p.public_key())})
            }
            Key::Ec(p, crv, _) => {
                let point = p.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                json!({"kty":"EC","crv":crv,"kid":self.kid,
                    "x":URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
                    "y":URL_SAFE_NO_PAD.encode(&point[1 + len..])})
            }
            Key::Rsa(p) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(p.public());
                json!({"kty":"RSA","kid":self.kid,"n":URL_SAFE_NO_PAD.encode(&c.n),"e":URL_SAFE_NO_PAD.encode(&c.e)})
            }
        }
    }

    fn default_alg(&self) -> &'static str {
        match &self.key {
            Key::Ed(_) => "EdDSA",
            Key::Ec(_, _, name) => name,
            Key::Rsa(_) => "RS256",
        }
    }

    fn mint(&self, claims: Value) -> String {
        self.mint_with(self.default_alg(), claims)
    }

    fn mint_with(&self, alg: &str, claims: Value) -> String {
        let header = json!({"alg": alg, "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match (&self.key, alg) {
            (Key::Ed(p), _) => p.sign(input.as_bytes()).as_ref().to_vec(),
            (Key::Ec(p, _, _), _) => p.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            (Key::Rsa(p), alg) => {
                let enc: &'static dyn signature::RsaEncoding = match alg {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    other => panic!("{other}"),
                };
                let mut sig = vec![0; p.public().modulus_len()];
                p.sign(enc, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

fn inline(signers: &[&Signer]) -> JwksSource {
    JwksSource::Inline(JwkSet::parse(&jwks(signers)).unwrap().0)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": ["shop"], "azp": "web", "exp": now() + 600, "org": {"id": "o1"}, "n": 7})
}

fn policy(rules: Vec<JwtRule>) -> RequestAuthentication {
    RequestAuthentication::new(PolicyScope::new("jwt", "shop"), rules)
}

/// What the application saw.
#[derive(Clone, Debug)]
struct Seen {
    uri: Uri,
    headers: HeaderMap,
    jwt: Option<VerifiedJwt>,
}

fn app()
-> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|req: Request<()>| async move {
        let mut res = Response::new(String::new());
        res.extensions_mut().insert(Seen {
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            jwt: req.extensions().get::<VerifiedJwt>().cloned(),
        });
        Ok::<_, Infallible>(res)
    })
}

async fn send(
    layer: &RequestAuthnLayer,
    req: Request<()>,
) -> (StatusCode, Option<Seen>, HeaderMap) {
    let res = layer.layer(app()).oneshot(req).await.unwrap();
    let seen = res.extensions().get::<Seen>().cloned();
    (res.status(), seen, res.headers().clone())
}

fn bearer(token: &str) -> Request<()> {
    Request::get("http://shop/cart")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn a_valid_token_reaches_the_app_as_verified_jwt_without_the_token() {
    let signer = Signer::ed("k1");
    let rule = JwtRule::new(ISS, inline(&[&signer])).with_audiences(["shop"]);
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let (status, seen, _) = send(&layer, bearer(&signer.mint(claims()))).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.unwrap();
    let jwt = seen.jwt.unwrap();
    assert_eq!(jwt.principal, format!("{ISS}/alice"));
    assert_eq!(jwt.issuer, ISS);
    assert_eq!(jwt.subject, "alice");
    assert_eq!(jwt.audiences, ["shop"]);
    assert_eq!(jwt.presenter.as_deref(), Some("web"));
    assert_eq!(jwt.claims["org"]["id"], "o1");
    assert!(seen.headers.get("authorization").is_none(), "token removed");
}

#[tokio::test]
async fn every_allowed_algorithm_verifies() {
    let ed = Signer::ed("ed");
    let es256 = Signer::ec("es256", false);
    let es384 = Signer::ec("es384", true);
    let rsa = Signer::rsa("rsa");
    let rule = JwtRule::new(ISS, inline(&[&ed, &es256, &es384, &rsa]));
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let mut tokens = vec![
        ed.mint(claims()),
        es256.mint(claims()),
        es384.mint(claims()),
    ];
    for alg in ["RS256", "RS384", "RS512", "PS256"] {
        tokens.push(rsa.mint_with(alg, claims()));
    }
    for token in tokens {
        let (status, seen, _) = send(&layer, bearer(&token)).await;
        assert_eq!(status, StatusCode::OK, "{token}");
        assert!(seen.unwrap().jwt.is_some());
    }
}

#[tokio::test]
async fn invalid_tokens_are_401_without_detail() {
    let signer = Signer::rsa("k1");
    let other = Signer::ed("k2");
    let rule = JwtRule::new(ISS, inline(&[&signer, &other])).with_audiences(["shop"]);
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let mut expired = claims();
    expired["exp"] = json!(now() - 120);
    let mut early = claims();
    early["nbf"] = json!(now() + 120);
    let mut wrong_iss = claims();
    wrong_iss["iss"] = json!("https://evil.example");
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("other");
    let mut no_aud = claims();
    no_aud.as_object_mut().unwrap().remove("aud");
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#));
    // HS256 "signed" with the RSA public key as the HMAC secret.
    let hs_input = format!(
        "{}.{payload}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k1"}"#)
    );
    let secret = signer.jwk().to_string();
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        hs_input.as_bytes(),
    );
    let hs256 = format!("{hs_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    // Signed by k2 but naming k1.
    let mut swapped = other.mint(claims());
    swapped = swapped.replacen(
        swapped.split('.').next().unwrap(),
        &URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1"}"#),
        1,
    );
    let tampered = {
        let t = signer.mint(claims());
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = claims();
        c["sub"] = json!("admin");
        let p = URL_SAFE_NO_PAD.encode(c.to_string());
        parts[1] = &p;
        parts.join(".")
    };
    for (name, token) in [
        ("expired", signer.mint(expired)),
        ("nbf ahead", signer.mint(early)),
        ("wrong issuer", signer.mint(wrong_iss)),
        ("wrong audience", signer.mint(wrong_aud)),
        ("no audience", signer.mint(no_aud)),
        ("alg none", none),
        ("hs256 with the public key", hs256),
        ("kid of another key", swapped),
        ("tampered payload", tampered),
        ("garbage", "not-a-jwt".into()),
    ] {
        let (status, seen, headers) = send(&layer, bearer(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert!(seen.is_none(), "{name}: the app must not run");
        assert_eq!(
            headers["www-authenticate"], "Bearer error=\"invalid_token\"",
            "{name}"
        );
    }
}

#[tokio::test]
async fn requests_without_a_token_pass_and_forged_outputs_are_removed() {
    let signer = Signer::ed("k1");
    let rule =
        JwtRule::new(ISS, inline(&[&signer])).with_output_claim_to_headers([ClaimToHeader {
            header: http::HeaderName::from_static("x-sub"),
            claim: "sub".into(),
        }]);
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let req = Request::get("http://shop/")
        .header("x-sub", "root")
        .header("authorization", "Basic dXNlcjpwdw==")
        .body(())
        .unwrap();
    let (status, seen, _) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.unwrap();
    assert!(seen.jwt.is_none());
    assert!(
        seen.headers.get("x-sub").is_none(),
        "a client cannot set x-sub"
    );
    assert_eq!(seen.headers["authorization"], "Basic dXNlcjpwdw==");
}

#[tokio::test]
async fn outputs_and_forwarding_follow_the_rule() {
    let signer = Signer::ed("k1");
    let rule = JwtRule::new(ISS, inline(&[&signer]))
        .with_forward_original_token(true)
        .with_output_claim_to_headers([
            ClaimToHeader {
                header: http::HeaderName::from_static("x-org"),
                claim: "org.id".into(),
            },
            ClaimToHeader {
                header: http::HeaderName::from_static("x-n"),
                claim: "n".into(),
            },
            ClaimToHeader {
                header: http::HeaderName::from_static("x-aud"),
                claim: "aud".into(),
            },
        ])
        .with_output_payload_to_header(http::HeaderName::from_static("x-payload"));
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let token = signer.mint(claims());
    let (status, seen, _) = send(&layer, bearer(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let h = seen.unwrap().headers;
    assert_eq!(h["authorization"], format!("Bearer {token}"));
    assert_eq!(h["x-org"], "o1");
    assert_eq!(h["x-n"], "7");
    assert!(h.get("x-aud").is_none(), "lists are not copied");
    let payload = URL_SAFE_NO_PAD.decode(h["x-payload"].as_bytes()).unwrap();
    let payload: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(payload["sub"], "alice");
}

#[tokio::test]
async fn custom_locations_params_and_cookies() {
    let signer = Signer::ed("k1");
    let rule = JwtRule::new(ISS, inline(&[&signer]))
        .with_from_headers([JwtHeader::new(
            http::HeaderName::from_static("x-jwt"),
            "Token ",
        )])
        .with_from_params(["t"])
        .with_from_cookies(["session"]);
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let token = signer.mint(claims());

    let req = Request::get("http://shop/")
        .header("x-jwt", format!("Token {token}"))
        .body(())
        .unwrap();
    let (status, seen, _) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.unwrap();
    assert!(seen.jwt.is_some());
    assert!(seen.headers.get("x-jwt").is_none());

    let req = Request::get(format!("http://shop/p?a=1&t={token}&b=2"))
        .body(())
        .unwrap();
    let (status, seen, _) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.unwrap();
    assert!(seen.jwt.is_some());
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/p?a=1&b=2");

    let req = Request::get("http://shop/")
        .header("cookie", format!("a=1; session={token}; b=2"))
        .body(())
        .unwrap();
    let (status, seen, _) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.unwrap();
    assert!(seen.jwt.is_some());
    assert_eq!(seen.headers["cookie"], "a=1; b=2");

    // The default locations are not read when the rule names its own.
    let (status, seen, _) = send(&layer, bearer(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.unwrap().jwt.is_none());
    // Two tokens: rejected.
    let req = Request::get(format!("http://shop/?t={token}"))
        .header("x-jwt", format!("Token {token}"))
        .body(())
        .unwrap();
    assert_eq!(send(&layer, req).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_issuer_is_checked_only_where_its_rule_looks() {
    let a = Signer::ed("a");
    let b = Signer::ed("b");
    let rule_a = JwtRule::new("https://a", inline(&[&a]));
    let rule_b = JwtRule::new("https://b", inline(&[&b]))
        .with_from_headers([JwtHeader::new(http::HeaderName::from_static("x-b"), "")]);
    let layer = RequestAuthnLayer::new([policy(vec![rule_a, rule_b])]);
    let mut cb = claims();
    cb["iss"] = json!("https://b");
    let tb = b.mint(cb);
    let req = Request::get("http://shop/")
        .header("x-b", tb.as_str())
        .body(())
        .unwrap();
    let (status, seen, _) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.unwrap().jwt.unwrap().issuer, "https://b");
    // b's token in a's header: b never reads Authorization.
    assert_eq!(send(&layer, bearer(&tb)).await.0, StatusCode::UNAUTHORIZED);
    let mut ca = claims();
    ca["iss"] = json!("https://a");
    assert_eq!(send(&layer, bearer(&a.mint(ca))).await.0, StatusCode::OK);
}

#[tokio::test]
async fn grpc_callers_get_unauthenticated() {
    let signer = Signer::ed("k1");
    let layer = RequestAuthnLayer::new([policy(vec![JwtRule::new(ISS, inline(&[&signer]))])]);
    let req = Request::post("http://shop/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("authorization", "Bearer x.y.z")
        .body(())
        .unwrap();
    let (status, seen, headers) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.is_none());
    assert_eq!(headers["grpc-status"], "16");
}

#[tokio::test]
async fn no_rules_mean_no_checks() {
    let layer = RequestAuthnLayer::new([]);
    let (status, seen, _) = send(&layer, bearer("garbage")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.unwrap().headers["authorization"], "Bearer garbage");
}

// === key set loading (file source, paused time) ===

fn file_rule(path: &std::path::Path) -> JwtRule {
    JwtRule::new(ISS, JwksSource::File(path.to_owned()))
}

#[tokio::test(start_paused = true)]
async fn an_unknown_kid_refetches_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let k1 = Signer::ed("k1");
    let k2 = Signer::ed("k2");
    let k3 = Signer::ed("k3");
    std::fs::write(&path, jwks(&[&k1])).unwrap();
    let layer = RequestAuthnLayer::new([policy(vec![file_rule(&path)])]);
    // The first request waits for the first load.
    assert_eq!(
        send(&layer, bearer(&k1.mint(claims()))).await.0,
        StatusCode::OK
    );

    // The issuer rotates: k2's token triggers a refetch at once (the
    // first load does not count against the rate limit).
    std::fs::write(&path, jwks(&[&k1, &k2])).unwrap();
    assert_eq!(
        send(&layer, bearer(&k2.mint(claims()))).await.0,
        StatusCode::OK
    );

    // Another rotation right after: rate limited, so k3 is not known yet.
    std::fs::write(&path, jwks(&[&k3])).unwrap();
    assert_eq!(
        send(&layer, bearer(&k3.mint(claims()))).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&layer, bearer(&k2.mint(claims()))).await.0,
        StatusCode::OK,
        "old set still in use"
    );

    tokio::time::sleep(AuthnOptions::DEFAULT_MIN_REFETCH_INTERVAL).await;
    assert_eq!(
        send(&layer, bearer(&k3.mint(claims()))).await.0,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_reload_keeps_the_last_good_set_and_refresh_picks_up_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let k1 = Signer::ed("k1");
    let k2 = Signer::ed("k2");
    std::fs::write(&path, jwks(&[&k1])).unwrap();
    let layer = RequestAuthnLayer::new([policy(vec![file_rule(&path)])]);
    assert_eq!(
        send(&layer, bearer(&k1.mint(claims()))).await.0,
        StatusCode::OK
    );

    std::fs::write(&path, "{ broken").unwrap();
    tokio::time::sleep(AuthnOptions::DEFAULT_REFRESH_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(
        send(&layer, bearer(&k1.mint(claims()))).await.0,
        StatusCode::OK,
        "last good set kept"
    );

    // Fixed file and rotated keys: the periodic reload (retried after the
    // failure) finds k2 without any unknown-kid trigger.
    std::fs::write(&path, jwks(&[&k2])).unwrap();
    tokio::time::sleep(AuthnOptions::DEFAULT_MIN_REFETCH_INTERVAL + Duration::from_secs(1)).await;
    let layer_sees = |s: &Signer| send(&layer, bearer(&s.mint(claims())));
    assert_eq!(
        layer_sees(&k1).await.0,
        StatusCode::UNAUTHORIZED,
        "k1 rotated out"
    );
    assert_eq!(layer_sees(&k2).await.0, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_set_that_never_loaded_accepts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.json");
    let k1 = Signer::ed("k1");
    let layer = RequestAuthnLayer::new([policy(vec![file_rule(&path)])]);
    assert_eq!(
        send(&layer, bearer(&k1.mint(claims()))).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Requests without a token still pass.
    let (status, seen, _) = send(&layer, Request::get("http://shop/").body(()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.unwrap().jwt.is_none());
    // Once the file appears, the retry after the refetch interval loads it.
    std::fs::write(&path, jwks(&[&k1])).unwrap();
    tokio::time::sleep(AuthnOptions::DEFAULT_MIN_REFETCH_INTERVAL + Duration::from_secs(1)).await;
    assert_eq!(
        send(&layer, bearer(&k1.mint(claims()))).await.0,
        StatusCode::OK
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_layer_ends_the_loading_task() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let k1 = Signer::ed("k1");
    std::fs::write(&path, jwks(&[&k1])).unwrap();
    let layer = RequestAuthnLayer::new([policy(vec![file_rule(&path)])]);
    assert_eq!(
        send(&layer, bearer(&k1.mint(claims()))).await.0,
        StatusCode::OK
    );
    let Source::Static(compiled) = &layer.source else {
        panic!("static")
    };
    let alive = compiled.key_sets()[0].liveness();
    assert!(alive());
    drop(layer);
    // The aborted task drops its handle on the set at its next poll.
    tokio::task::yield_now().await;
    assert!(!alive(), "the loading task ended with the layer");
}

// === live config ===

#[tokio::test]
async fn the_live_layer_follows_the_store_for_its_workload() {
    use mesh_core::model::{Labels, SecurityPolicies, Workload};
    use mesh_core::{ConfigStore, Resources, SourceId};

    let signer = Signer::ed("k1");
    let store = ConfigStore::new();
    let mesh = Mesh::new(store.clone());
    let workload = Workload::new("shop", Labels::new([("app", "cart")]));
    let layer = RequestAuthnLayer::for_workload(&mesh, workload, AuthnOptions::default());
    let token = signer.mint(claims());
    // No policy yet: anything passes, nothing is verified.
    let (status, seen, _) = send(&layer, bearer("garbage")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.unwrap().jwt.is_none());

    let publish = |scope: PolicyScope| {
        let resources = Resources {
            security: SecurityPolicies {
                request_authentications: vec![RequestAuthentication::new(
                    scope,
                    [JwtRule::new(ISS, inline(&[&signer]))],
                )],
                ..SecurityPolicies::default()
            },
            ..Resources::default()
        };
        store.publish(SourceId::new("test"), resources).unwrap()
    };
    // Polls until garbage tokens get `want` (the layer's task applies a
    // change shortly after the store publishes it).
    let settle = |want: StatusCode| {
        let layer = layer.clone();
        async move {
            for _ in 0..200 {
                if send(&layer, bearer("garbage")).await.0 == want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            false
        }
    };
    let cart = Labels::new([("app", "cart")]);
    let web = Labels::new([("app", "web")]);
    publish(PolicyScope::new("jwt", "shop").with_selector(cart));
    assert!(
        settle(StatusCode::UNAUTHORIZED).await,
        "the cart policy applies"
    );
    let (status, seen, _) = send(&layer, bearer(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.unwrap().jwt.is_some());

    // Replaced by a policy for another workload: nothing applies again.
    publish(PolicyScope::new("jwt", "shop").with_selector(web));
    assert!(
        settle(StatusCode::OK).await,
        "the web policy does not apply"
    );
    let (status, seen, _) = send(&layer, bearer(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(seen.unwrap().jwt.is_none());
}

#[tokio::test]
async fn an_output_header_that_is_also_a_token_location_is_read_first() {
    let signer = Signer::ed("k1");
    let header = http::HeaderName::from_static("x-jwt");
    let rule = JwtRule::new(ISS, inline(&[&signer]))
        .with_from_headers([JwtHeader::new(header.clone(), "")])
        .with_output_payload_to_header(header);
    let layer = RequestAuthnLayer::new([policy(vec![rule])]);
    let token = signer.mint(claims());
    let req = Request::get("http://shop/")
        .header("x-jwt", token.as_str())
        .body(())
        .unwrap();
    let (status, seen, _) = send(&layer, req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = seen.unwrap();
    assert!(
        seen.jwt.is_some(),
        "the token was found before the header was written"
    );
    assert_eq!(
        seen.headers["x-jwt"],
        token.split('.').nth(1).unwrap(),
        "now the payload"
    );
}
