//! Retries over real loopback backends scripted per request, configured by
//! Istio YAML, on paused time wherever time matters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use mesh_examples::scripted::{Action, Scripted};
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::{Error, Mesh, MeshClient, ResponseBody};
use tokio::time::Instant;
use tower::ServiceExt;

const URL: &str = "http://svc:8080/x";

/// A service `svc:8080` over `endpoints`, balanced by `lb`, with one route
/// carrying `route_extra` (indented YAML lines such as `retries: ...`).
fn yaml(endpoints: &[SocketAddr], protocol: &str, lb: &str, route_extra: &[&str]) -> String {
    let eps: Vec<(SocketAddr, &str)> = endpoints.iter().map(|a| (*a, "v1")).collect();
    let mut s = mesh_examples::yaml::service_entry("svc", 8080, protocol, &eps);
    s.push_str(&format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: svc }}\nspec:\n  host: svc\n  trafficPolicy:\n    loadBalancer: {{ simple: {lb} }}\n"
    ));
    s.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: svc }\nspec:\n  hosts: [svc]\n  http:\n  - route: [{ destination: { host: svc } }]\n");
    for line in route_extra {
        s.push_str(&format!("    {line}\n"));
    }
    s
}

fn mesh(backends: &[&Scripted], protocol: &str, route_extra: &[&str]) -> Mesh {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
    mesh_from_yaml(&yaml(&addrs, protocol, "ROUND_ROBIN", route_extra))
}

async fn send(
    client: &MeshClient,
    method: Method,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response<ResponseBody>, Error> {
    let mut req = Request::builder().method(method).uri(URL);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client
        .clone()
        .oneshot(req.body(Full::new(body)).unwrap())
        .await
}

async fn get(client: &MeshClient) -> Result<Response<ResponseBody>, Error> {
    let req = Request::get(URL).body(Empty::<Bytes>::new()).unwrap();
    client.clone().oneshot(req).await
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(start_paused = true)]
async fn succeeds_on_the_third_attempt() {
    init_tracing();
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::status(503), Action::status(500)]);
    let mesh = mesh(&[&b], "HTTP", &["retries: { attempts: 2, retryOn: 5xx }"]);
    let res = get(&mesh.client()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(b.hits(), 3);
}

#[tokio::test(start_paused = true)]
async fn attempts_run_out_and_the_last_response_is_returned() {
    let b = Scripted::start("b1").await.unwrap();
    b.set_default(Action::status(502));
    let mesh = mesh(&[&b], "HTTP", &["retries: { attempts: 2, retryOn: 5xx }"]);
    let res = get(&mesh.client()).await.unwrap();
    assert_eq!(res.status(), 502, "Envoy: the last attempt's response");
    assert_eq!(b.hits(), 3, "1 attempt + 2 retries");
}

/// Sends one request whose first attempt does `first`, under `retry_on`,
/// and returns how many attempts the backend saw.
async fn attempts_after(first: Action, retry_on: &str, protocol: &str, grpc: bool) -> u64 {
    let b = Scripted::start("b1").await.unwrap();
    b.push([first]);
    let line = format!("retries: {{ attempts: 1, retryOn: \"{retry_on}\" }}");
    let mesh = mesh(&[&b], protocol, &[&line]);
    let headers: &[(&str, &str)] = if grpc {
        &[("content-type", "application/grpc")]
    } else {
        &[]
    };
    let method = if grpc { Method::POST } else { Method::GET };
    match send(&mesh.client(), method, headers, Bytes::new()).await {
        Ok(res) => {
            // The body (and its trailers) arrive intact either way.
            let _ = res.into_body().collect().await;
        }
        Err(e) => tracing::info!(error = %e, "request failed"),
    }
    b.hits()
}

#[tokio::test(start_paused = true)]
async fn each_http_retry_on_condition_retries_what_it_names() {
    init_tracing();
    let cases: &[(Action, &str, u64)] = &[
        (Action::status(500), "5xx", 2),
        (Action::Reset, "5xx", 2),
        (Action::status(502), "gateway-error", 2),
        (Action::status(504), "gateway-error", 2),
        (Action::status(500), "gateway-error", 1),
        (Action::Reset, "reset", 2),
        (Action::status(503), "reset", 1),
        (Action::status(409), "retriable-4xx", 2),
        (Action::status(404), "retriable-4xx", 1),
        (Action::status(429), "retriable-status-codes,429", 2),
        (Action::status(429), "503", 1),
        (Action::status(503), "connect-failure", 1),
        (Action::Reset, "connect-failure", 1),
    ];
    for (first, retry_on, want) in cases {
        let got = attempts_after(first.clone(), retry_on, "HTTP2", false).await;
        assert_eq!(got, *want, "{first:?} under retryOn {retry_on}");
    }
}

