//! gRPC through the mesh: a tonic-generated client whose transport is the
//! mesh client, against a tonic server and an axum server that both carry
//! the mesh server layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use mesh_examples::backends::{self, Ratings};
use mesh_examples::proto::RatingRequest;
use mesh_examples::proto::ratings_client::RatingsClient;
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::MeshServerLayer;
use tokio::net::TcpListener;

/// A tonic `Server` with the mesh layer, on an ephemeral port.
async fn tonic_server(
    name: &str,
    layer: MeshServerLayer,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = backends::ratings_service(name);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .layer(layer)
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (addr, task)
}

fn ratings_yaml(endpoints: &[(SocketAddr, &str)]) -> String {
    yaml::service_entry("ratings", 50051, "GRPC", endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_reaches_tonic_and_axum_servers_through_the_mesh() {
    init_tracing();
    let tonic_layer = MeshServerLayer::new();
    let (tonic_addr, server) = tonic_server("tonic-server", tonic_layer.clone()).await;
    let axum_ratings = Ratings::start("axum-server").await.unwrap();
    let mesh = mesh_from_yaml(&ratings_yaml(&[
        (tonic_addr, "v1"),
        (axum_ratings.addr(), "v1"),
    ]));

    let mut client = RatingsClient::new(mesh.client_for("http://ratings:50051").unwrap());
    let mut served_by = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let reply = client
            .get(RatingRequest {
                product: "book-1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((reply.product.as_str(), reply.stars), ("book-1", 5));
        *served_by.entry(reply.served_by).or_insert(0) += 1;
    }
    assert_eq!(served_by.len(), 2, "both servers answered: {served_by:?}");
    assert_eq!(served_by.values().sum::<i32>(), 40);

    // Both server layers counted the calls under the gRPC method.
    let tonic_count = tonic_layer.stats().route("/ratings.Ratings/Get").unwrap();
    let axum_count = axum_ratings.stats().route("/ratings.Ratings/Get").unwrap();
    assert_eq!(tonic_count.requests + axum_count.requests, 40);
    assert_eq!(tonic_count.success + axum_count.success, 40);

    // An application status passes through the mesh untouched.
    let status = client
        .get(RatingRequest {
            product: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "product is required");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_failures_reach_tonic_as_unavailable_with_the_reason() {
    // A service with no endpoints, and a client of a service that does not
    // exist: both are UNAVAILABLE (gRFC A28/A54), never UNKNOWN.
    let mesh = mesh_from_yaml(&ratings_yaml(&[]));
    let mut client = RatingsClient::new(mesh.client_for("http://ratings:50051").unwrap());
    let status = client
        .get(RatingRequest {
            product: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        "no endpoints in cluster \"outbound|50051||ratings.default.svc.cluster.local\""
    );

    let mut client = RatingsClient::new(mesh.client_for("http://details:50051").unwrap());
    let status = client
        .get(RatingRequest {
            product: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().starts_with("no route: "),
        "{}",
        status.message()
    );
}

/// A tonic client reads the mesh's local gRPC replies (Trailers-Only) as
/// the statuses they carry: an injected `grpcStatus` abort, and the local
/// rate limit's `RESOURCE_EXHAUSTED`, each without reaching the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_clients_see_injected_aborts_and_rate_limits_as_statuses() {
    let layer = MeshServerLayer::new();
    let (addr, _server) = tonic_server("tonic-server", layer.clone()).await;
    let services = ratings_yaml(&[(addr, "v1")]);
    let abort = format!(
        "{services}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: ratings }}\nspec:\n  hosts: [ratings]\n  http:\n  - route: [{{ destination: {{ host: ratings }} }}]\n    fault: {{ abort: {{ grpcStatus: PERMISSION_DENIED, percentage: {{ value: 100 }} }} }}\n"
    );
    let mesh = mesh_from_yaml(&abort);
    let mut client = RatingsClient::new(mesh.client_for("http://ratings:50051").unwrap());
    let status = client
        .get(RatingRequest {
            product: "book-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "fault filter abort");

    let limited = format!(
        "{services}---\napiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {{ name: rl }}\nspec:\n  configPatches:\n  - applyTo: HTTP_FILTER\n    match: {{ context: SIDECAR_OUTBOUND }}\n    patch:\n      operation: INSERT_BEFORE\n      value:\n        name: envoy.filters.http.local_ratelimit\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n          stat_prefix: rl\n          token_bucket: {{ max_tokens: 1, fill_interval: 60s }}\n          filter_enabled: {{ default_value: {{ numerator: 100 }} }}\n          filter_enforced: {{ default_value: {{ numerator: 100 }} }}\n"
    );
    let mesh = mesh_from_yaml(&limited);
    let mut client = RatingsClient::new(mesh.client_for("http://ratings:50051").unwrap());
    let req = || RatingRequest {
        product: "book-1".into(),
    };
    assert!(client.get(req()).await.is_ok(), "the first takes the token");
    let status = client.get(req()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let served: u64 = layer.stats().routes().iter().map(|r| r.requests).sum();
    assert_eq!(
        served, 1,
        "neither the abort nor the limited call reached the server"
    );
}
