//! The server side of local rate limiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::model::Labels;
use mesh_core::ratelimit::TokenBucketState;

use crate::local_reply;
use crate::mesh::Mesh;

/// What a server is, for picking its policies: the port it serves and
/// its workload labels (a pod's labels in Kubernetes), which Istio's
/// `workloadSelector` matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// The port the server listens on.
    pub port: u16,
    /// The workload's labels.
    pub labels: Labels,
}

impl Workload {
    /// A workload serving `port`, without labels.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            labels: Labels::default(),
        }
    }

    /// Sets the labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

#[derive(Clone, Debug)]
enum Source {
    Static(Arc<TokenBucketState>),
    Mesh { mesh: Mesh, workload: Arc<Workload> },
}

/// Applies [`ServerRateLimit`] to a service (an axum router or a tonic
/// server).
#[derive(Clone, Debug)]
pub struct ServerRateLimitLayer {
    source: Source,
}

impl ServerRateLimitLayer {
    /// One static bucket for every request.
    pub fn new(bucket: Arc<TokenBucketState>) -> Self {
        Self {
            source: Source::Static(bucket),
        }
    }

    /// The live server rate limit of `workload` under `mesh`'s config.
    pub fn for_workload(mesh: Mesh, workload: Workload) -> Self {
        Self {
            source: Source::Mesh {
                mesh,
                workload: Arc::new(workload),
            },
        }
    }
}

impl<S> tower::Layer<S> for ServerRateLimitLayer {
    type Service = ServerRateLimit<S>;

    fn layer(&self, inner: S) -> ServerRateLimit<S> {
        ServerRateLimit {
            inner,
            source: self.source.clone(),
        }
    }
}

/// Answers inbound requests over the listener's limit locally; see the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct ServerRateLimit<S> {
    inner: S,
    source: Source,
}

impl<S> ServerRateLimit<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> tower::Service<Request<B>> for ServerRateLimit<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    ResB: Default,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ServerResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let admission = match &self.source {
            Source::Static(b) => Some((b.try_acquire(), *b.config())),
            Source::Mesh { mesh, workload } => {
                let rt = mesh.runtime().load();
                rt.server_limits
                    .iter()
                    .find(|l| l.applies_to(workload))
                    .map(|l| (l.bucket.try_acquire(), *l.bucket.config()))
            }
        };
        if let Some((a, config)) = admission
            && !a.allowed
        {
            let grpc = local_reply::is_grpc(&req);
            tracing::debug!("inbound request rate limited");
            return ServerResponseFuture::Limited(Some(super::limited(
                ResB::default(),
                &config,
                &a,
                grpc,
            )));
        }
        ServerResponseFuture::Inner(self.inner.call(req))
    }
}

/// The response future of [`ServerRateLimit`].
#[pin_project::pin_project(project = Proj)]
pub enum ServerResponseFuture<F, ResB> {
    /// Admitted.
    #[doc(hidden)]
    Inner(#[pin] F),
    /// Limited.
    #[doc(hidden)]
    Limited(Option<Response<ResB>>),
}

impl<F, ResB, E> Future for ServerResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Inner(f) => f.poll(cx),
            // A limited future is polled once; after that it stays pending
            // rather than panic.
            Proj::Limited(res) => match res.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
