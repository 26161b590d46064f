use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use mesh_core::model::{HeaderMutations, Route, RouteAction};

use crate::error::BoxError;
use crate::route::RouteDecision;

/// The response future of [`Shaping`](super::Shaping).
#[pin_project::pin_project]
pub struct ResponseFuture<F, ResB> {
    #[pin]
    state: State<F, ResB>,
}

#[pin_project::pin_project(project = Proj)]
enum State<F, ResB> {
    // Passing through; edits the response headers of the route, if any.
    Inner {
        #[pin]
        fut: F,
        // Set only when the route edits response headers.
        decision: Option<Edits>,
    },
    // Answered locally.
    Local(Option<Response<ResB>>),
}

impl<F, ResB> ResponseFuture<F, ResB> {
    pub(crate) fn inner(fut: F, decision: Option<Edits>) -> Self {
        Self {
            state: State::Inner { fut, decision },
        }
    }

    pub(crate) fn local(res: Response<ResB>) -> Self {
        Self {
            state: State::Local(Some(res)),
        }
    }
}

/// Where the response edits come from: the routed request's route, or
/// the layer's static policy.
pub(crate) enum Edits {
    Route(RouteDecision),
    Static(std::sync::Arc<Route>),
}

impl Edits {
    fn route(&self) -> &Route {
        match self {
            Self::Route(d) => d.route(),
            Self::Static(r) => r,
        }
    }

    /// Applies the response edits: the picked target's, then the route's.
    fn apply(&self, headers: &mut http::HeaderMap) {
        if let Self::Route(d) = self
            && let Some(f) = d.forward()
            && let Some((_, m)) = super::target_edits(f, &d.cluster().name)
        {
            mutate(headers, m);
        }
        if let Some(m) = response_edits(self.route()) {
            mutate(headers, m);
        }
    }
}

/// Applies header edits: remove, then set, then add.
pub(crate) fn mutate(headers: &mut http::HeaderMap, m: &HeaderMutations) {
    for name in m.remove.iter() {
        headers.remove(name);
    }
    for (name, value) in m.set.iter() {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in m.add.iter() {
        headers.append(name.clone(), value.clone());
    }
}

fn response_edits(route: &Route) -> Option<&HeaderMutations> {
    match &route.action {
        RouteAction::Forward(f) if !f.response_headers.is_empty() => Some(&f.response_headers),
        _ => None,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Proj::Inner { fut, decision } => {
                let mut res = std::task::ready!(fut.poll(cx)).map_err(Into::into)?;
                if let Some(d) = decision.take() {
                    d.apply(res.headers_mut());
                }
                Poll::Ready(Ok(res))
            }
            Proj::Local(res) => {
                Poll::Ready(res.take().ok_or_else(|| "polled after completion".into()))
            }
        }
    }
}
