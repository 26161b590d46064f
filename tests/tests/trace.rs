//! Trace context propagation through three services on loopback, the
//! mesh on each: client -> A -> B. A's handler calls B through its mesh
//! client without passing anything by hand; the trace follows through the
//! task-local context of A's server layer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use mesh_examples::backends::Server;
use mesh_examples::yaml;
use mesh_tests::{init_tracing, mesh_from_yaml};
use mesh_tower::trace::{self, Propagators, Sampling, SpanContext};
use mesh_tower::{MeshClient, MeshServerLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// What a handler saw: the request's headers and its task's span.
#[derive(Clone, Debug)]
struct Seen {
    headers: HeaderMap,
    span: SpanContext,
    /// For A: the span of its call to B (from the response's extensions).
    call: Option<SpanContext>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

struct Chain {
    a: Server,
    _b: Server,
    a_log: Log,
    b_log: Log,
    client: MeshClient,
}

/// B answers 503 to its first `fail_first` requests, then 200; A calls B
/// (retrying 5xx once) and answers B's status.
async fn chain(fail_first: u32, a_layer: MeshServerLayer) -> Chain {
    let b_log = Log::default();
    let failures = Arc::new(AtomicU32::new(fail_first));
    let b = Server::start(axum::Router::new().route(
        "/b",
        get({
            let log = Arc::clone(&b_log);
            move |headers: HeaderMap| async move {
                let span = trace::current_span().expect("B's handler runs in a trace");
                log.lock().unwrap().push(Seen {
                    headers,
                    span,
                    call: None,
                });
                let fail = failures
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    ))
    .await
    .unwrap();

    let mut a_yaml = yaml::service_entry("b", 8080, "HTTP", &[(b.addr(), "v1")]);
    a_yaml.push_str("---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: b }\nspec:\n  hosts: [b]\n  http:\n  - route: [{ destination: { host: b } }]\n    retries: { attempts: 1, retryOn: 5xx }\n");
    let a_mesh = mesh_from_yaml(&a_yaml);
    let a_client = a_mesh.client();
    let a_log = Log::default();
    let a = Server::start_with_layer(
        axum::Router::new().route(
            "/a",
            get({
                let log = Arc::clone(&a_log);
                move |headers: HeaderMap| async move {
                    let span = trace::current_span().expect("A's handler runs in a trace");
                    // Nothing trace-related is passed: the task-local does it.
                    let req = http::Request::get("http://b:8080/b")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let res = a_client.oneshot(req).await.unwrap();
                    let call = res.extensions().get::<SpanContext>().copied();
                    log.lock().unwrap().push(Seen {
                        headers,
                        span,
                        call,
                    });
                    res.status()
                }
            }),
        ),
        a_layer,
    )
    .await
    .unwrap();

    let client_mesh = mesh_from_yaml(&yaml::service_entry("a", 8080, "HTTP", &[(a.addr(), "v1")]));
    Chain {
        client: client_mesh.client(),
        a,
        _b: b,
        a_log,
        b_log,
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("{name} sent"))
        .to_str()
        .unwrap()
}

/// The span id of a `traceparent`.
fn sent_span(h: &HeaderMap) -> String {
    header(h, "traceparent")[36..52].to_owned()
}

fn sent_trace(h: &HeaderMap) -> String {
    header(h, "traceparent")[3..35].to_owned()
}

/// Sends `GET /a` to A with `headers`, as raw HTTP/1.1 from a client
/// without the mesh (so malformed headers reach A as written).
async fn raw_get(chain: &Chain, headers: &[(&str, &str)]) -> String {
    let mut stream = tokio::net::TcpStream::connect(chain.a.addr())
        .await
        .unwrap();
    let mut req = "GET /a HTTP/1.1\r\nhost: a\r\nconnection: close\r\n".to_owned();
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut res = String::new();
    stream.read_to_string(&mut res).await.unwrap();
    res
}

#[tokio::test(start_paused = true)]
async fn a_w3c_trace_follows_client_a_b_with_parent_child_links() {
    init_tracing();
    let chain = chain(0, MeshServerLayer::new()).await;
    let req = http::Request::get("http://a:8080/a")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("baggage", "userId=alice")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = chain.client.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    // The client's logical call: a child of the caller's span.
    let client_call = *res.extensions().get::<SpanContext>().unwrap();
    assert_eq!(client_call.trace_id.to_string(), TRACE);
    assert_eq!(client_call.parent_span_id.unwrap().to_string(), PARENT);
    res.into_body().collect().await.unwrap();

    let a = chain.a_log.lock().unwrap()[0].clone();
    let b = chain.b_log.lock().unwrap()[0].clone();
    // Client -> A: A's parent is the client's attempt, whose parent is
    // the client's call.
    assert_eq!(sent_trace(&a.headers), TRACE);
    assert_eq!(
        header(&a.headers, "x-b3-parentspanid"),
        client_call.span_id.to_string()
    );
    assert_eq!(a.span.trace_id.to_string(), TRACE);
    assert_eq!(
        a.span.parent_span_id.unwrap().to_string(),
        sent_span(&a.headers)
    );
    assert_ne!(sent_span(&a.headers), client_call.span_id.to_string());

    // A's call to B is a child of A's server span.
    let a_call = a.call.unwrap();
    assert_eq!(a_call.trace_id, a.span.trace_id);
    assert_eq!(a_call.parent_span_id, Some(a.span.span_id));

    // A -> B: B's parent is A's attempt, a child of A's call.
    assert_eq!(sent_trace(&b.headers), TRACE);
    assert_eq!(header(&b.headers, "x-b3-traceid"), TRACE);
    assert_eq!(header(&b.headers, "x-b3-spanid"), sent_span(&b.headers));
    assert_eq!(
        header(&b.headers, "x-b3-parentspanid"),
        a_call.span_id.to_string()
    );
    assert_eq!(b.span.trace_id.to_string(), TRACE);
    assert_eq!(
        b.span.parent_span_id.unwrap().to_string(),
        sent_span(&b.headers)
    );

    // tracestate, baggage and the request id travel the whole way.
    assert_eq!(header(&b.headers, "tracestate"), "congo=t61rcWkgMzE");
    assert_eq!(header(&b.headers, "baggage"), "userId=alice");
    let id = header(&a.headers, "x-request-id");
    assert_eq!(id.len(), 36, "generated by the client when absent");
    assert_eq!(header(&b.headers, "x-request-id"), id);
}

#[tokio::test(start_paused = true)]
async fn b3_multi_and_single_inputs_join_the_trace() {
    init_tracing();
    let multi = chain(0, MeshServerLayer::new()).await;
    let res = raw_get(
        &multi,
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let a = multi.a_log.lock().unwrap()[0].clone();
    assert_eq!(a.span.trace_id.to_string(), TRACE);
    assert_eq!(a.span.parent_span_id.unwrap().to_string(), PARENT);
    let b = multi.b_log.lock().unwrap()[0].clone();
    assert_eq!(b.span.trace_id.to_string(), TRACE);

    // The single header is read when that propagator is on; a 64-bit
    // trace id is left-padded (B3 spec).
    let single = chain(
        0,
        MeshServerLayer::new().with_propagators(Propagators::all()),
    )
    .await;
    let res = raw_get(&single, &[("b3", &format!("a3ce929d0e0e4736-{PARENT}-1"))]).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let a = single.a_log.lock().unwrap()[0].clone();
    assert_eq!(
        a.span.trace_id.to_string(),
        "0000000000000000a3ce929d0e0e4736"
    );
    assert_eq!(a.span.parent_span_id.unwrap().to_string(), PARENT);
    let b = single.b_log.lock().unwrap()[0].clone();
    assert_eq!(b.span.trace_id, a.span.trace_id);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_traceparent_starts_a_new_trace_and_is_not_forwarded() {
    init_tracing();
    // A samples every request without a valid trace context.
    let chain = chain(0, MeshServerLayer::new().with_sampling(Sampling::always())).await;
    let bad = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let res = raw_get(
        &chain,
        &[
            ("traceparent", &bad),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-request-id", "<script>"),
        ],
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let a = chain.a_log.lock().unwrap()[0].clone();
    assert_ne!(a.span.trace_id.to_string(), TRACE.to_lowercase());
    assert_eq!(a.span.parent_span_id, None, "a new trace: A is its root");
    let b = chain.b_log.lock().unwrap()[0].clone();
    assert_eq!(b.span.trace_id, a.span.trace_id, "the new trace continues");
    assert_ne!(header(&b.headers, "traceparent"), bad);
    assert!(
        b.headers.get("tracestate").is_none(),
        "dropped with its traceparent"
    );
    assert_ne!(header(&b.headers, "x-request-id"), "<script>");
    assert_eq!(
        header(&b.headers, "x-request-id"),
        header(&a.headers, "x-request-id")
    );
}

#[tokio::test(start_paused = true)]
async fn each_retried_attempt_has_its_own_span_under_the_call() {
    init_tracing();
    let chain = chain(1, MeshServerLayer::new()).await;
    let res = raw_get(
        &chain,
        &[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))],
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "the retry succeeds: {res}");
    let a = chain.a_log.lock().unwrap()[0].clone();
    let call = a.call.unwrap();
    let attempts = chain.b_log.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2, "the first attempt and one retry");
    let (first, retry) = (&attempts[0], &attempts[1]);
    assert_ne!(sent_span(&first.headers), sent_span(&retry.headers));
    for attempt in [first, retry] {
        assert_eq!(sent_trace(&attempt.headers), TRACE);
        assert_eq!(
            header(&attempt.headers, "x-b3-parentspanid"),
            call.span_id.to_string(),
            "each attempt is a child of the logical call"
        );
        assert_eq!(
            attempt.span.parent_span_id.unwrap().to_string(),
            sent_span(&attempt.headers)
        );
        assert_ne!(sent_span(&attempt.headers), call.span_id.to_string());
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_trace_or_sampling_nothing_is_traced_or_injected() {
    init_tracing();
    type Seen = (HeaderMap, Option<SpanContext>);
    let b_log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let b = Server::start(axum::Router::new().route(
        "/b",
        get({
            let log = Arc::clone(&b_log);
            move |headers: HeaderMap| async move {
                log.lock().unwrap().push((headers, trace::current_span()));
                StatusCode::OK
            }
        }),
    ))
    .await
    .unwrap();
    let mesh = mesh_from_yaml(&yaml::service_entry("b", 8080, "HTTP", &[(b.addr(), "v1")]));
    let req = http::Request::get("http://b:8080/b")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = mesh.client().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.extensions().get::<SpanContext>().is_none());
    // With sampling at 100%, the same call starts a trace.
    let req = http::Request::get("http://b:8080/b")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = mesh
        .client()
        .with_sampling(Sampling::always())
        .oneshot(req)
        .await
        .unwrap();
    let call = *res.extensions().get::<SpanContext>().unwrap();
    assert_eq!(call.parent_span_id, None, "a new root");
    let log = b_log.lock().unwrap().clone();
    let (untraced, untraced_span) = &log[0];
    for name in ["traceparent", "x-b3-traceid", "b3", "baggage"] {
        assert!(
            untraced.get(name).is_none(),
            "{name} injected: {untraced:?}"
        );
    }
    assert_eq!(*untraced_span, None, "B's handler runs outside any trace");
    let (traced, traced_span) = &log[1];
    assert_eq!(sent_trace(traced), call.trace_id.to_string());
    assert_eq!(
        header(traced, "x-b3-parentspanid"),
        call.span_id.to_string()
    );
    assert_eq!(traced_span.unwrap().trace_id, call.trace_id);
}