#[tokio::test(start_paused = true)]
async fn each_grpc_condition_reads_the_status_from_headers_and_from_trailers() {
    init_tracing();
    for (name, code) in [
        ("cancelled", 1),
        ("deadline-exceeded", 4),
        ("resource-exhausted", 8),
        ("internal", 13),
        ("unavailable", 14),
    ] {
        for (form, first) in [
            ("trailers-only", Action::GrpcTrailersOnly(code)),
            ("trailers", Action::GrpcTrailers(code)),
        ] {
            let got = attempts_after(first.clone(), name, "GRPC", true).await;
            assert_eq!(got, 2, "{name} ({form}) is retried");
            let other = if code == 14 {
                "internal"
            } else {
                "unavailable"
            };
            let got = attempts_after(first, other, "GRPC", true).await;
            assert_eq!(got, 1, "{name} ({form}) is not retried under {other}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_grpc_error_in_trailers_that_is_not_retried_reaches_the_caller_intact() {
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::GrpcTrailers(2)]);
    let mesh = mesh(
        &[&b],
        "GRPC",
        &["retries: { attempts: 2, retryOn: unavailable }"],
    );
    let res = send(
        &mesh.client(),
        Method::POST,
        &[("content-type", "application/grpc")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert!(res.headers().get("grpc-status").is_none());
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().expect("trailers handed back");
    assert_eq!(trailers.get("grpc-status").unwrap(), "2");
    assert_eq!(b.hits(), 1);

    // A streaming response (data first) is handed over whole.
    let res = send(
        &mesh.client(),
        Method::POST,
        &[("content-type", "application/grpc")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "b1");
}

#[tokio::test(start_paused = true)]
async fn connect_failures_are_retried_on_another_endpoint() {
    let b = Scripted::start("b1").await.unwrap();
    let addrs = [closed_port(), b.addr()];
    for lb in ["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"] {
        let mesh = mesh_from_yaml(&yaml(
            &addrs,
            "HTTP",
            lb,
            &["retries: { attempts: 1, retryOn: connect-failure }"],
        ));
        for _ in 0..10 {
            let res = get(&mesh.client()).await.unwrap();
            assert_eq!(res.status(), 200, "{lb}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_retry_goes_to_an_endpoint_not_tried_before() {
    let a = Scripted::start("a").await.unwrap();
    let b = Scripted::start("b").await.unwrap();
    let c = Scripted::start("c").await.unwrap();
    for s in [&a, &b, &c] {
        s.set_default(Action::status(503));
    }
    let addrs = [a.addr(), b.addr(), c.addr()];
    let mesh = mesh_from_yaml(&yaml(
        &addrs,
        "HTTP",
        "RANDOM",
        &["retries: { attempts: 2, retryOn: 5xx }"],
    ));
    for i in 0..20 {
        let before = (a.hits(), b.hits(), c.hits());
        let res = get(&mesh.client()).await.unwrap();
        assert_eq!(res.status(), 503);
        let after = (a.hits(), b.hits(), c.hits());
        assert_eq!(
            (after.0 - before.0, after.1 - before.1, after.2 - before.2),
            (1, 1, 1),
            "request {i}: three attempts on three different endpoints"
        );
    }

    // retryIgnorePreviousHosts: false keeps the plain pick.
    let mesh = mesh_from_yaml(&yaml(
        &[a.addr()],
        "HTTP",
        "RANDOM",
        &["retries: { attempts: 2, retryOn: 5xx, retryIgnorePreviousHosts: false }"],
    ));
    let before = a.hits();
    get(&mesh.client()).await.unwrap();
    assert_eq!(a.hits() - before, 3, "a single endpoint takes every retry");
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_on_503_but_is_on_connect_failure() {
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::status(503)]);
    let mesh = mesh(
        &[&b],
        "HTTP",
        &["retries: { attempts: 2, retryOn: \"5xx\" }"],
    );
    let res = send(&mesh.client(), Method::POST, &[], Bytes::from("order")).await;
    assert_eq!(res.unwrap().status(), 503);
    assert_eq!(b.hits(), 1, "a POST that reached the server is not resent");

    let addrs = [closed_port(), b.addr()];
    let mesh = mesh_from_yaml(&yaml(
        &addrs,
        "HTTP",
        "ROUND_ROBIN",
        &["retries: { attempts: 2, retryOn: \"5xx\" }"],
    ));
    for _ in 0..4 {
        let res = send(&mesh.client(), Method::POST, &[], Bytes::from("order")).await;
        assert_eq!(res.unwrap().status(), 200, "never reached a server: resent");
    }
    assert!(b.bodies().iter().all(|body| body == "order"));
}

#[tokio::test(start_paused = true)]
async fn request_bodies_are_replayed_intact() {
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::status(503), Action::status(503)]);
    let mesh = mesh(&[&b], "HTTP2", &["retries: { attempts: 2, retryOn: 5xx }"]);
    let body = Bytes::from(vec![b'x'; 60 * 1024]);
    let res = send(&mesh.client(), Method::PUT, &[], body.clone()).await;
    assert_eq!(res.unwrap().status(), 200);
    assert_eq!(b.bodies(), [body.clone(), body.clone(), body]);
}

#[tokio::test(start_paused = true)]
async fn bodies_over_64_kib_are_sent_intact_but_not_retried() {
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::status(503)]);
    let mesh = mesh(&[&b], "HTTP2", &["retries: { attempts: 2, retryOn: 5xx }"]);
    let body = Bytes::from((0..100 * 1024).map(|i| i as u8).collect::<Vec<u8>>());
    let res = send(&mesh.client(), Method::PUT, &[], body.clone()).await;
    assert_eq!(res.unwrap().status(), 503);
    assert_eq!(b.hits(), 1);
    assert_eq!(b.bodies(), [body]);
}

#[tokio::test(start_paused = true)]
async fn backoff_is_jittered_exponential_within_envoys_bounds() {
    let b = Scripted::start("b1").await.unwrap();
    b.push([
        Action::status(503),
        Action::status(503),
        Action::status(503),
    ]);
    let mesh = mesh(&[&b], "HTTP", &["retries: { attempts: 3, retryOn: 5xx }"]);
    let start = Instant::now();
    assert_eq!(get(&mesh.client()).await.unwrap().status(), 200);
    // Envoy's default 25 ms base: below 25 + 75 + 175 ms, each sleep
    // rounded up to the 1 ms timer wheel.
    assert!(
        start.elapsed() <= Duration::from_millis(275),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(b.hits(), 4);
}

#[tokio::test(start_paused = true)]
async fn retry_after_and_grpc_pushback_set_the_delay() {
    let b = Scripted::start("b1").await.unwrap();
    let mesh = mesh(&[&b], "HTTP2", &["retries: { attempts: 1, retryOn: 5xx }"]);

    b.push([Action::with_header(503, "retry-after", "2")]);
    let start = Instant::now();
    assert_eq!(get(&mesh.client()).await.unwrap().status(), 200);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100),
        "retry-after: 2 waited {waited:?}"
    );

    b.push([Action::with_header(
        503,
        "retry-after",
        "Sun, 06 Nov 1994 08:49:37 GMT",
    )]);
    let start = Instant::now();
    assert_eq!(get(&mesh.client()).await.unwrap().status(), 200);
    assert!(
        start.elapsed() < Duration::from_millis(10),
        "a past date: now"
    );

    b.push([Action::with_header(503, "grpc-retry-pushback-ms", "300")]);
    let start = Instant::now();
    assert_eq!(get(&mesh.client()).await.unwrap().status(), 200);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(310),
        "pushback 300 ms waited {waited:?}"
    );

    // gRFC A6: a negative pushback means "do not retry".
    let hits = b.hits();
    b.push([Action::with_header(503, "grpc-retry-pushback-ms", "-1")]);
    assert_eq!(get(&mesh.client()).await.unwrap().status(), 503);
    assert_eq!(b.hits() - hits, 1);
}

