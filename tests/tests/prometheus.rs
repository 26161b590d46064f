//! A real Prometheus server (Debian package `prometheus`) scrapes the
//! admin `/metrics` endpoint, and PromQL over what it stored returns the
//! request counts the test sent, per response code and reporter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::peers::{Peer, Prometheus};
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::{Mesh, admin};
use tower::ServiceExt;

async fn send(mesh: &Mesh, path: &str) -> u16 {
    let res = mesh
        .client()
        .oneshot(
            http::Request::get(format!("http://svc:8080{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

/// `sum by (response_code)` over one reporter, as code -> count.
async fn by_code(prom: &Prometheus, reporter: &str) -> Option<BTreeMap<String, u64>> {
    let q = format!("sum by (response_code) (istio_requests_total{{reporter=\"{reporter}\"}})");
    let rows = prom.query(&q).await?;
    Some(
        rows.into_iter()
            .map(|(labels, v)| {
                (
                    labels["response_code"].as_str().unwrap_or("").to_owned(),
                    v as u64,
                )
            })
            .collect(),
    )
}

#[tokio::test]
async fn promql_over_a_real_scrape_returns_the_counts_sent() {
    init_tracing();
    let Some(bin) = Peer::Prometheus.require("promql_over_a_real_scrape_returns_the_counts_sent")
    else {
        return;
    };
    // One mesh as client and server: its /metrics has both reporters.
    // 500, not 503: Istio's default retry policy retries 503, and the
    // destination would count the retries.
    let app = axum::Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }));
    let placeholder: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mesh = mesh_from_yaml(&yaml::service_entry(
        "svc",
        8080,
        "HTTP",
        &[(placeholder, "v1")],
    ));
    let server = Server::start_with_layer(app, mesh.server_layer())
        .await
        .unwrap();
    mesh_tests::republish(
        &mesh,
        &yaml::service_entry("svc", 8080, "HTTP", &[(server.addr(), "v1")]),
    )
    .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    let router = admin::router(mesh.clone());
    let admin_task = tokio::spawn(async move { axum::serve(listener, router).await });

    let sent = [("/ok", 200, 7), ("/fail", 500, 4), ("/teapot", 418, 2)];
    for (path, code, n) in sent {
        for _ in 0..n {
            assert_eq!(send(&mesh, path).await, code);
        }
    }
    let expected: BTreeMap<String, u64> = sent
        .iter()
        .map(|(_, code, n)| (code.to_string(), *n))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(&bin, dir.path(), admin_addr).await;
    // Scrapes run every second: poll until a scrape after the requests is
    // stored (bounded; the answer, not the time, is asserted).
    let mut got = (None, None);
    for _ in 0..300 {
        got = (
            by_code(&prom, "destination").await,
            by_code(&prom, "source").await,
        );
        if got.0.as_ref() == Some(&expected) && got.1.as_ref() == Some(&expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got.0.as_ref(), Some(&expected), "{}", prom.log());
    assert_eq!(got.1.as_ref(), Some(&expected), "{}", prom.log());
    // The target is healthy: Prometheus parsed every line of the page.
    let up = prom.query("up{job=\"mesh\"}").await.unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 1.0);
    drop(prom);
    admin_task.abort();
}
