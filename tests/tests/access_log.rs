//! Access log events: one per request from each side, with Envoy-like
//! fields, through `tracing`; nothing is captured when the target is off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::mesh_from_yaml;
use mesh_tower::access_log::{AccessLogConfig, TARGET};
use mesh_tower::{ConnectionSecurity, SecurityMode};
use tower::ServiceExt;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

type Lines = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// Keeps the fields of every access log event.
struct Capture(Lines);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == TARGET {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_side_logs_one_event_per_request_with_envoy_fields() {
    let lines = Lines::default();
    let _guard =
        tracing::subscriber::set_default(Registry::default().with(Capture(Arc::clone(&lines))));
    let server_mesh = mesh_from_yaml(&yaml::service_entry(
        "unused",
        8080,
        "HTTP",
        &[("127.0.0.1:1".parse().unwrap(), "v1")],
    ));
    let server = Server::start_with_layer(
        axum::Router::new().route("/reviews/{id}", get(|| async { "review" })),
        server_mesh.server_layer(),
    )
    .await
    .unwrap();
    let mesh = mesh_from_yaml(&yaml::service_entry(
        "reviews",
        9080,
        "HTTP",
        &[(server.addr(), "v1")],
    ));
    let req = http::Request::get("http://reviews:9080/reviews/7?full=1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "req-42")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = mesh.client().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();

    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "one per side: {lines:#?}");
    let by = |reporter: &str| lines.iter().find(|l| l["reporter"] == reporter).unwrap();
    for (side, l) in [("source", by("source")), ("destination", by("destination"))] {
        assert_eq!(l["method"], "GET", "{side}");
        assert_eq!(l["path"], "/reviews/7?full=1", "{side}");
        assert_eq!(l["response_code"], "200", "{side}");
        assert_eq!(l["response_flags"], "-", "{side}");
        assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{side}");
        assert_eq!(l["request_id"], "req-42", "{side}");
        assert!(
            l["start_time"].ends_with('Z') && l["start_time"].len() == 24,
            "{l:?}"
        );
    }
    assert_eq!(
        by("source")["upstream_cluster"],
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(by("destination")["upstream_cluster"], "-");
    assert_eq!(by("source")["bytes_sent"], "6", "\"review\"");
}

#[tokio::test(start_paused = true)]
async fn nothing_is_logged_when_the_target_is_off() {
    let lines = Lines::default();
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target(TARGET, tracing_subscriber::filter::LevelFilter::OFF);
    let _guard = tracing::subscriber::set_default(
        Registry::default().with(Capture(Arc::clone(&lines)).with_filter(filter)),
    );
    let server = Server::start(axum::Router::new().route("/", get(|| async { "ok" })))
        .await
        .unwrap();
    let mesh = mesh_from_yaml(&yaml::service_entry(
        "svc",
        80,
        "HTTP",
        &[(server.addr(), "v1")],
    ));
    let req = http::Request::get("http://svc/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(mesh.client().oneshot(req).await.unwrap().status(), 200);
    assert!(lines.lock().unwrap().is_empty());
}

/// A mesh over `yaml` with access log `config`.
fn mesh_with(yaml: &str, config: AccessLogConfig) -> mesh_tower::Mesh {
    let store = mesh_core::ConfigStore::new();
    mesh_examples::publish_yaml(&store, yaml);
    mesh_tower::Mesh::builder(store)
        .with_access_log(config)
        .build()
}

#[tokio::test(start_paused = true)]
async fn sampling_by_request_id_picks_the_same_requests_on_both_sides() {
    let lines = Lines::default();
    let _guard =
        tracing::subscriber::set_default(Registry::default().with(Capture(Arc::clone(&lines))));
    let config = AccessLogConfig::new().with_sampling(0.3).unwrap();
    let server_mesh = mesh_with(
        &yaml::service_entry(
            "unused",
            8080,
            "HTTP",
            &[("127.0.0.1:1".parse().unwrap(), "v1")],
        ),
        config,
    );
    let server = Server::start_with_layer(
        axum::Router::new().route("/", get(|| async { "ok" })),
        server_mesh.server_layer(),
    )
    .await
    .unwrap();
    let mesh = mesh_with(
        &yaml::service_entry("svc", 80, "HTTP", &[(server.addr(), "v1")]),
        config,
    );
    let ids: Vec<String> = (0..40).map(|i| format!("id-{i}")).collect();
    for id in &ids {
        let req = http::Request::get("http://svc/")
            .header("x-request-id", id)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = mesh.client().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        res.into_body().collect().await.unwrap();
    }
    let expected: Vec<&String> = ids
        .iter()
        .filter(|id| config.samples(Some(id.as_bytes())))
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < ids.len(),
        "{expected:?}"
    );
    let lines = lines.lock().unwrap().clone();
    for side in ["source", "destination"] {
        let logged: Vec<&String> = lines
            .iter()
            .filter(|l| l["reporter"] == side)
            .map(|l| &l["request_id"])
            .collect();
        assert_eq!(logged, expected, "{side}");
    }
}

#[tokio::test(start_paused = true)]
async fn selected_fields_only_with_upstream_host_route_and_peer_identity() {
    let lines = Lines::default();
    let _guard =
        tracing::subscriber::set_default(Registry::default().with(Capture(Arc::clone(&lines))));
    let config = AccessLogConfig::new()
        .with_field_names(&[
            "method",
            "upstream_host",
            "route_name",
            "peer_identity",
            "downstream_remote_address",
        ])
        .unwrap();
    let server_mesh = mesh_with(
        &yaml::service_entry(
            "unused",
            8080,
            "HTTP",
            &[("127.0.0.1:1".parse().unwrap(), "v1")],
        ),
        config,
    );
    let router = axum::Router::new().route("/reviews/{id}", get(|| async { "review" }));
    let app = router.clone().layer(server_mesh.server_layer());
    let server = Server::start_with_layer(router, server_mesh.server_layer())
        .await
        .unwrap();
    let mut y = yaml::service_entry("reviews", 9080, "HTTP", &[(server.addr(), "v1")]);
    y.push_str(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: reviews }\n\
         spec:\n  hosts: [reviews]\n  http:\n  - name: reviews-route\n    route: [{ destination: { host: reviews } }]\n",
    );
    let mesh = mesh_with(&y, config);
    let req = http::Request::get("http://reviews:9080/reviews/7")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = mesh.client().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap();

