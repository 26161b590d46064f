#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::model::{AbortStatus, FaultAbort, FaultDelay, FaultPolicy, Fraction};
use tower::{Service, ServiceExt};

use super::*;

type Res = Response<crate::ResponseBody>;

/// A backend that counts its calls and answers 200 at once.
fn backend(
    hits: Arc<AtomicU64>,
) -> impl Service<Request<()>, Response = Res, Error = Infallible, Future: Send> + Clone {
    tower::service_fn(move |_: Request<()>| {
        hits.fetch_add(1, Ordering::Relaxed);
        async { Ok::<_, Infallible>(Response::new(crate::ResponseBody::empty())) }
    })
}

fn abort(status: AbortStatus, fraction: Fraction) -> FaultPolicy {
    FaultPolicy {
        delay: None,
        abort: Some(FaultAbort { status, fraction }),
    }
}

fn delay(d: Duration, fraction: Fraction) -> FaultPolicy {
    FaultPolicy {
        delay: Some(FaultDelay { delay: d, fraction }),
        abort: None,
    }
}

#[tokio::test(start_paused = true)]
async fn delays_requests_by_the_fixed_delay() {
    let hits = Arc::default();
    let mut svc = Fault::new(
        backend(Arc::clone(&hits)),
        delay(Duration::from_secs(5), Fraction::ALL),
    );
    let start = tokio::time::Instant::now();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(
        hits.load(Ordering::Relaxed),
        1,
        "the delayed request is sent"
    );
}

#[tokio::test(start_paused = true)]
async fn aborts_answer_locally_with_the_http_status() {
    let hits = Arc::default();
    let mut svc = Fault::new(
        backend(Arc::clone(&hits)),
        abort(AbortStatus::Http(503), Fraction::ALL),
    );
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.body().is_local());
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, Bytes::from_static(b"fault filter abort"));
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "an abort never reaches the backend"
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_aborts_are_trailers_only() {
    let hits = Arc::default();
    let grpc_req = || {
        Request::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let mut svc = Fault::new(
        backend(Arc::clone(&hits)),
        abort(AbortStatus::Grpc(14), Fraction::ALL),
    );
    let res = svc.ready().await.unwrap().call(grpc_req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert!(http_body::Body::is_end_stream(res.body()));

    // An HTTP status for a gRPC caller becomes its gRPC code (503 -> 14).
    let mut svc = Fault::new(
        backend(Arc::clone(&hits)),
        abort(AbortStatus::Http(503), Fraction::ALL),
    );
    let res = svc.ready().await.unwrap().call(grpc_req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(hits.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn delay_comes_before_abort() {
    let hits = Arc::default();
    let policy = FaultPolicy {
        delay: Some(FaultDelay {
            delay: Duration::from_millis(300),
            fraction: Fraction::ALL,
        }),
        abort: Some(FaultAbort {
            status: AbortStatus::Http(500),
            fraction: Fraction::ALL,
        }),
    };
    let mut svc = Fault::new(backend(Arc::clone(&hits)), policy);
    let start = tokio::time::Instant::now();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(hits.load(Ordering::Relaxed), 0);
}

async fn aborted_share(fraction: Fraction, n: u64) -> u64 {
    let hits = Arc::default();
    let mut svc = Fault::new(
        backend(Arc::clone(&hits)),
        abort(AbortStatus::Http(500), fraction),
    );
    let mut aborted = 0;
    for _ in 0..n {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        if res.status() == 500 {
            aborted += 1;
        }
    }
    assert_eq!(aborted + hits.load(Ordering::Relaxed), n);
    aborted
}

#[tokio::test(start_paused = true)]
async fn percentages_select_their_share_of_requests() {
    let n = 10_000;
    assert_eq!(
        aborted_share(Fraction::NONE, n).await,
        0,
        "0% aborts nothing"
    );
    assert_eq!(aborted_share(Fraction::ALL, n).await, n, "100% aborts all");
    let half = aborted_share(Fraction::from_percent(50.0).unwrap(), n).await;
    // Binomial(n, 0.5): 5 sigma is 250 requests.
    let sd = (n as f64 * 0.25).sqrt();
    assert!(
        (half as f64 - n as f64 * 0.5).abs() <= 5.0 * sd,
        "50% aborted {half} of {n}"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_policy_pass() {
    let hits = Arc::default();
    let mut svc = Fault::from_route(backend(Arc::clone(&hits)));
    let start = tokio::time::Instant::now();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(hits.load(Ordering::Relaxed), 1);
}

/// The fault layer sits above the route timeout, as Envoy's fault filter
/// runs before the router: an injected delay longer than the timeout does
/// not make the request time out.
#[tokio::test(start_paused = true)]
async fn injected_delays_do_not_count_against_the_route_timeout() {
    let hits = Arc::default();
    let inner = crate::timeout::Timeout::new(backend(Arc::clone(&hits)), Duration::from_secs(1));
    let mut svc = Fault::new(inner, delay(Duration::from_secs(3), Fraction::ALL));
    let start = tokio::time::Instant::now();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(hits.load(Ordering::Relaxed), 1);
}
