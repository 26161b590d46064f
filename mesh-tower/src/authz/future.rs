//! The response future and body of [`Authorization`](super::Authorization).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Frame, SizeHint};

/// The response future of [`Authorization`](super::Authorization).
#[pin_project::pin_project(project = Proj)]
pub enum ResponseFuture<F, ResB> {
    /// Allowed: the inner service's future.
    #[doc(hidden)]
    Inner(#[pin] F),
    /// Denied or rejected: the local reply.
    #[doc(hidden)]
    Local(Option<Response<AuthzBody<ResB>>>),
}

impl<F, ResB> ResponseFuture<F, ResB> {
    pub(super) fn inner(f: F) -> Self {
        Self::Inner(f)
    }

    pub(super) fn local(res: Response<AuthzBody<ResB>>) -> Self {
        Self::Local(Some(res))
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<AuthzBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner(f) => f.poll(cx).map(|r| r.map(|res| res.map(AuthzBody::inner))),
            // Polled once; after that it stays pending rather than panic.
            Proj::Local(res) => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}

/// The response body of [`Authorization`](super::Authorization): the
/// service's body, or the local reply's.
#[pin_project::pin_project(project = BodyProj)]
pub struct AuthzBody<B> {
    #[pin]
    kind: Kind<B>,
}

#[pin_project::pin_project(project = KindProj)]
enum Kind<B> {
    Inner(#[pin] B),
    Local(Option<Bytes>),
}

impl<B> AuthzBody<B> {
    fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner(body),
        }
    }

    pub(super) fn local(data: Bytes) -> Self {
        Self {
            kind: Kind::Local(Some(data)),
        }
    }

    pub(super) fn empty() -> Self {
        Self {
            kind: Kind::Local(None),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for AuthzBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Inner(b) => f.debug_tuple("Inner").field(b).finish(),
            Kind::Local(d) => f.debug_tuple("Local").field(d).finish(),
        }
    }
}

impl<B> http_body::Body for AuthzBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner(b) => b.poll_frame(cx),
            KindProj::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner(b) => b.is_end_stream(),
            Kind::Local(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner(b) => b.size_hint(),
            Kind::Local(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