    // A request that came over mutual TLS (the extension `serve` adds).
    let peer = "spiffe://cluster.local/ns/shop/sa/web";
    let remote: std::net::SocketAddr = "10.1.2.3:4567".parse().unwrap();
    let mut req = http::Request::get("/reviews/9")
        .body(axum::body::Body::empty())
        .unwrap();
    req.extensions_mut().insert(ConnectionSecurity::new(
        SecurityMode::MutualTls,
        Some(peer.parse().unwrap()),
        remote,
        "10.1.2.4:8080".parse().unwrap(),
    ));
    assert_eq!(app.oneshot(req).await.unwrap().status(), 200);

    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let keys: Vec<&str> = vec![
        "downstream_remote_address",
        "message",
        "method",
        "peer_identity",
        "reporter",
        "route_name",
        "upstream_host",
    ];
    for l in &lines {
        assert_eq!(
            l.keys().map(String::as_str).collect::<Vec<_>>(),
            keys,
            "{l:?}"
        );
    }
    let source = &lines.iter().find(|l| l["reporter"] == "source").unwrap();
    assert_eq!(source["upstream_host"], server.addr().to_string());
    assert_eq!(source["route_name"], "reviews-route");
    assert_eq!(source["peer_identity"], "-");
    let dest: Vec<_> = lines
        .iter()
        .filter(|l| l["reporter"] == "destination")
        .collect();
    assert_eq!(dest[0]["route_name"], "/reviews/{id}");
    assert_eq!(dest[0]["peer_identity"], "-", "plaintext");
    assert_eq!(dest[0]["upstream_host"], "-");
    assert_eq!(dest[1]["peer_identity"], peer);
    assert_eq!(dest[1]["downstream_remote_address"], remote.to_string());
}
