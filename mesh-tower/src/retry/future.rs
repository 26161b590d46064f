use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use mesh_core::model::EndpointAddress;
use tokio::time::Sleep;

use super::budget::{Refusal, RetryGuard, describe};
use super::policy::{self, Outcome, Pushback};
use super::replay::{self, Replay};
use super::{RetryBody, Source, TriedEndpoints};
use crate::body::BoxBody;
use crate::error::{BoxError, Elapsed, Error, TimeoutReason};

/// The response future of [`Retry`](super::Retry).
#[pin_project::pin_project]
pub struct ResponseFuture<S, B>
where
    S: tower::Service<Request<BoxBody>>,
{
    #[pin]
    attempt: Attempt<S::Future, B>,
    // The per-try timeout while an attempt runs, the backoff between them.
    #[pin]
    timer: Option<Sleep>,
    // `None`: no retry policy, the inner future is passed through.
    ctx: Option<Ctx<S>>,
}

#[pin_project::pin_project(project = AttemptProj)]
enum Attempt<F, B> {
    Calling {
        #[pin]
        fut: F,
    },
    Peeking {
        parts: Option<http::response::Parts>,
        body: Option<B>,
    },
    Backoff,
    Sending,
    Done,
}

/// What a retry needs besides the inner future.
struct Ctx<S> {
    svc: S,
    source: Source,
    // The request to send again; `None` when it cannot be (no retries
    // configured, or a body that is not replayable).
    template: Option<Template>,
    retries: u32,
    any_method: bool,
    grpc: bool,
    per_try: Option<Duration>,
    tried: Vec<EndpointAddress>,
    guard: Option<RetryGuard>,
}

struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Replay,
}

enum Verdict {
    Return,
    Fail(Error),
    Retry(Duration),
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Starts the first attempt of a request whose policy is in `source`.
pub(super) fn start<S, B>(
    svc: &mut S,
    req: Request<BoxBody>,
    source: Source,
    max_replay_bytes: usize,
) -> ResponseFuture<S, B>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>> + Clone,
{
    let Some(policy) = source.policy() else {
        return ResponseFuture::passthrough(svc.call(req));
    };
    // A hedged copy was counted by the hedging layer.
    if req.extensions().get::<super::hedge::Hedged>().is_none() {
        source.state().deposit(source.budget());
    }
    let grpc = is_grpc(req.headers());
    let any_method = grpc || policy::idempotent(req.method());
    let per_try = policy.per_try_timeout;
    let could_retry = policy.num_retries > 0 && !policy.retry_on.conditions.is_empty();
    let (parts, body) = req.into_parts();
    let (template, body) = if could_retry {
        let (replay, body) = replay::capture(body, max_replay_bytes);
        let template = replay.map(|body| Template {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        });
        (template, body)
    } else {
        (None, body)
    };
    let fut = svc.call(Request::from_parts(parts, body));
    ResponseFuture {
        attempt: Attempt::Calling { fut },
        timer: per_try.map(tokio::time::sleep),
        ctx: Some(Ctx {
            svc: svc.clone(),
            source,
            template,
            retries: 0,
            any_method,
            grpc,
            per_try,
            tried: Vec::new(),
            guard: None,
        }),
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: tower::Service<Request<BoxBody>>,
{
    pub(super) fn passthrough(fut: S::Future) -> Self {
        Self {
            attempt: Attempt::Calling { fut },
            timer: None,
            ctx: None,
        }
    }
}

impl<S> Ctx<S> {
    /// Whether the response's `grpc-status` may be in its trailers and
    /// would matter.
    fn should_peek<B: Body>(&self, res: &Response<B>) -> bool {
        let Some(policy) = self.source.policy() else {
            return false;
        };
        self.grpc
            && self.template.is_some()
            && self.retries < policy.num_retries
            && policy::has_grpc_conditions(&policy.retry_on)
            && res.status() == http::StatusCode::OK
            && !res.headers().contains_key("grpc-status")
            && !res.body().is_end_stream()
    }

    /// Decides what follows an attempt that produced `outcome`.
    /// `pushback` holds the headers (or trailers) that may carry
    /// `retry-after` / `grpc-retry-pushback-ms`; they are read only when a
    /// retry is due.
    fn decide(
        &mut self,
        outcome: Outcome,
        pushback: Option<&HeaderMap>,
        endpoint: Option<&EndpointAddress>,
        last: &dyn fmt::Display,
    ) -> Verdict {
        // The previous retry's attempt has ended.
        self.guard = None;
        let Some(policy) = self.source.policy() else {
            return Verdict::Return;
        };
        if self.template.is_none()
            || self.retries >= policy.num_retries
            || !policy::allows(policy, self.any_method, outcome)
        {
            return Verdict::Return;
        }
        let delay = match pushback.map_or(Pushback::None, policy::pushback) {
            Pushback::Stop => return Verdict::Return,
            Pushback::After(d) => d,
            Pushback::None => policy::backoff(&policy.backoff, self.retries + 1),
        };
        let ignore_previous = policy.ignore_previous_hosts;
        let budget = self.source.budget();
        match self
            .source
            .state()
            .withdraw(budget, self.source.max_retries())
        {
            Ok(guard) => self.guard = Some(guard),
            Err(refusal) => {
                let cluster = self.source.cluster_name();
                let what = match refusal {
                    Refusal::Budget => format!(
                        "retry budget exhausted for cluster {cluster:?} ({})",
                        describe(budget)
                    ),
                    Refusal::Concurrency(n) => format!(
                        "retry budget exhausted for cluster {cluster:?}: {n} retries in flight (http.maxRetries)"
                    ),
                };
                tracing::debug!(cluster, %last, "{what}");
                return Verdict::Fail(Error::budget_exhausted(what, last));
            }
        }
        self.retries += 1;
        if ignore_previous && let Some(ep) = endpoint {
            self.tried.push(ep.clone());
        }
        tracing::debug!(
            cluster = self.source.cluster_name(),
            retry = self.retries,
            ?delay,
            %last,
            "retrying"
        );
        Verdict::Retry(delay)
    }

    /// The next attempt's request.
    fn request(&self) -> Option<Request<BoxBody>> {
        let t = self.template.as_ref()?;
        let mut req = Request::new(t.body.body());
        *req.method_mut() = t.method.clone();
        *req.uri_mut() = t.uri.clone();
        *req.version_mut() = t.version;
        *req.headers_mut() = t.headers.clone();
        if let Some(d) = self.source.decision() {
            req.extensions_mut().insert(d.clone());
        }
        if !self.tried.is_empty() {
            req.extensions_mut()
                .insert(TriedEndpoints(self.tried.clone()));
        }
        Some(req)
    }
}

/// A response as the last attempt's outcome, formatted only if needed.
struct Status<'a>(http::StatusCode, Option<&'a HeaderMap>);

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(g) = self.1.and_then(policy::grpc_status) {
            write!(f, " with grpc-status {g}")?;
        }
        Ok(())
    }
}

