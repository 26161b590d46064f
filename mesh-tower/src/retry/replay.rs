//! Replayable request bodies.
//!
//! A retry sends the request again, body included, so the body must be
//! kept. Only a body that is complete when the request is sent and fits
//! the bound is kept (64 KiB by default, the bound Linkerd's retry layer
//! uses for its replay buffer): reading a streaming body to its end before
//! sending would delay or deadlock streaming calls, and keeping a large
//! one costs memory per request. A body that is larger or still streaming
//! makes the request non-retryable; it is still sent intact, the frames
//! read so far first.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxBody;
use crate::error::BoxError;

/// The default bound on a replayable body (Linkerd's retry layer buffers
/// up to 64 KiB).
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;

/// A kept copy of a complete request body.
#[derive(Clone, Debug, Default)]
pub(crate) struct Replay {
    data: Bytes,
    // Boxed: request trailers are rare, and the replay copy lives in every
    // retryable request's future.
    trailers: Option<Box<HeaderMap>>,
}

impl Replay {
    /// A fresh body with the kept content.
    pub(crate) fn body(&self) -> BoxBody {
        if self.data.is_empty() && self.trailers.is_none() {
            // Zero-sized: boxing it does not allocate.
            return crate::body::boxed(http_body_util::Empty::<Bytes>::new());
        }
        crate::body::boxed(Frames {
            data: (!self.data.is_empty()).then(|| self.data.clone()),
            trailers: self.trailers.as_deref().cloned(),
            rest: None,
        })
    }
}

/// Reads what `body` has ready now, up to `max` bytes. Returns the copy to
/// replay (`None`: not replayable) and the body to send first, which
/// yields exactly what `body` would have.
pub(crate) fn capture(mut body: BoxBody, max: usize) -> (Option<Replay>, BoxBody) {
    if body.is_end_stream() {
        return (Some(Replay::default()), body);
    }
    if body.size_hint().lower() > max as u64 {
        return (None, body);
    }
    // A no-op waker: whatever is not ready now makes the body streaming,
    // and the connection re-registers its own waker when it polls next.
    let mut cx = Context::from_waker(Waker::noop());
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut len = 0usize;
    let mut trailers = None;
    let complete = loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    len += data.len();
                    match (&mut first, &mut more) {
                        (None, _) => first = Some(data),
                        (Some(f), None) => {
                            let mut m = BytesMut::with_capacity(f.len() + data.len());
                            m.extend_from_slice(f);
                            m.extend_from_slice(&data);
                            more = Some(m);
                        }
                        (Some(_), Some(m)) => m.extend_from_slice(&data),
                    }
                    if len > max {
                        break false;
                    }
                }
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    break true;
                }
            },
            Poll::Ready(None) => break true,
            // An error is for the attempt to report; the body is not kept.
            Poll::Ready(Some(Err(e))) => {
                let data = more.map(BytesMut::freeze).or(first);
                return (
                    None,
                    crate::body::boxed(Frames {
                        data,
                        trailers: None,
                        rest: Some(crate::body::boxed(Failed(Some(e)))),
                    }),
                );
            }
            Poll::Pending => break false,
        }
    };
    let data = more.map(BytesMut::freeze).or(first).unwrap_or_default();
    if complete {
        let replay = Replay {
            data,
            trailers: trailers.map(Box::new),
        };
        let body = replay.body();
        (Some(replay), body)
    } else {
        let sent = crate::body::boxed(Frames {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
            rest: Some(body),
        });
        (None, sent)
    }
}

/// `rest` with `frame` in front.
pub(crate) fn prepend(frame: Frame<Bytes>, rest: BoxBody) -> BoxBody {
    let (data, trailers) = match frame.into_data() {
        Ok(d) => (Some(d), None),
        Err(f) => (None, f.into_trailers().ok()),
    };
    crate::body::boxed(Frames {
        data,
        trailers,
        rest: Some(rest),
    })
}

/// Data, then trailers, then the rest of a body.
struct Frames {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<BoxBody>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let mine = self.data.as_ref().map_or(0, |d| d.len() as u64);
        let mut hint = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        // Upper first: `set_lower` asserts lower <= upper.
        if let Some(u) = hint.upper() {
            hint.set_upper(u + mine);
        }
        hint.set_lower(hint.lower() + mine);
        hint
    }
}

/// A body that fails with the error a captured body failed with.
struct Failed(Option<BoxError>);

impl Body for Failed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    async fn collect(b: BoxBody) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn complete_small_bodies_are_kept_and_replayed_intact() {
        let (replay, sent) = capture(crate::body::boxed(Full::new(Bytes::from("hello"))), 64);
        let replay = replay.expect("replayable");
        assert_eq!(collect(sent).await, "hello");
        assert_eq!(collect(replay.body()).await, "hello");
        assert_eq!(collect(replay.body()).await, "hello", "again");

        let chunks = futures::stream::iter(
            ["a", "b", "c"].map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from(s)))),
        );
        let (replay, sent) = capture(crate::body::boxed(StreamBody::new(chunks)), 64);
        assert_eq!(collect(sent).await, "abc");
        assert_eq!(collect(replay.unwrap().body()).await, "abc");
    }

    #[tokio::test]
    async fn large_or_streaming_bodies_are_sent_intact_but_not_kept() {
        let big = Bytes::from(vec![7u8; 100]);
        let (replay, sent) = capture(crate::body::boxed(Full::new(big.clone())), 64);
        assert!(replay.is_none());
        assert_eq!(collect(sent).await, big);

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        tx.send(Ok(Frame::data(Bytes::from("first "))))
            .await
            .unwrap();
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        let (replay, sent) = capture(crate::body::boxed(StreamBody::new(stream)), 64);
        assert!(replay.is_none(), "still streaming");
        tx.send(Ok(Frame::data(Bytes::from("second"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(collect(sent).await, "first second");
    }
}
