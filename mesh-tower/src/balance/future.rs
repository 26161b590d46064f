use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Response};
use hyper::body::Incoming;

use crate::body::ResponseBody;
use mesh_core::outlier::Outcome;
use tokio::time::Instant;

use crate::endpoint::{InFlight, Sending};
use crate::error::{BoxError, Error};
use crate::runtime::ClusterRuntime;

/// The response future of [`Balance`](super::Balance).
#[pin_project::pin_project]
pub struct ResponseFuture {
    #[pin]
    state: State,
    /// The attempt's span, when its call is recorded.
    span: Option<Box<crate::trace::span::Recording>>,
}

#[pin_project::pin_project(project = Proj)]
enum State {
    Failed(Option<Error>),
    Sending {
        #[pin]
        fut: Sending,
        in_flight: Option<InFlight>,
        observe: Option<(Arc<ClusterRuntime>, Instant)>,
        set_cookie: Option<HeaderValue>,
    },
}

impl ResponseFuture {
    pub(crate) fn failed(e: Error) -> Self {
        Self {
            state: State::Failed(Some(e)),
            span: None,
        }
    }

    pub(crate) fn with_span(mut self, span: Option<Box<crate::trace::span::Recording>>) -> Self {
        self.span = span;
        self
    }

    pub(crate) fn sending(
        fut: Sending,
        in_flight: InFlight,
        observe: Option<(Arc<ClusterRuntime>, Instant)>,
        set_cookie: Option<HeaderValue>,
    ) -> Self {
        Self {
            state: State::Sending {
                fut,
                in_flight: Some(in_flight),
                observe,
                set_cookie,
            },
            span: None,
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(poll_state(this.state, cx));
        if let Some(mut span) = this.span.take() {
            match &result {
                Ok(res) => span.response(res),
                Err(e) => span.failed(e),
            }
            span.end();
        }
        Poll::Ready(result)
    }
}

fn poll_state(
    state: Pin<&mut State>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response<ResponseBody>, BoxError>> {
    {
        match state.project() {
            Proj::Failed(e) => Poll::Ready(Err(match e.take() {
                Some(e) => Box::new(e),
                None => "polled after completion".into(),
            })),
            Proj::Sending {
                fut,
                in_flight,
                observe,
                set_cookie,
            } => match fut.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok((mut res, stream))) => {
                    let Some(mut guard) = in_flight.take() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    guard.set_stream(stream);
                    guard.endpoint().responded();
                    if let Some((c, start)) = observe.take() {
                        let outcome = Outcome::Response(outlier_status(&res));
                        c.record(guard.endpoint(), outcome, start.elapsed());
                    }
                    if let Some(v) = set_cookie.take() {
                        res.headers_mut().append(http::header::SET_COOKIE, v);
                    }
                    Poll::Ready(Ok(res.map(|body: Incoming| ResponseBody::new(body, guard))))
                }
                Poll::Ready(Err(e)) => {
                    let mut e = Error::from_upstream(e);
                    if let Some(guard) = in_flight.as_ref()
                        && e.is_connect()
                    {
                        guard.endpoint().connect_failed();
                    }
                    if let (Some((c, start)), Some(guard)) = (observe.take(), in_flight.as_ref()) {
                        c.record(guard.endpoint(), Outcome::LocalFailure, start.elapsed());
                    }
                    let endpoint = in_flight.take().map(|g| g.endpoint().address().clone());
                    if let Some(addr) = endpoint {
                        e = e.with_endpoint(addr);
                    }
                    Poll::Ready(Err(Box::new(e)))
                }
            },
        }
    }
}

/// The status outlier detection counts for a response: the HTTP status,
/// or for a gRPC error answered Trailers-Only (`grpc-status` in the
/// headers of an HTTP 200) the HTTP status gRPC maps that code to, as
/// Envoy's router reports it to its outlier detector (`router.cc`,
/// `Grpc::Utility::grpcToHttpStatus`; an HTTP 5xx is kept as is). A
/// `grpc-status` that arrives in trailers after a body is not seen here.
fn outlier_status<B>(res: &Response<B>) -> u16 {
    let status = res.status().as_u16();
    if status >= 500 {
        return status;
    }
    match res.headers().get("grpc-status").map(HeaderValue::as_bytes) {
        Some(code) => grpc_to_http(code).unwrap_or(status),
        None => status,
    }
}

/// gRPC code (as its decimal header value) to HTTP status, per Envoy's
/// `Grpc::Utility::grpcToHttpStatus` (the mapping of googleapis'
/// `google.rpc.Code` comments). Unknown codes map to 500.
fn grpc_to_http(code: &[u8]) -> Option<u16> {
    Some(match code {
        b"0" => 200,
        b"1" => 499,
        b"2" | b"13" | b"15" => 500,
        b"3" | b"9" | b"11" => 400,
        b"4" => 504,
        b"5" => 404,
        b"6" | b"10" => 409,
        b"7" => 403,
        b"8" => 429,
        b"12" => 501,
        b"14" => 503,
        b"16" => 401,
        c if !c.is_empty() && c.iter().all(u8::is_ascii_digit) => 500,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc: Option<&'static str>) -> Response<()> {
        let mut res = Response::builder().status(status);
        if let Some(g) = grpc {
            res = res.header("grpc-status", g);
        }
        res.body(()).unwrap()
    }

    #[test]
    fn trailers_only_grpc_errors_count_as_their_http_status() {
        assert_eq!(outlier_status(&response(200, None)), 200);
        assert_eq!(outlier_status(&response(200, Some("0"))), 200);
        // UNAVAILABLE, INTERNAL and DEADLINE_EXCEEDED are 5xx to outlier
        // detection, as in Envoy.
        assert_eq!(outlier_status(&response(200, Some("14"))), 503);
        assert_eq!(outlier_status(&response(200, Some("13"))), 500);
        assert_eq!(outlier_status(&response(200, Some("4"))), 504);
        // Caller errors are not.
        assert_eq!(outlier_status(&response(200, Some("5"))), 404);
        assert_eq!(outlier_status(&response(200, Some("8"))), 429);
        // An unassigned code is UNKNOWN; garbage is ignored; HTTP 5xx wins.
        assert_eq!(outlier_status(&response(200, Some("42"))), 500);
        assert_eq!(outlier_status(&response(200, Some("x"))), 200);
        assert_eq!(outlier_status(&response(502, Some("0"))), 502);
    }
}