fn grpc_of(headers: &HeaderMap) -> Option<&HeaderMap> {
    headers.contains_key("grpc-status").then_some(headers)
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: tower::Service<Request<BoxBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: RetryBody,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.attempt.as_mut().project() {
                AttemptProj::Calling { fut } => {
                    let result = match fut.poll(cx) {
                        Poll::Ready(r) => r.map_err(Into::into),
                        Poll::Pending => {
                            let fired = this
                                .timer
                                .as_mut()
                                .as_pin_mut()
                                .is_some_and(|t| t.poll(cx).is_ready());
                            let (true, Some(ctx)) = (fired, this.ctx.as_ref()) else {
                                return Poll::Pending;
                            };
                            let after = ctx.per_try.unwrap_or_default();
                            Err(Box::new(Elapsed::because(after, TimeoutReason::PerTry))
                                as BoxError)
                        }
                    };
                    let Some(ctx) = this.ctx.as_mut() else {
                        this.attempt.set(Attempt::Done);
                        return Poll::Ready(result);
                    };
                    let result = match result {
                        Ok(res) if ctx.should_peek(&res) => {
                            let (parts, body) = res.into_parts();
                            this.attempt.set(Attempt::Peeking {
                                parts: Some(parts),
                                body: Some(body),
                            });
                            continue;
                        }
                        other => other,
                    };
                    let verdict = match &result {
                        Ok(res) => {
                            // Only gRPC responses are read for `grpc-status`.
                            let grpc = if ctx.grpc {
                                grpc_of(res.headers())
                            } else {
                                None
                            };
                            ctx.decide(
                                Outcome::of_response(res.status(), grpc),
                                Some(res.headers()),
                                res.body().endpoint(),
                                &Status(res.status(), grpc),
                            )
                        }
                        Err(e) => {
                            let endpoint = e.downcast_ref::<Error>().and_then(Error::endpoint);
                            ctx.decide(Outcome::of_error(e), None, endpoint, e)
                        }
                    };
                    match verdict {
                        Verdict::Return => {
                            this.attempt.set(Attempt::Done);
                            return Poll::Ready(result);
                        }
                        Verdict::Fail(e) => {
                            this.attempt.set(Attempt::Done);
                            return Poll::Ready(Err(Box::new(e)));
                        }
                        Verdict::Retry(delay) => {
                            drop(result);
                            this.attempt.set(Attempt::Backoff);
                            this.timer.set(Some(tokio::time::sleep(delay)));
                        }
                    }
                }
                AttemptProj::Peeking { parts, body } => {
                    let Some(ctx) = this.ctx.as_mut() else {
                        return Poll::Ready(Err("retry state lost".into()));
                    };
                    let Some(b) = body.as_mut() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let frame = match Pin::new(b).poll_frame(cx) {
                        Poll::Ready(f) => f,
                        Poll::Pending => {
                            let fired = this
                                .timer
                                .as_mut()
                                .as_pin_mut()
                                .is_some_and(|t| t.poll(cx).is_ready());
                            if !fired {
                                return Poll::Pending;
                            }
                            let after = ctx.per_try.unwrap_or_default();
                            let e = Elapsed::because(after, TimeoutReason::PerTry);
                            let endpoint = body.as_ref().and_then(|b| b.endpoint().cloned());
                            match ctx.decide(Outcome::PerTryTimeout, None, endpoint.as_ref(), &e) {
                                Verdict::Return => {
                                    this.attempt.set(Attempt::Done);
                                    return Poll::Ready(Err(Box::new(e)));
                                }
                                Verdict::Fail(e) => {
                                    this.attempt.set(Attempt::Done);
                                    return Poll::Ready(Err(Box::new(e)));
                                }
                                Verdict::Retry(delay) => {
                                    this.attempt.set(Attempt::Backoff);
                                    this.timer.set(Some(tokio::time::sleep(delay)));
                                    continue;
                                }
                            }
                        }
                    };
                    let (Some(parts), Some(body)) = (parts.take(), body.take()) else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let endpoint = body.endpoint().cloned();
                    let verdict = match frame {
                        None => {
                            this.attempt.set(Attempt::Done);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        Some(Err(e)) => {
                            let e: BoxError = e.into();
                            let e = Error::from_upstream(e);
                            match ctx.decide(Outcome::Reset, None, endpoint.as_ref(), &e) {
                                Verdict::Return => Err(e),
                                v => Ok(v),
                            }
                        }
                        Some(Ok(frame)) if frame.is_trailers() => {
                            let trailers = frame.trailers_ref();
                            let grpc = trailers.and_then(policy::grpc_status);
                            let outcome = Outcome::Response {
                                status: parts.status.as_u16(),
                                grpc,
                            };
                            match ctx.decide(
                                outcome,
                                trailers,
                                endpoint.as_ref(),
                                &Status(parts.status, trailers),
                            ) {
                                Verdict::Return => {
                                    this.attempt.set(Attempt::Done);
                                    return Poll::Ready(Ok(Response::from_parts(
                                        parts,
                                        body.prepend(frame),
                                    )));
                                }
                                v => Ok(v),
                            }
                        }
                        Some(Ok(frame)) => {
                            // Data: a real response, handed over whole.
                            ctx.guard = None;
                            this.attempt.set(Attempt::Done);
                            return Poll::Ready(Ok(Response::from_parts(
                                parts,
                                body.prepend(frame),
                            )));
                        }
                    };
                    match verdict {
                        Err(e) | Ok(Verdict::Fail(e)) => {
                            this.attempt.set(Attempt::Done);
                            return Poll::Ready(Err(Box::new(e)));
                        }
                        Ok(Verdict::Return) => {
                            this.attempt.set(Attempt::Done);
                            return Poll::Ready(Err("unreachable retry verdict".into()));
                        }
                        Ok(Verdict::Retry(delay)) => {
                            this.attempt.set(Attempt::Backoff);
                            this.timer.set(Some(tokio::time::sleep(delay)));
                        }
                    }
                }
                AttemptProj::Backoff => {
                    if let Some(t) = this.timer.as_mut().as_pin_mut() {
                        ready!(t.poll(cx));
                    }
                    this.timer.set(None);
                    this.attempt.set(Attempt::Sending);
                }
                AttemptProj::Sending => {
                    let Some(ctx) = this.ctx.as_mut() else {
                        return Poll::Ready(Err("retry state lost".into()));
                    };
                    if let Err(e) = ready!(ctx.svc.poll_ready(cx)) {
                        this.attempt.set(Attempt::Done);
                        return Poll::Ready(Err(e.into()));
                    }
                    let Some(req) = ctx.request() else {
                        return Poll::Ready(Err("retry without a request".into()));
                    };
                    let fut = ctx.svc.call(req);
                    this.attempt.set(Attempt::Calling { fut });
                    let per_try = ctx.per_try;
                    this.timer.set(per_try.map(tokio::time::sleep));
                }
                AttemptProj::Done => {
                    return Poll::Ready(Err("polled after completion".into()));
                }
            }
        }
    }
}
