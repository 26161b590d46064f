//! Istio's standard metrics and the mesh's internal counters, scraped
//! over HTTP from the admin router, after the events they count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_core::model::Labels;
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::ratelimit::Workload;
use mesh_tower::{Mesh, admin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const SVC: &str = "outbound|8080||svc.default.svc.cluster.local";
const EJ: &str = "outbound|8080||ej.default.svc.cluster.local";

/// Serves the admin router of `mesh` on loopback.
async fn serve_admin(mesh: &Mesh) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = admin::router(mesh.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// `GET path` as raw HTTP/1.1: the status and the body.
async fn scrape(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut res = String::new();
    s.read_to_string(&mut res).await.unwrap();
    let status = res[9..12].parse().unwrap();
    let body = res.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The sum of the samples of `metric` whose labels contain every one of
/// `labels` (`name="value"`).
fn sample(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

async fn get_status(mesh: &Mesh, url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = match mesh
        .client()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
    {
        Ok(res) => res,
        Err(e) => return e.http_status().as_u16(),
    };
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

fn app() -> axum::Router {
    axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
}

#[tokio::test(start_paused = true)]
async fn scraped_request_counts_match_what_was_sent_by_response_code() {
    init_tracing();
    // The server's mesh records `reporter="destination"`.
    let server_mesh = mesh_from_yaml(&yaml::service_entry(
        "unused",
        8080,
        "HTTP",
        &[("127.0.0.1:1".parse().unwrap(), "v1")],
    ));
    let server = Server::start_with_layer(app(), server_mesh.server_layer())
        .await
        .unwrap();
    let client_mesh = mesh_from_yaml(&yaml::service_entry(
        "svc",
        8080,
        "HTTP",
        &[(server.addr(), "v1")],
    ));
    for _ in 0..3 {
        assert_eq!(
            get_status(&client_mesh, "http://svc:8080/ok", &[]).await,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            get_status(&client_mesh, "http://svc:8080/fail", &[]).await,
            500
        );
    }
    assert_eq!(
        get_status(&client_mesh, "http://nowhere:8080/", &[]).await,
        404
    );

    let client_admin = serve_admin(&client_mesh).await;
    let (status, text) = scrape(client_admin, "/metrics").await;
    assert_eq!(status, 200);
    let source = "reporter=\"source\"";
    let dest = "destination_service=\"svc.default.svc.cluster.local\"";
    let n = |code: &str| sample(&text, "istio_requests_total", &[source, dest, code]);
    assert_eq!(n("response_code=\"200\""), 3, "{text}");
    assert_eq!(n("response_code=\"500\""), 2);
    // Not routed: Envoy's `NR` flag and a 404 local reply.
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[
                "response_code=\"404\"",
                "response_flags=\"NR\"",
                "destination_service=\"unknown\""
            ]
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "istio_request_duration_milliseconds_count",
            &[source, dest, "response_code=\"200\""]
        ),
        3
    );
    // The five sequential requests went over one pooled connection.
    assert_eq!(
        sample(
            &text,
            "istio_tcp_connections_opened_total",
            &[source, dest, "connection_security_policy=\"unknown\""]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mesh_cluster_endpoints",
            &[&format!("cluster=\"{SVC}\""), "health=\"unknown\""]
        ),
        1
    );
    // One accepted update (the YAML the mesh was made from); then a code
    // source that redefines the file's cluster is rejected.
    let file = "source=\"file:mesh.yaml\"";
    assert_eq!(
        sample(
            &text,
            "mesh_config_updates_total",
            &[file, "result=\"accepted\""]
        ),
        1,
        "{text}"
    );
    let err = client_mesh
        .store()
        .publish(
            "code".into(),
            mesh_core::Resources::new().with_cluster(mesh_core::model::Cluster::new(SVC)),
        )
        .unwrap_err();
    assert!(err.reason().contains(SVC), "{err}");
    let text = scrape(serve_admin(&client_mesh).await, "/metrics").await.1;
    assert_eq!(
        sample(
            &text,
            "mesh_config_updates_total",
            &["source=\"code\"", "result=\"rejected\""]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "mesh_config_updates_total",
            &["source=\"code\"", "result=\"accepted\""]
        ),
        0
    );
    assert_eq!(
        sample(
            &text,
            "istio_response_bytes_bucket",
            &[dest, "response_code=\"200\"", "le=\"5\""]
        ),
        3,
        "\"ok\" is 2 bytes"
    );

    let server_admin = serve_admin(&server_mesh).await;
    let (_, text) = scrape(server_admin, "/metrics").await;
    let d = |code: &str| {
        sample(
            &text,
            "istio_requests_total",
            &["reporter=\"destination\"", code],
        )
    };
    assert_eq!(d("response_code=\"200\""), 3, "{text}");
    assert_eq!(d("response_code=\"500\""), 2);

    assert_eq!(
        scrape(client_admin, "/live").await,
        (200, "live".to_owned())
    );
    assert_eq!(
        scrape(client_admin, "/ready").await,
        (200, "ready".to_owned())
    );
    let (status, clusters) = scrape(client_admin, "/clusters").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let svc = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == SVC)
        .unwrap();
    let ep = &svc["endpoints"][0];
    assert_eq!(ep["address"], server.addr().to_string());
    assert_eq!(ep["weight"], 1);
    assert_eq!(ep["ejected"], false);
    assert_eq!(ep["in_flight"], 0);
}

#[tokio::test(start_paused = true)]
async fn each_internal_counter_moves_with_its_event() {
    init_tracing();
    // Server side: an inbound rate limit of 3 requests a minute.
    let limit = r#"apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: rl }
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    match: { context: SIDECAR_INBOUND }
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: http_local_rate_limiter
            token_bucket: { max_tokens: 3, tokens_per_fill: 3, fill_interval: 60s }
            filter_enabled: { default_value: { numerator: 100, denominator: HUNDRED } }
            filter_enforced: { default_value: { numerator: 100, denominator: HUNDRED } }
"#;
    let server_mesh = mesh_from_yaml(limit);
    let limited = Server::start_with_layer(
        app().layer(
            server_mesh
                .server_rate_limit(Workload::new(8080).with_labels(Labels::new([("app", "svc")]))),
        ),
        server_mesh.server_layer(),
    )
    .await
    .unwrap();
    let good = Server::start(app()).await.unwrap();
    let bad =
        Server::start(axum::Router::new().route("/ok", get(|| async { StatusCode::BAD_GATEWAY })))
            .await
            .unwrap();

    let mut y = yaml::service_entry("svc", 8080, "HTTP", &[(limited.addr(), "v1")]);
    y.push_str("---\n");
    y.push_str(&yaml::service_entry(
        "ej",
        8080,
        "HTTP",
        &[(good.addr(), "v1"), (bad.addr(), "v1")],
    ));
    y.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: svc }
spec:
  hosts: [svc]
  http:
  - match: [{ headers: { x-fault: { exact: "1" } } }]
    fault: { abort: { percentage: { value: 100 }, httpStatus: 418 } }
    route: [{ destination: { host: svc } }]
  - route: [{ destination: { host: svc } }]
    retries: { attempts: 2, retryOn: 5xx }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: ej }
spec:
  host: ej
  trafficPolicy:
    loadBalancer: { simple: ROUND_ROBIN }
    outlierDetection: { consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100 }
"#,
    );
    let mesh = mesh_from_yaml(&y);
    let admin = serve_admin(&mesh).await;
    let metrics = || async { scrape(admin, "/metrics").await.1 };
    let svc = format!("cluster=\"{SVC}\"");
    let ej = format!("cluster=\"{EJ}\"");

    // A retry: /fail answers 500, retried twice (the budget allows it).
    let before = metrics().await;
    assert_eq!(sample(&before, "mesh_cluster_retries_total", &[&svc]), 0);
    assert_eq!(get_status(&mesh, "http://svc:8080/fail", &[]).await, 500);
    let text = metrics().await;
    assert_eq!(
        sample(&text, "mesh_cluster_retries_total", &[&svc]),
        2,
        "{text}"
    );
    assert_eq!(
        sample(&text, "mesh_cluster_retries_refused_total", &[&svc]),
        0
    );

    // An injected fault: `FI`, and no request reaches the server.
    assert_eq!(
        get_status(&mesh, "http://svc:8080/ok", &[("x-fault", "1")]).await,
        418
    );
    let text = metrics().await;
    assert_eq!(
        sample(
            &text,
            "istio_requests_total",
            &[
                "reporter=\"source\"",
                "response_code=\"418\"",
                "response_flags=\"FI\""
            ]
        ),
        1,
        "{text}"
    );

    // A rate-limited request: the server's fourth request in the minute
    // (the first three were the retried /fail) is refused with `RL`.
    assert_eq!(get_status(&mesh, "http://svc:8080/ok", &[]).await, 429);
    let server_admin = serve_admin(&server_mesh).await;
    let (_, server_text) = scrape(server_admin, "/metrics").await;
    assert_eq!(
        sample(
            &server_text,
            "istio_requests_total",
            &[
                "reporter=\"destination\"",
                "response_code=\"429\"",
                "response_flags=\"RL\""
            ]
        ),
        1,
        "{server_text}"
    );

    // An ejection: the bad endpoint's first 502 ejects it
    // (consecutive5xxErrors: 1).
    let text = metrics().await;
    assert_eq!(sample(&text, "mesh_cluster_ejections_total", &[&ej]), 0);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(get_status(&mesh, "http://ej:8080/ok", &[]).await);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502]);
    let text = metrics().await;
    assert_eq!(
        sample(&text, "mesh_cluster_ejections_total", &[&ej]),
        1,
        "{text}"
    );
    assert_eq!(sample(&text, "mesh_cluster_ejected_endpoints", &[&ej]), 1);
    let (_, clusters) = scrape(admin, "/clusters").await;
    let json: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let ej = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == EJ)
        .unwrap();
    let ejected: Vec<_> = ej["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_owned(),
                e["ejected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        ejected.contains(&(bad.addr().to_string(), true)),
        "{ejected:?}"
    );
    assert!(
        ejected.contains(&(good.addr().to_string(), false)),
        "{ejected:?}"
    );
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/shop/sa/web";
const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/cart";

/// One request over a new connection (mutual TLS when `tls` is given),
/// closed when the response is read.
async fn one_request(addr: SocketAddr, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> u16 {
    use hyper_util::rt::TokioIo;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = http::Request::get("http://cart.shop/ok")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = match tls {
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("cart.shop").unwrap();
            let io = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        }
        None => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(request).await.unwrap()
        }
    };
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn mtls_requests_and_connections_carry_principals_and_security_policy() {
    use mesh_identity::CredentialStore;
    use mesh_identity::test_util::TestCa;
    use mesh_identity::tls::{PeerMatcher, client_config, server_config};
    use mesh_tower::serve::{ServeConfig, TransportMode, serve};
    use std::sync::Arc;

    init_tracing();
    let ca = TestCa::new("cluster.local").unwrap();
    let server_creds = Arc::new(CredentialStore::new(
        ca.leaf(SERVER_ID).credentials().unwrap(),
        ca.bundle().unwrap(),
    ));
    let mesh = Mesh::builder(mesh_core::ConfigStore::new())
        .with_credentials(Arc::clone(&server_creds))
        .build();
    let tls = Arc::new(server_config(server_creds, PeerMatcher::AnyTrusted).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config =
        ServeConfig::new(TransportMode::Permissive(tls)).with_metrics(Arc::clone(mesh.metrics()));
    let server = tokio::spawn(serve(listener, config, app().layer(mesh.server_layer())));
    let client = Arc::new(
        client_config(
            Arc::new(CredentialStore::new(
                ca.leaf(CLIENT_ID).credentials().unwrap(),
                ca.bundle().unwrap(),
            )),
            PeerMatcher::exact(SERVER_ID.parse().unwrap()),
        )
        .unwrap(),
    );
    assert_eq!(one_request(addr, Some(Arc::clone(&client))).await, 200);
    assert_eq!(one_request(addr, Some(client)).await, 200);
    assert_eq!(one_request(addr, None).await, 200);

    let admin = serve_admin(&mesh).await;
    let dest = "reporter=\"destination\"";
    let mtls = [
        dest,
        &*format!("source_principal=\"{CLIENT_ID}\""),
        &*format!("destination_principal=\"{SERVER_ID}\""),
        "connection_security_policy=\"mutual_tls\"",
    ];
    let plain = [
        dest,
        "source_principal=\"unknown\"",
        "connection_security_policy=\"none\"",
    ];
    let text = scrape(admin, "/metrics").await.1;
    assert_eq!(sample(&text, "istio_requests_total", &mtls), 2, "{text}");
    assert_eq!(sample(&text, "istio_requests_total", &plain), 1, "{text}");
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &mtls),
        2
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &plain),
        1
    );
    // The clients closed their connections: the server sees the close
    // shortly after (bounded wait, no wall-clock assertion).
    let mut closed = 0;
    for _ in 0..200 {
        let text = scrape(admin, "/metrics").await.1;
        closed = sample(&text, "istio_tcp_connections_closed_total", &[dest]);
        if closed == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(closed, 3);
    server.abort();
}

