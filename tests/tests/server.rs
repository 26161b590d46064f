//! The server layer on an axum router, reached through the mesh client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::routing::get as get_route;
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::mesh_from_yaml;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_by_route_template_and_propagates_request_ids() {
    let router = axum::Router::new()
        .route("/reviews/{id}", get_route(|| async { "review" }))
        .route(
            "/echo-id",
            get_route(|headers: http::HeaderMap| async move {
                headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            }),
        );
    let server = Server::start(router).await.unwrap();
    let mesh = mesh_from_yaml(&yaml::service_entry(
        "reviews",
        9080,
        "HTTP",
        &[(server.addr(), "v1")],
    ));
    let client = mesh.client();
    let send = |path: &str, id: Option<&str>| {
        let mut req = http::Request::get(format!("http://reviews:9080{path}"));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        client.clone().oneshot(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
    };
    for id in 1..=5 {
        let res = send(&format!("/reviews/{id}"), None).await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(send("/missing", None).await.unwrap().status(), 404);

    // A caller's id is seen by the handler and echoed back.
    let res = send("/echo-id", Some("trace-me-42")).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-42");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"trace-me-42");

    let stats = server.stats();
    let reviews = stats.route("/reviews/{id}").unwrap();
    assert_eq!(
        (reviews.requests, reviews.success),
        (5, 5),
        "one row for every id"
    );
    let unmatched = stats.route("unmatched").unwrap();
    assert_eq!((unmatched.requests, unmatched.client_errors), (1, 1));
}
