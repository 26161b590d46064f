use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use mesh_core::model::AbortStatus;
use tokio::time::Sleep;

use crate::error::BoxError;
use crate::local_reply;

/// The body Envoy's fault filter answers an injected HTTP abort with.
const ABORT_BODY: &str = "fault filter abort";

/// The response future of [`Fault`](super::Fault).
#[pin_project::pin_project]
pub struct ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
{
    #[pin]
    state: State<S, B, ResB>,
}

#[pin_project::pin_project(project = Proj)]
enum State<S, B, ResB>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
{
    Inner(#[pin] S::Future),
    Abort(Option<Response<ResB>>),
    // Boxed: only delayed requests pay for the timer and the parked call,
    // and the common states stay small.
    Delay {
        sleep: Pin<Box<Sleep>>,
        // The service made ready for this request, and the request.
        call: Option<Box<(S, Request<B>)>>,
        abort: Option<(AbortStatus, bool)>,
    },
}

impl<S, B, ResB> ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    ResB: From<Bytes>,
{
    pub(crate) fn inner(f: S::Future) -> Self {
        Self {
            state: State::Inner(f),
        }
    }

    pub(crate) fn abort(status: AbortStatus, grpc: bool) -> Self {
        Self {
            state: State::Abort(Some(abort_response(status, grpc))),
        }
    }

    pub(crate) fn delay(
        sleep: Sleep,
        svc: S,
        req: Request<B>,
        abort: Option<(AbortStatus, bool)>,
    ) -> Self {
        Self {
            state: State::Delay {
                sleep: Box::pin(sleep),
                call: Some(Box::new((svc, req))),
                abort,
            },
        }
    }
}

/// The local reply for an injected abort: the HTTP status (for a gRPC
/// caller mapped to its gRPC code), or the gRPC status as Trailers-Only.
pub(crate) fn abort_response<ResB: From<Bytes>>(status: AbortStatus, grpc: bool) -> Response<ResB> {
    let mut res = abort_reply(status, grpc);
    res.extensions_mut()
        .insert(crate::metrics::ResponseFlag::FaultInjected);
    res
}

fn abort_reply<ResB: From<Bytes>>(status: AbortStatus, grpc: bool) -> Response<ResB> {
    match status {
        AbortStatus::Grpc(code) => local_reply::grpc(code, ABORT_BODY),
        AbortStatus::Http(code) if grpc => {
            local_reply::grpc(local_reply::grpc_code_for_http(code), ABORT_BODY)
        }
        AbortStatus::Http(code) => local_reply::http(
            StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            ABORT_BODY,
        ),
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B, ResB>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: From<Bytes>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                Proj::Inner(f) => return f.poll(cx).map_err(Into::into),
                Proj::Abort(res) => {
                    return Poll::Ready(res.take().ok_or_else(|| "polled after completion".into()));
                }
                Proj::Delay { sleep, call, abort } => {
                    std::task::ready!(sleep.as_mut().poll(cx));
                    if let Some((status, grpc)) = *abort {
                        State::Abort(Some(abort_response(status, grpc)))
                    } else {
                        let Some(parked) = call.take() else {
                            return Poll::Ready(Err("polled after completion".into()));
                        };
                        let (mut svc, req) = *parked;
                        State::Inner(svc.call(req))
                    }
                }
            };
            state.set(next);
        }
    }
}
