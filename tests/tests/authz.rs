//! AuthorizationPolicy end to end: Istio YAML through the file source into
//! the evaluation engine (a table of cases covering every field, the
//! evaluation order, the empty-policy cases and the bypass advisories of
//! the reference's section B.7), the config errors, and the authorization
//! layer over real mTLS connections (`serve` in STRICT mode).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::authz::{AuthzRequest, PathNormalization, PolicySet, Verdict, normalize_path};
use mesh_core::file::FileSource;
use mesh_core::model::{Labels, VerifiedJwt, Workload};

/// The workload under test: `cart` in namespace `shop`.
fn workload() -> Workload {
    Workload::new("shop", Labels::new([("app", "cart")]))
}

fn policies(yaml: &str) -> PolicySet {
    let text = format!("{yaml}\n");
    let t = FileSource::parse_str("authz.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    PolicySet::for_workload(&t.resources.security, &workload())
}

/// One `AuthorizationPolicy` in `shop` named `p` with this spec.
fn policy(spec: &str) -> String {
    policy_in("shop", "p", "", spec)
}

fn policy_in(namespace: &str, name: &str, annotations: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{ name: {name}, namespace: {namespace}{annotations} }}\nspec: {spec}\n"
    )
}

/// A request as the table describes it.
#[derive(Clone)]
struct Req {
    method: &'static str,
    host: Option<&'static str>,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    ip: &'static str,
    principal: Option<&'static str>,
    port: u16,
    jwt: Option<(&'static str, &'static str, serde_json::Value)>,
    normalization: PathNormalization,
}

fn req() -> Req {
    Req {
        method: "GET",
        host: Some("cart.shop.svc"),
        path: "/",
        headers: Vec::new(),
        ip: "10.1.2.3",
        principal: Some("spiffe://cluster.local/ns/shop/sa/web"),
        port: 8080,
        jwt: None,
        normalization: PathNormalization::Base,
    }
}

