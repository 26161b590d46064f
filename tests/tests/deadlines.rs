//! Route timeouts, gRPC deadlines and their propagation from inbound to
//! outbound calls, over real loopback backends on paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use mesh_examples::scripted::{Action, Scripted};
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::deadline::{self, DeadlineLayer};
use mesh_tower::{Error, Mesh, MeshClient, ResponseBody};
use tokio::time::Instant;
use tower::ServiceExt;

/// `svc:8080` over one backend speaking `protocol`, with one route whose
/// timeout is `timeout`.
fn mesh(b: &Scripted, protocol: &str, timeout: Option<&str>) -> Mesh {
    let eps: [(SocketAddr, &str); 1] = [(b.addr(), "v1")];
    let mut s = mesh_examples::yaml::service_entry("svc", 8080, protocol, &eps);
    s.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: svc }\nspec:\n  hosts: [svc]\n  http:\n  - route: [{ destination: { host: svc } }]\n");
    if let Some(t) = timeout {
        s.push_str(&format!("    timeout: {t}\n"));
    }
    mesh_from_yaml(&s)
}

async fn grpc_call(
    client: &MeshClient,
    grpc_timeout: Option<&str>,
) -> Result<Response<ResponseBody>, Error> {
    let mut req = Request::post("http://svc:8080/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = grpc_timeout {
        req = req.header("grpc-timeout", t);
    }
    client
        .clone()
        .oneshot(req.body(Empty::<Bytes>::new()).unwrap())
        .await
}

fn sent_timeout(b: &Scripted) -> Duration {
    let headers = b.last_headers();
    let v = headers.get("grpc-timeout").expect("grpc-timeout sent");
    deadline::parse_grpc_timeout(v.as_bytes()).expect("valid grpc-timeout")
}

#[tokio::test(start_paused = true)]
async fn the_callers_grpc_timeout_is_honoured_and_forwarded() {
    init_tracing();
    let b = Scripted::start("b1").await.unwrap();
    let mesh = mesh(&b, "GRPC", Some("2s"));
    let client = mesh.client();

    grpc_call(&client, Some("500m")).await.unwrap();
    assert_eq!(
        sent_timeout(&b),
        Duration::from_millis(500),
        "the tighter one"
    );

    b.set_default(Action::Hang);
    let start = Instant::now();
    let err = grpc_call(&client, Some("100m")).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(err.is_timeout());
    assert_eq!(err.to_string(), "request timed out after 100ms (deadline)");
    assert_eq!(err.grpc_code(), tonic::Code::DeadlineExceeded);
    let status = tonic::Status::from_error(Box::new(err));
    assert_eq!(
        status.code(),
        tonic::Code::DeadlineExceeded,
        "tonic sees it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tighter_route_timeout_is_sent_as_grpc_timeout() {
    let b = Scripted::start("b1").await.unwrap();
    let mesh = mesh(&b, "GRPC", Some("200ms"));
    let client = mesh.client();
    grpc_call(&client, Some("5S")).await.unwrap();
    assert_eq!(sent_timeout(&b), Duration::from_millis(200));
    grpc_call(&client, None).await.unwrap();
    assert_eq!(
        sent_timeout(&b),
        Duration::from_millis(200),
        "set when absent"
    );

    b.set_default(Action::Hang);
    let err = grpc_call(&client, Some("5S")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "request timed out after 200ms (route timeout)"
    );
    assert_eq!(err.grpc_code(), tonic::Code::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn http_timeouts_answer_504() {
    let b = Scripted::start("b1").await.unwrap();
    b.set_default(Action::Hang);
    let mesh = mesh(&b, "HTTP", Some("150ms"));
    let req = Request::get("http://svc:8080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = mesh.client().oneshot(req).await.unwrap_err();
    assert_eq!(err.http_status(), http::StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        err.to_string(),
        "request timed out after 150ms (route timeout)"
    );
    assert!(
        b.last_headers().get("grpc-timeout").is_none(),
        "HTTP requests get no grpc-timeout"
    );
}

/// A server handler that makes one HTTP and then one gRPC call through
/// the mesh and reports how each ended and when.
async fn handler(client: MeshClient) -> String {
    let start = Instant::now();
    let req = Request::get("http://svc:8080/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let http = match client.clone().oneshot(req).await {
        Ok(r) => format!("http {}", r.status()),
        Err(e) => format!("http {e}"),
    };
    let http_took = start.elapsed();
    let grpc = match grpc_call(&client, None).await {
        Ok(r) => format!("grpc {}", r.status()),
        Err(e) => format!("grpc {e} ({:?})", e.grpc_code()),
    };
    format!(
        "{http} after {http_took:?}; {grpc} after {:?}",
        start.elapsed()
    )
}

#[tokio::test(start_paused = true)]
async fn outbound_calls_inherit_the_inbound_deadline() {
    init_tracing();
    let b = Scripted::start("b1").await.unwrap();
    // Answers the first call after 100 ms, never the second.
    b.push([Action::delayed(Duration::from_millis(100))]);
    b.set_default(Action::Hang);
    let mesh = mesh(&b, "GRPC", None);
    let client = mesh.client();
    let app = tower::ServiceBuilder::new()
        .layer(mesh.server_layer())
        .service_fn(move |_: Request<String>| {
            let client = client.clone();
            async move { Ok::<_, Infallible>(Response::new(handler(client).await)) }
        });
    let inbound = Request::post("/pkg.Front/Call")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "300m")
        .body(String::new())
        .unwrap();
    let res = app.oneshot(inbound).await.unwrap();
    assert_eq!(
        res.into_body(),
        "http 200 OK after 100ms; grpc request timed out after 200ms (deadline) (DeadlineExceeded) after 300ms"
    );
    assert_eq!(
        sent_timeout(&b),
        Duration::from_millis(200),
        "the gRPC call carried what was left of the inbound deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_layer_works_alone_and_without_a_deadline() {
    let b = Scripted::start("b1").await.unwrap();
    b.set_default(Action::delayed(Duration::from_secs(10)));
    let mesh = mesh(&b, "GRPC", None);
    let client = mesh.client();
    let app = tower::ServiceBuilder::new()
        .layer(DeadlineLayer::new())
        .service_fn(move |_: Request<String>| {
            let client = client.clone();
            async move {
                let r = grpc_call(&client, None).await;
                Ok::<_, Infallible>(r.map(|r| r.status().as_u16()).map_err(|e| e.to_string()))
            }
        });
    let start = Instant::now();
    let res = app
        .clone()
        .oneshot(Request::post("/x").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res, Ok(200), "no inbound deadline: no bound");
    assert_eq!(start.elapsed(), Duration::from_secs(10));

    let req = Request::post("/x")
        .header("grpc-timeout", "1S")
        .body(String::new())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res, Err("request timed out after 1s (deadline)".to_owned()));
}
