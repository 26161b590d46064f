#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::time::Duration;

use tower::{Service, ServiceExt};

use super::*;

type Res = Response<crate::ResponseBody>;

fn bucket(max: u32, per_fill: u32, interval: Duration) -> Arc<TokenBucketState> {
    Arc::new(TokenBucketState::new(TokenBucket {
        max_tokens: max,
        tokens_per_fill: per_fill,
        fill_interval: interval,
    }))
}

fn ok() -> impl Service<Request<()>, Response = Res, Error = Infallible> + Clone {
    tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(crate::ResponseBody::empty()))
    })
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_answers_429_with_ratelimit_headers() {
    let mut svc = RateLimit::new(ok(), bucket(2, 2, Duration::from_secs(10)));
    for _ in 0..2 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    tokio::time::advance(Duration::from_millis(2500)).await;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-ratelimit-limit"], "2");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(res.headers()["x-ratelimit-reset"], "8", "7.5 s, rounded up");
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"local_rate_limited");
    // The next fill admits two more.
    tokio::time::advance(Duration::from_millis(7500)).await;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_resource_exhausted() {
    let mut svc = RateLimit::new(ok(), bucket(1, 1, Duration::from_secs(1)));
    let grpc = || {
        Request::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(grpc())
            .await
            .unwrap()
            .status(),
        200
    );
    let res = svc.ready().await.unwrap().call(grpc()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["x-ratelimit-limit"], "1");
    assert!(http_body::Body::is_end_stream(res.body()));
}

#[tokio::test(start_paused = true)]
async fn server_layer_limits_with_an_empty_default_body() {
    use tower::Layer;
    let layer = ServerRateLimitLayer::new(bucket(1, 1, Duration::from_secs(60)));
    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(String::from("served")))
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), res.body().as_str()),
        (200, "served")
    );
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!((res.status().as_u16(), res.body().as_str()), (429, ""));
    assert_eq!(res.headers()["x-ratelimit-reset"], "60");
}

#[test]
fn buckets_survive_pushes_that_keep_their_config() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = TokenBucket {
            max_tokens: 1,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
        };
        let first = carry(Some(config), None).unwrap();
        let kept = carry(Some(config), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first, &kept));
        let changed = carry(
            Some(TokenBucket {
                max_tokens: 2,
                ..config
            }),
            Some(&first),
        )
        .unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert!(carry(None, Some(&first)).is_none());
    });
}
