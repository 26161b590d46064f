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
        }
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
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
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
                        let outcome = Outcome::Response(res.status().as_u16());
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