/// `GET /metrics` from the admin router, in memory (paused time).
async fn metrics_text(mesh: &Mesh) -> String {
    let res = admin::router(mesh.clone())
        .oneshot(
            http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn rejected_xds_update_counts_as_invalid_for_its_type_on_metrics() {
    use mesh_tests::xds_script::{self, ScriptedAds, invalid_listener, listener, response};
    use mesh_xds::TypeUrl;
    use mesh_xds::client::ClientOptions;
    use mesh_xds::config::Protocol;

    init_tracing();
    let server = ScriptedAds::start();
    let mut config = xds_script::config(1, Protocol::StateOfTheWorld);
    config.listeners = vec!["svc:80".into()];
    let store = mesh_core::ConfigStore::new();
    let xds = mesh_xds::XdsClient::start_with(
        config,
        store.clone(),
        ClientOptions {
            connector: Some(xds_script::connector(vec![server.clone()])),
            decoder: None,
        },
    );
    let mesh = Mesh::builder(store).with_xds(xds).build();
    let mut s = server.sotw_stream().await;
    let first = s.recv().await;
    assert_eq!(first.type_url, TypeUrl::Listener.as_str());

    const LDS: &str = "grpc_xds_resource_type=\"envoy.config.listener.v3.Listener\"";
    const SERVER: &str = "grpc_xds_server=\"xds-0.test:15010\"";
    const TARGET: &str = "grpc_target=\"#mesh\"";
    let text = metrics_text(&mesh).await;
    assert_eq!(
        sample(&text, "grpc_xds_client_connected", &[TARGET, SERVER]),
        1,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resource_updates_invalid_total",
            &[TARGET, SERVER, LDS]
        ),
        0
    );

    // A listener whose HCM has no HTTP filters: every xDS client rejects it.
    s.send(response(
        TypeUrl::Listener,
        "1",
        "n1",
        vec![invalid_listener("svc:80", "rt")],
    ))
    .await;
    let nack = s.recv().await;
    assert!(nack.error_detail.is_some(), "the update is NACKed");
    let text = metrics_text(&mesh).await;
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resource_updates_invalid_total",
            &[TARGET, SERVER, LDS]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resource_updates_valid_total",
            &[SERVER, LDS]
        ),
        0
    );
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resources",
            &[
                LDS,
                "grpc_xds_cache_state=\"nacked\"",
                "grpc_xds_authority=\"#old\""
            ]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(&text, "grpc_xds_client_server_failure_total", &[SERVER]),
        0
    );

    // A valid version is counted as valid; the invalid count stays.
    s.send(response(
        TypeUrl::Listener,
        "2",
        "n2",
        vec![listener("svc:80", "rt")],
    ))
    .await;
    let ack = s.recv().await;
    assert!(ack.error_detail.is_none());
    let text = metrics_text(&mesh).await;
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resource_updates_valid_total",
            &[SERVER, LDS]
        ),
        1,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resource_updates_invalid_total",
            &[SERVER, LDS]
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "grpc_xds_client_resources",
            &[LDS, "grpc_xds_cache_state=\"acked\""]
        ),
        1,
        "{text}"
    );
}
