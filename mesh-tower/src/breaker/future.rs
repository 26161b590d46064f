use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use super::state::Pending;
use super::{KeepPermit, Permit};
use crate::error::{BoxError, Error};

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The response future of [`CircuitBreaker`](super::CircuitBreaker).
#[pin_project::pin_project]
pub struct ResponseFuture<S: tower::Service<R>, R> {
    #[pin]
    state: State<S, R>,
}

#[pin_project::pin_project(project = Proj)]
enum State<S: tower::Service<R>, R> {
    Failed(Option<Error>),
    Waiting {
        acquire: Acquire,
        svc: Option<S>,
        req: Option<R>,
        permit: Option<Permit>,
        pending: Option<Pending>,
    },
    Sending {
        #[pin]
        fut: S::Future,
        permit: Option<Permit>,
    },
}

impl<S: tower::Service<R>, R> ResponseFuture<S, R> {
    pub(crate) fn failed(e: Error) -> Self {
        Self {
            state: State::Failed(Some(e)),
        }
    }

    pub(crate) fn sending(fut: S::Future, permit: Permit) -> Self {
        Self {
            state: State::Sending {
                fut,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn waiting(
        sem: Arc<Semaphore>,
        svc: S,
        req: R,
        permit: Permit,
        pending: Pending,
    ) -> Self {
        Self {
            state: State::Waiting {
                acquire: Box::pin(sem.acquire_owned()),
                svc: Some(svc),
                req: Some(req),
                permit: Some(permit),
                pending: Some(pending),
            },
        }
    }
}

impl<S, R> Future for ResponseFuture<S, R>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
    S::Response: KeepPermit,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                Proj::Failed(e) => {
                    return Poll::Ready(Err(match e.take() {
                        Some(e) => Box::new(e),
                        None => "polled after completion".into(),
                    }));
                }
                Proj::Waiting {
                    acquire,
                    svc,
                    req,
                    permit,
                    pending,
                } => {
                    let connection = match acquire.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(c) => c.ok(),
                    };
                    pending.take();
                    let (Some(mut svc), Some(req), Some(mut permit)) =
                        (svc.take(), req.take(), permit.take())
                    else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    if let Some(c) = connection {
                        permit = permit.with_connection(c);
                    }
                    let fut = svc.call(req);
                    this.state.set(State::Sending {
                        fut,
                        permit: Some(permit),
                    });
                }
                Proj::Sending { fut, permit } => {
                    return match fut.poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Ok(mut res)) => {
                            if let Some(p) = permit.take() {
                                res.keep_permit(p);
                            }
                            Poll::Ready(Ok(res))
                        }
                        Poll::Ready(Err(e)) => {
                            permit.take();
                            Poll::Ready(Err(e.into()))
                        }
                    };
                }
            }
        }
    }
}