impl Req {
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.host = Some(h);
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
    fn ip(mut self, ip: &'static str) -> Self {
        self.ip = ip;
        self
    }
    fn peer(mut self, p: &'static str) -> Self {
        self.principal = Some(p);
        self
    }
    fn plaintext(mut self) -> Self {
        self.principal = None;
        self
    }
    fn port(mut self, p: u16) -> Self {
        self.port = p;
        self
    }
    fn jwt(mut self, iss: &'static str, sub: &'static str, claims: serde_json::Value) -> Self {
        self.jwt = Some((iss, sub, claims));
        self
    }
    fn normalization(mut self, n: PathNormalization) -> Self {
        self.normalization = n;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Allow,
    Deny,
    /// The path cannot be authorized (400 before any policy).
    Reject,
}

fn decide(set: &PolicySet, r: &Req) -> (Want, bool) {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let jwt = r.jwt.as_ref().map(|(iss, sub, claims)| VerifiedJwt {
        principal: format!("{iss}/{sub}"),
        issuer: (*iss).into(),
        subject: (*sub).into(),
        audiences: claims["aud"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default(),
        presenter: claims["azp"].as_str().map(str::to_owned),
        claims: claims.as_object().unwrap().clone(),
    });
    let Ok(path) = normalize_path(r.path, r.normalization) else {
        return (Want::Reject, false);
    };
    let mut q = AuthzRequest::new(r.method, &path, &headers);
    if let Some(p) = r.principal {
        q = q.with_principal(p);
    }
    q.host = r.host;
    q.source_ip = Some(r.ip.parse::<IpAddr>().unwrap());
    q.destination_ip = Some("10.9.9.9".parse().unwrap());
    q.destination_port = Some(r.port);
    q.jwt = jwt.as_ref();
    let d = set.evaluate(&q);
    let want = match d.verdict {
        Verdict::Allow => Want::Allow,
        Verdict::Deny { .. } => Want::Deny,
    };
    (want, d.audit.is_some())
}

const ALLOW_ALL: &str = "{ rules: [{}] }";

#[test]
fn authorization_table() {
    use Want::*;
    let deny_admin =
        policy("{ action: DENY, rules: [{ to: [{ operation: { paths: [/admin*] } }] }] }");
    let deny_admin_exact = policy(
        "{ action: DENY, rules: [{ to: [{ operation: { paths: [/admin, /user/profile] } }] }] }",
    );
    let allow = |s: &str| policy(s);
    let from = |src: &str| allow(&format!("{{ rules: [{{ from: [{{ source: {src} }}] }}] }}"));
    let to = |op: &str| allow(&format!("{{ rules: [{{ to: [{{ operation: {op} }}] }}] }}"));
    let when = |c: &str| allow(&format!("{{ rules: [{{ when: [{c}] }}] }}"));
    let jwt_claims = serde_json::json!({
        "aud": ["orders", "billing"],
        "azp": "web-app",
        "groups": ["dev", "ops"],
        "org": { "team": "payments" },
        "level": 3
    });
    let jwt = |r: Req| r.jwt("https://idp.example", "alice", jwt_claims.clone());

    #[rustfmt::skip]
    let cases: Vec<(&str, String, Req, Want)> = vec![
        // --- empty-policy cases and evaluation order ---
        ("no policy allows", String::new(), req(), Allow),
        ("spec {} denies all", policy("{}"), req(), Deny),
        ("ALLOW without rules denies all", policy("{ action: ALLOW }"), req(), Deny),
        ("rule {} matches everything", allow(ALLOW_ALL), req(), Allow),
        ("DENY without rules matches nothing", policy("{ action: DENY }"), req(), Allow),
        ("DENY before ALLOW", format!("{}{}", allow(ALLOW_ALL), deny_admin), req().path("/admin/users"), Deny),
        ("ALLOW after DENY misses", format!("{}{}", allow(ALLOW_ALL), deny_admin), req().path("/public"), Allow),
        ("ALLOW present, none matches", to("{ paths: [/api/*] }"), req().path("/other"), Deny),
        ("AUDIT does not decide", policy("{ action: AUDIT, rules: [{}] }"), req(), Allow),
        ("dry-run DENY is not enforced",
            policy_in("shop", "dry", ", annotations: { istio.io/dry-run: \"true\" }", "{ action: DENY, rules: [{}] }"),
            req(), Allow),
        ("dry-run false is enforced",
            policy_in("shop", "dry", ", annotations: { istio.io/dry-run: \"false\" }", "{ action: DENY, rules: [{}] }"),
            req(), Deny),
        ("selector of another workload does not apply",
            policy("{ selector: { matchLabels: { app: web } } }"), req(), Allow),
        ("selector of this workload applies",
            policy("{ selector: { matchLabels: { app: cart } } }"), req(), Deny),
        ("root namespace applies mesh wide", policy_in("istio-system", "root", "", "{}"), req(), Deny),
        ("other namespace does not apply", policy_in("other", "x", "", "{}"), req(), Allow),
        // --- source ---
        ("principals exact", from("{ principals: [cluster.local/ns/shop/sa/web] }"), req(), Allow),
        ("principals exact, other peer", from("{ principals: [cluster.local/ns/shop/sa/web] }"),
            req().peer("spiffe://cluster.local/ns/shop/sa/db"), Deny),
        ("principals need mTLS", from("{ principals: [cluster.local/ns/shop/sa/web] }"), req().plaintext(), Deny),
        ("principals prefix", from("{ principals: [cluster.local/ns/shop/*] }"), req(), Allow),
        ("principals suffix", from("{ principals: [\"*/sa/web\"] }"), req(), Allow),
        ("principals * is any mTLS peer", from("{ principals: [\"*\"] }"), req(), Allow),
        ("principals * refuses plaintext", from("{ principals: [\"*\"] }"), req().plaintext(), Deny),
        ("notPrincipals excludes", from("{ notPrincipals: [cluster.local/ns/shop/sa/web] }"), req(), Deny),
        ("notPrincipals passes plaintext", from("{ notPrincipals: [cluster.local/ns/shop/sa/web] }"), req().plaintext(), Allow),
        ("namespaces", from("{ namespaces: [shop] }"), req(), Allow),
        ("namespaces, other", from("{ namespaces: [shop] }"), req().peer("spiffe://cluster.local/ns/web/sa/x"), Deny),
        ("notNamespaces", from("{ notNamespaces: [shop] }"), req(), Deny),
        ("serviceAccounts", from("{ serviceAccounts: [shop/web] }"), req(), Allow),
        ("notServiceAccounts", from("{ notServiceAccounts: [shop/web] }"), req(), Deny),
        ("ipBlocks CIDR", from("{ ipBlocks: [10.0.0.0/8] }"), req(), Allow),
        ("ipBlocks outside", from("{ ipBlocks: [10.0.0.0/8] }"), req().ip("192.168.0.1"), Deny),
        ("ipBlocks single address", from("{ ipBlocks: [10.1.2.3] }"), req(), Allow),
        ("notIpBlocks", from("{ notIpBlocks: [10.1.0.0/16] }"), req(), Deny),
        ("remoteIpBlocks (XFF not trusted)", from("{ remoteIpBlocks: [10.0.0.0/8] }"),
            req().header("x-forwarded-for", "192.168.0.1"), Allow),
        ("notRemoteIpBlocks ignores XFF", from("{ notRemoteIpBlocks: [192.168.0.0/16] }"),
            req().header("x-forwarded-for", "192.168.0.1"), Allow),
        ("requestPrincipals * needs a JWT", from("{ requestPrincipals: [\"*\"] }"), req(), Deny),
        ("requestPrincipals * with a JWT", from("{ requestPrincipals: [\"*\"] }"), jwt(req()), Allow),
        ("requestPrincipals exact", from("{ requestPrincipals: [https://idp.example/alice] }"), jwt(req()), Allow),
        ("notRequestPrincipals", from("{ notRequestPrincipals: [\"https://idp.example/*\"] }"), jwt(req()), Deny),
        ("source fields AND", from("{ namespaces: [shop], ipBlocks: [192.168.0.0/16] }"), req(), Deny),
        ("sources OR",
            allow("{ rules: [{ from: [{ source: { namespaces: [x] } }, { source: { ipBlocks: [10.0.0.0/8] } }] }] }"),
            req(), Allow),
        // --- operation ---
        ("hosts case-insensitive", to("{ hosts: [Cart.Shop.SVC] }"), req().host("CART.shop.svc"), Allow),
        ("hosts exact does not match with port", to("{ hosts: [cart.shop.svc] }"), req().host("cart.shop.svc:8080"), Deny),
        ("hosts with :* matches any port", to("{ hosts: [\"cart.shop.svc:*\"] }"), req().host("cart.shop.svc:8080"), Allow),
        ("hosts suffix", to("{ hosts: [\"*.shop.svc\"] }"), req(), Allow),
        ("notHosts", to("{ notHosts: [cart.shop.svc] }"), req(), Deny),
        ("ports", to("{ ports: [\"8080\"] }"), req(), Allow),
        ("ports, other", to("{ ports: [\"8080\"] }"), req().port(9090), Deny),
        ("notPorts", to("{ notPorts: [\"8080\"] }"), req(), Deny),
        ("methods", to("{ methods: [GET, HEAD] }"), req(), Allow),
        ("methods, other", to("{ methods: [GET] }"), req().method("POST"), Deny),
        ("notMethods", to("{ notMethods: [DELETE] }"), req().method("DELETE"), Deny),
        ("paths exact", to("{ paths: [/api] }"), req().path("/api"), Allow),
        ("paths exact is exact", to("{ paths: [/api] }"), req().path("/api/"), Deny),
        ("paths prefix", to("{ paths: [/api/*] }"), req().path("/api/v1/x"), Allow),
        ("paths suffix", to("{ paths: [\"*.json\"] }"), req().path("/a/b.json"), Allow),
        ("paths *", to("{ paths: [\"*\"] }"), req().path("/x"), Allow),
        ("notPaths", to("{ notPaths: [/private/*] }"), req().path("/private/x"), Deny),
        ("operation fields AND", to("{ methods: [GET], paths: [/api/*] }"), req().path("/other"), Deny),
        // --- when ---
        ("header condition", when("{ key: \"request.headers[x-tenant]\", values: [acme] }"), req().header("x-tenant", "acme"), Allow),
        ("header condition, absent", when("{ key: \"request.headers[x-tenant]\", values: [acme] }"), req(), Deny),
        ("header notValues, absent passes", when("{ key: \"request.headers[X-Tenant]\", notValues: [evil] }"), req(), Allow),
        ("header notValues", when("{ key: \"request.headers[x-tenant]\", notValues: [\"ev*\"] }"), req().header("x-tenant", "evil"), Deny),
        ("repeated header joined with ,", when("{ key: \"request.headers[x-a]\", values: [\"1,2\"] }"),
            req().header("x-a", "1").header("x-a", "2"), Allow),
        ("source.ip", when("{ key: source.ip, values: [10.1.0.0/16] }"), req(), Allow),
        ("remote.ip", when("{ key: remote.ip, notValues: [10.1.0.0/16] }"), req(), Deny),
        ("destination.ip", when("{ key: destination.ip, values: [10.9.9.9] }"), req(), Allow),
        ("destination.port", when("{ key: destination.port, values: [\"9090\"] }"), req(), Deny),
        ("source.principal", when("{ key: source.principal, values: [\"*/sa/web\"] }"), req(), Allow),
        ("source.namespace", when("{ key: source.namespace, values: [shop] }"), req(), Allow),
        ("source.namespace without mTLS", when("{ key: source.namespace, values: [shop] }"), req().plaintext(), Deny),
        ("request.auth.principal", when("{ key: request.auth.principal, values: [https://idp.example/alice] }"), jwt(req()), Allow),
        ("request.auth.audiences", when("{ key: request.auth.audiences, values: [billing] }"), jwt(req()), Allow),
        ("request.auth.presenter", when("{ key: request.auth.presenter, values: [other] }"), jwt(req()), Deny),
        ("claims list matches any element", when("{ key: \"request.auth.claims[groups]\", values: [ops] }"), jwt(req()), Allow),
        ("claims list, no element", when("{ key: \"request.auth.claims[groups]\", values: [admin] }"), jwt(req()), Deny),
        ("nested claims", when("{ key: \"request.auth.claims[org][team]\", values: [payments] }"), jwt(req()), Allow),
        ("non-string claim matches nothing", when("{ key: \"request.auth.claims[level]\", values: [\"3\"] }"), jwt(req()), Deny),
        ("claims without a JWT", when("{ key: \"request.auth.claims[groups]\", values: [ops] }"), req(), Deny),
        ("conditions AND",
            allow("{ rules: [{ when: [{ key: source.namespace, values: [shop] }, { key: destination.port, values: [\"1\"] }] }] }"),
            req(), Deny),
        // --- advisories (reference B.7) ---
        ("CVE-2019-9901 dot segments", deny_admin.clone(), req().path("/public/../admin"), Deny),
        ("encoded dot segments", deny_admin.clone(), req().path("/public/%2e%2e/admin"), Deny),
        ("encoded unreserved letters", deny_admin.clone(), req().path("/%61dmin"), Deny),
        ("CVE-2021-31920 %2F rejected", deny_admin.clone(), req().path("/public%2F..%2Fadmin"), Reject),
        ("CVE-2021-31920 %5C rejected", deny_admin.clone(), req().path("/public%5C..%5Cadmin"), Reject),
        ("%2F decoded when asked", deny_admin.clone(),
            req().path("/public%2F..%2Fadmin").normalization(PathNormalization::DecodeAndMergeSlashes), Deny),
        ("// merged when asked", deny_admin.clone(),
            req().path("//admin").normalization(PathNormalization::MergeSlashes), Deny),
        ("CVE-2021-39156 fragment", deny_admin_exact.clone(), req().path("/user/profile#section1"), Deny),
        ("CVE-2020-8595 query", deny_admin_exact.clone(), req().path("/admin?x=1"), Deny),
        ("CVE-2021-39155 host case",
            policy("{ action: DENY, rules: [{ to: [{ operation: { hosts: [admin.example.com] } }] }] }"),
            req().host("ADMIN.Example.COM"), Deny),
        ("CVE-2019-18802 trailing whitespace", policy(
            "{ action: DENY, rules: [{ when: [{ key: \"request.headers[x-role]\", values: [guest] }] }] }"),
            req().header("x-role", "guest "), Deny),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, yaml, r, want) in &cases {
        let set = policies(yaml);
        let (got, _) = decide(&set, r);
        if got != *want {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn audit_policies_mark_matching_requests() {
    let set = policies(&policy(
        "{ action: AUDIT, rules: [{ to: [{ operation: { paths: [/pay/*] } }] }] }",
    ));
    assert_eq!(decide(&set, &req().path("/pay/x")), (Want::Allow, true));
    assert_eq!(decide(&set, &req().path("/other")), (Want::Allow, false));
}

#[test]
fn config_errors_name_the_place() {
    let cases = [
        (
            "{ action: CUSTOM, provider: { name: ext } }",
            "action: CUSTOM is not supported",
        ),
        ("{ provider: { name: ext } }", "provider: not supported"),
        (
            "{ targetRefs: [{ kind: Gateway, name: gw }] }",
            "targetRefs: not supported",
        ),
        ("{ action: deny }", "action: unknown action"),
        (
            "{ rules: [{ form: [] }] }",
            "rules[0].form: unknown field (did you mean \"from\"?)",
        ),
        (
            "{ rules: [{ from: [] }] }",
            "rules[0].from: must not be empty",
        ),
        (
            "{ rules: [{ from: [{ source: {} }] }] }",
            "rules[0].from[0].source: must set at least one field",
        ),
        (
            "{ rules: [{ from: [{ source: { principals: [] } }] }] }",
            "rules[0].from[0].source: must set at least one field",
        ),
        (
            "{ rules: [{ from: [{}] }] }",
            "rules[0].from[0].source: required",
        ),
        (
            "{ rules: [{ to: [{ operation: { paths: [\"/a/{*}/b\"] } }] }] }",
            "paths[0]: \"/a/{*}/b\": path templates",
        ),
        (
            "{ rules: [{ to: [{ operation: { paths: [/a*b] } }] }] }",
            "rules[0].to[0].operation.paths[0]: \"/a*b\": a wildcard",
        ),
        (
            "{ rules: [{ to: [{ operation: { ports: [\"http\"] } }] }] }",
            "operation.ports[0]: \"http\" is not a port",
        ),
        (
            "{ rules: [{ to: [{ operation: { methods: [GET], verbs: [x] } }] }] }",
            "operation.verbs: unknown field",
        ),
        (
            "{ rules: [{ from: [{ source: { ipBlocks: [10.0.0.0/33] } }] }] }",
            "source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP",
        ),
        (
            "{ rules: [{ from: [{ source: { serviceAccounts: [web] } }] }] }",
            "serviceAccounts[0]: \"web\" is not a service account",
        ),
        (
            "{ rules: [{ from: [{ source: { serviceAccounts: [a/b], namespaces: [a] } }] }] }",
            "serviceAccounts: cannot be set together",
        ),
        (
            "{ rules: [{ when: [{ key: request.header, values: [x] }] }] }",
            "rules[0].when[0].key: unknown condition key",
        ),
        (
            "{ rules: [{ when: [{ key: \"request.headers[]\", values: [x] }] }] }",
            "when[0].key: \"request.headers[]\": expected",
        ),
        (
            "{ rules: [{ when: [{ key: \"request.auth.claims[a\", values: [x] }] }] }",
            "when[0].key: \"request.auth.claims[a\": expected",
        ),
        (
            "{ rules: [{ when: [{ key: connection.sni, values: [x] }] }] }",
            "\"connection.sni\" is not supported",
        ),
        (
            "{ rules: [{ when: [{ key: source.ip }] }] }",
            "when[0]: at least one of values or notValues",
        ),
        (
            "{ rules: [{ when: [{ key: source.ip, values: [nope] }] }] }",
            "when[0].values[0]: \"nope\" is not an IP",
        ),
        (
            "{ rules: [{ when: [{ key: destination.port, values: [\"99999\"] }] }] }",
            "values[0]: \"99999\" is not a port",
        ),
    ];
    for (spec, want) in cases {
        let text = policy(spec);
        let err = FileSource::parse_str("authz.yaml", &text)
            .err()
            .unwrap_or_else(|| panic!("{spec} was accepted"))
            .to_string();
        assert!(err.contains(want), "{spec}:\n  got {err}\n  want {want}");
        assert!(err.contains("AuthorizationPolicy p"), "{err}");
    }
    let bad_dry_run = policy_in(
        "shop",
        "p",
        ", annotations: { istio.io/dry-run: maybe }",
        "{}",
    );
    let err = FileSource::parse_str("authz.yaml", &bad_dry_run)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("metadata.annotations[\"istio.io/dry-run\"]"),
        "{err}"
    );
}

// --- over real sockets: `serve` STRICT, SVIDs from the test CA ---

mod e2e {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::{get, post};
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use mesh_core::model::{Labels, Workload};
    use mesh_identity::test_util::TestCa;
    use mesh_identity::tls::{PeerMatcher, client_config, server_config};
    use mesh_identity::{CredentialStore, SpiffeId};
    use mesh_tower::authz::AuthorizationLayer;
    use mesh_tower::{ServeConfig, TransportMode, serve};
    use rustls_pki_types::ServerName;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/cart";
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

    /// `web` may call everything; `db` is denied everywhere.
    const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: only-web, namespace: shop }
spec:
  selector: { matchLabels: { app: cart } }
  rules:
  - from: [{ source: { principals: [cluster.local/ns/shop/sa/web] } }]
"#;

    struct Server {
        addr: SocketAddr,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn start(ca: &TestCa) -> (Server, AuthorizationLayer) {
        let creds = ca.leaf(SERVER).credentials().unwrap();
        let store = Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()));
        let tls = Arc::new(server_config(store, PeerMatcher::AnyTrusted).unwrap());
        let mesh = mesh_tests::mesh_from_yaml(POLICY);
        let layer = AuthorizationLayer::for_workload(
            mesh,
            Workload::new("shop", Labels::new([("app", "cart")])),
        );
        let app = Router::new()
            .route("/orders", get(|| async { "orders" }))
            .route(
                "/shop.Cart/Checkout",
                post(|| async {
                    (
                        [("content-type", "application/grpc"), ("grpc-status", "0")],
                        "",
                    )
                }),
            )
            .layer(layer.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ServeConfig::new(TransportMode::Strict(tls));
        let task = tokio::spawn(serve(listener, config, app));
        (Server { addr, task }, layer)
    }

    /// One HTTP/2 request over mTLS as `client`: status, headers, body.
    async fn send(
        ca: &TestCa,
        addr: SocketAddr,
        client: &str,
        req: Request<Empty<Bytes>>,
    ) -> (StatusCode, http::HeaderMap, String) {
        let creds = ca.leaf(client).credentials().unwrap();
        let store = Arc::new(CredentialStore::new(creds, ca.bundle().unwrap()));
        let server_id = SpiffeId::parse(SERVER).unwrap();
        let mut config = client_config(store, PeerMatcher::exact(server_id)).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("cart.shop.svc").unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let res = sender.send_request(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn get_orders() -> Request<Empty<Bytes>> {
        Request::get("https://cart.shop.svc/orders")
            .body(Empty::new())
            .unwrap()
    }

    fn checkout() -> Request<Empty<Bytes>> {
        Request::post("https://cart.shop.svc/shop.Cart/Checkout")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Empty::new())
            .unwrap()
    }

    #[tokio::test]
    async fn strict_server_allows_one_identity_and_denies_another() {
        let ca = TestCa::new("cluster.local").unwrap();
        let (server, layer) = start(&ca).await;

        let (status, _, body) = send(&ca, server.addr, WEB, get_orders()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "orders"));

        let (status, _, body) = send(&ca, server.addr, DB, get_orders()).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::FORBIDDEN, "RBAC: access denied")
        );
        assert_eq!((layer.stats().allowed(), layer.stats().denied()), (1, 1));
    }

    #[tokio::test]
    async fn grpc_callers_get_permission_denied() {
        let ca = TestCa::new("cluster.local").unwrap();
        let (server, _layer) = start(&ca).await;

        let (status, headers, _) = send(&ca, server.addr, WEB, checkout()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["grpc-status"], "0");

        let (status, headers, body) = send(&ca, server.addr, DB, checkout()).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        let grpc = tonic::Status::from_header_map(&headers).expect("a trailers-only status");
        assert_eq!(grpc.code(), tonic::Code::PermissionDenied);
        assert_eq!(grpc.message(), "RBAC: access denied");
    }
}