#[tokio::test(start_paused = true)]
async fn per_try_timeout_bounds_each_attempt_and_names_itself() {
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::delayed(Duration::from_secs(5))]);
    let mesh = mesh(
        &[&b],
        "HTTP2",
        &["retries: { attempts: 2, retryOn: 5xx, perTryTimeout: 100ms }"],
    );
    let start = Instant::now();
    let res = get(&mesh.client()).await.unwrap();
    assert_eq!(res.status(), 200, "the retry succeeds");
    let took = start.elapsed();
    assert!(
        // 100 ms, then a backoff below 25 ms that the 1 ms timer wheel
        // may round up to 25.
        took >= Duration::from_millis(100) && took <= Duration::from_millis(125),
        "{took:?}"
    );

    b.set_default(Action::delayed(Duration::from_secs(5)));
    let err = get(&mesh.client()).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(
        err.to_string(),
        "request timed out after 100ms (per-try timeout)"
    );
    assert_eq!(err.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_bounds_the_whole_call_including_retries() {
    let b = Scripted::start("b1").await.unwrap();
    b.set_default(Action::delayed(Duration::from_secs(5)));
    let mesh = mesh(
        &[&b],
        "HTTP2",
        &[
            "timeout: 250ms",
            "retries: { attempts: 10, retryOn: 5xx, perTryTimeout: 100ms }",
        ],
    );
    let start = Instant::now();
    let err = get(&mesh.client()).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert!(err.is_timeout());
    assert_eq!(
        err.to_string(),
        "request timed out after 250ms (route timeout)"
    );
    assert!(b.hits() >= 2, "retried within the route timeout");
}

#[tokio::test(start_paused = true)]
async fn retry_storm_stays_within_the_budget_then_recovers() {
    init_tracing();
    let b = Scripted::start("b1").await.unwrap();
    b.set_default(Action::status(503));
    let mesh = mesh(&[&b], "HTTP2", &["retries: { attempts: 3, retryOn: 5xx }"]);
    let client = mesh.client();

    // 50 requests/s against a backend failing every request for 10 s. The
    // last request starts at 9.68 s so that its retries (at most 272 ms of
    // backoff) end inside the 10 s budget window: the budget bounds
    // retries per window, and a second window would bring a new floor.
    let requests = 485u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..requests {
        ticker.tick().await;
        let client = client.clone();
        tasks.spawn(async move { get(&client).await.map(|r| r.status().as_u16()) });
    }
    let (mut exhausted, mut failed_503) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(503) => failed_503 += 1,
            Err(e) if e.is_budget_exhausted() => {
                assert!(
                    e.to_string().starts_with(
                        "retry budget exhausted for cluster \"outbound|8080||svc.default.svc.cluster.local\" (20% of requests + 10/s over 10s); last attempt: 503 Service Unavailable"
                    ),
                    "{e}"
                );
                exhausted += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let retries = b.hits() - requests;
    // Linkerd's default budget: 20% of the requests + 10/s over 10 s.
    let allowed = requests / 5 + 100;
    assert!(
        (100..=allowed).contains(&retries),
        "{retries} retries for {requests} requests, budget {allowed}; without one: {}",
        3 * requests
    );
    assert!(exhausted > 0 && failed_503 > 0, "{exhausted} {failed_503}");

    // The backend recovers: every request succeeds at once.
    b.set_default(Action::status(200));
    for _ in 0..50 {
        assert_eq!(get(&client).await.unwrap().status(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn max_retries_caps_concurrent_retries_per_cluster() {
    let b = Scripted::start("b1").await.unwrap();
    // Each retry waits on a slow answer so retries overlap.
    b.set_default(Action::Respond {
        status: 503,
        delay: Duration::from_millis(100),
        headers: Vec::new(),
    });
    let addrs = [b.addr()];
    let y = yaml(
        &addrs,
        "HTTP2",
        "ROUND_ROBIN",
        &["retries: { attempts: 1, retryOn: 5xx }"],
    );
    let mut translation = mesh_core::file::FileSource::parse_str("mesh.yaml", &y).unwrap();
    for c in &mut translation.resources.clusters {
        // DestinationRule connectionPool.http.maxRetries is translated by
        // the circuit-breaker work; the model carries it.
        c.limits.max_retries = 3;
    }
    let store = mesh_core::ConfigStore::new();
    store.publish("code".into(), translation.resources).unwrap();
    let mesh = Mesh::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = mesh.client();
        tasks.spawn(async move { get(&client).await });
    }
    let mut overflow = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Err(e) if e.is_budget_exhausted() => {
                assert!(
                    e.to_string()
                        .contains("3 retries in flight (http.maxRetries)"),
                    "{e}"
                );
                overflow += 1;
            }
            Ok(res) => assert_eq!(res.status(), 503),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(overflow, 7, "10 concurrent failures, 3 retry slots");
    assert_eq!(b.hits(), 13);
}

fn boxed_get() -> Request<mesh_tower::BoxBody> {
    Request::get(URL)
        .body(mesh_tower::body::boxed(Empty::<Bytes>::new()))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn hedging_takes_the_fast_copy_and_cancels_the_slow_one() {
    use mesh_core::model::{HedgeDelay, HedgePolicy};
    use mesh_tower::retry::HedgeLayer;
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::delayed(Duration::from_secs(5))]);
    let mesh = mesh(&[&b], "HTTP2", &["retries: { attempts: 0 }"]);
    let policy = HedgePolicy {
        max_attempts: 3,
        delay: HedgeDelay::Fixed(Duration::from_millis(50)),
    };
    let layer = HedgeLayer::new().with_policy(policy.clone());
    let req = boxed_get;
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(mesh.client());
    let start = Instant::now();
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(50),
        "the hedge answered"
    );
    assert_eq!(b.hits(), 2, "no third copy once one succeeded");
    drop(res);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(b.in_flight(), 0, "the slow copy was cancelled");

    // Hedges come out of the retry budget: with none, no hedge is sent.
    let none = mesh_core::model::RetryBudget {
        ratio: 0.0,
        min_per_second: 0,
        ttl: Duration::from_secs(10),
    };
    let svc = tower::ServiceBuilder::new()
        .layer(HedgeLayer::new().with_policy(policy).with_budget(none))
        .service(mesh.client());
    b.push([Action::delayed(Duration::from_secs(1))]);
    let hits = b.hits();
    let start = Instant::now();
    assert_eq!(svc.oneshot(req()).await.unwrap().status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(b.hits() - hits, 1);
}

#[tokio::test(start_paused = true)]
async fn a_routes_hedge_policy_hedges_through_the_mesh_client() {
    use mesh_core::model::{HedgeDelay, HedgePolicy, RouteAction, RouteTable};
    let b = Scripted::start("b1").await.unwrap();
    b.push([Action::delayed(Duration::from_secs(5))]);
    let y = yaml(
        &[b.addr()],
        "HTTP2",
        "ROUND_ROBIN",
        &["retries: { attempts: 0 }"],
    );
    let mut t = mesh_core::file::FileSource::parse_str("mesh.yaml", &y).unwrap();
    // Nothing in Istio YAML configures hedging; the model (and xDS) does.
    let policy = HedgePolicy {
        max_attempts: 2,
        delay: HedgeDelay::Fixed(Duration::from_millis(40)),
    };
    t.resources.route_tables = t
        .resources
        .route_tables
        .iter()
        .map(|rt| {
            let hosts = rt
                .virtual_hosts()
                .iter()
                .map(|vh| {
                    let mut vh = vh.clone();
                    vh.routes = vh
                        .routes
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            if let RouteAction::Forward(f) = &mut r.action {
                                f.hedge = Some(policy.clone());
                            }
                            r
                        })
                        .collect();
                    vh
                })
                .collect();
            RouteTable::try_new(rt.name().clone(), hosts).unwrap()
        })
        .collect();
    let store = mesh_core::ConfigStore::new();
    store.publish("code".into(), t.resources).unwrap();
    let mesh = Mesh::new(store);
    let start = Instant::now();
    let res = get(&mesh.client()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_millis(40));
    assert_eq!(b.hits(), 2);
}

#[test]
fn the_replay_bound_defaults_to_64_kib() {
    // Linkerd's retry layer buffers up to 64 KiB; so do we by default.
    assert_eq!(mesh_tower::retry::DEFAULT_MAX_REPLAY_BYTES, 64 * 1024);
}

/// An HTTP/2 server that refuses the first `refuse` streams with
/// RST_STREAM(REFUSED_STREAM) and answers 200 after that; counts streams.
async fn refusing_server(
    refuse: u64,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = std::sync::Arc::clone(&streams);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    if n < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let _ = respond.send_response(Response::new(()), true);
                    }
                }
            });
        }
    });
    (addr, streams)
}

#[tokio::test(start_paused = true)]
async fn refused_streams_are_retried_under_refused_stream() {
    use std::sync::atomic::Ordering;
    let (addr, streams) = refusing_server(1).await;
    let m = mesh_from_yaml(&yaml(
        &[addr],
        "HTTP2",
        "ROUND_ROBIN",
        &["retries: { attempts: 1, retryOn: refused-stream }"],
    ));
    // Even a POST: the server never processed a refused stream.
    let res = send(&m.client(), Method::POST, &[], Bytes::from("x")).await;
    assert_eq!(res.unwrap().status(), 200);
    assert_eq!(streams.load(Ordering::SeqCst), 2);

    let (addr, streams) = refusing_server(1).await;
    let m = mesh_from_yaml(&yaml(
        &[addr],
        "HTTP2",
        "ROUND_ROBIN",
        &["retries: { attempts: 1, retryOn: gateway-error }"],
    ));
    let err = get(&m.client()).await.unwrap_err();
    assert!(err.is_upstream(), "{err}");
    assert_eq!(
        streams.load(Ordering::SeqCst),
        1,
        "gateway-error does not cover a refused stream"
    );
}
