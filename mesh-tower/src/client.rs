//! The mesh client: the client-side stack as one `tower::Service`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::model::EndpointAddress;

use crate::access_log;
use crate::balance::Balance;
use crate::body::{self, ResponseBody};
use crate::breaker::CircuitBreaker;
use crate::endpoint::EndpointState;
use crate::error::{BoxError, Error};
use crate::fault::{self, Fault};
use crate::mesh::Mesh;
use crate::metrics;
use crate::ratelimit::RateLimit;
use crate::retry::{Hedge, Retry};
use crate::route::{self, Route, RouteDecision};
pub use crate::route::{InvalidTarget, Target};
use crate::shaping::{self, Shaping};
use crate::timeout::Timeout;
use crate::trace::span::{self as spans, Call, Recording};
use crate::trace::telemetry::TelemetryState;
use crate::trace::{self, OtlpExporter, Propagators, Sampling, SpanContext};

/// The stack below [`Shaping`]: fault injection, the rate limit, the route timeout
/// over everything below it, then retries.
type Leaf = Fault<RateLimit<Timeout<Hedge<Retry<CircuitBreaker<Balance>>>>>>;

type LeafFuture = fault::ResponseFuture<
    RateLimit<Timeout<Hedge<Retry<CircuitBreaker<Balance>>>>>,
    body::BoxBody,
    ResponseBody,
>;

/// A client whose requests are routed, split, bounded and balanced by the
/// mesh config, live.
///
/// The stack, outermost first, is the order Envoy applies the same
/// policies in: [`Route`] (match, draw a cluster) → [`Shaping`]
/// (rewrites, header edits, mirrors, redirects and direct responses) →
/// [`Fault`] (injected delays and aborts) → [`RateLimit`] (the cluster's
/// local rate limit) → [`Timeout`] (the route's timeout, over the whole
/// call) → [`Hedge`] (the route's hedging policy) → [`Retry`] (the
/// route's retry policy, per-try timeouts, the cluster's retry budget) →
/// [`CircuitBreaker`] (the cluster's limits) → [`Balance`] (pick an
/// endpoint, send on its pooled connection). It is `Clone`, cheap to
/// clone, and every clone shares the
/// mesh's per-endpoint state.
///
/// Accepts `http::Request<B>` for any body `B` of `Bytes` and answers
/// `http::Response<ResponseBody>`, so it works with hyper-style code and as
/// the transport of a tonic-generated client:
///
/// ```no_run
/// # async fn f(mesh: mesh_tower::Mesh) -> Result<(), Box<dyn std::error::Error>> {
/// use tower::ServiceExt;
/// let client = mesh.client();
/// let req = http::Request::get("http://reviews:9080/reviews/1")
///     .body(http_body_util::Empty::<bytes::Bytes>::new())?;
/// let res = client.oneshot(req).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeshClient {
    inner: Route<Shaping<Leaf>>,
    propagators: Propagators,
    sampling: Sampling,
    // The watch of an `xds:///` target's listener on the mesh's subscriber.
    #[cfg(feature = "xds")]
    xds: Option<Arc<crate::xds::XdsTarget>>,
    exporter: Option<OtlpExporter>,
    telemetry: Arc<TelemetryState>,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient").finish_non_exhaustive()
    }
}

/// Where a request would be sent: its route decision and endpoint.
#[derive(Clone)]
pub struct Decision {
    route: RouteDecision,
    endpoint: Arc<EndpointState>,
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decision")
            .field("route", &self.route)
            .field("endpoint", self.endpoint.address())
            .finish()
    }
}

impl Decision {
    /// The route decision.
    pub fn route(&self) -> &RouteDecision {
        &self.route
    }

    /// The endpoint picked.
    pub fn endpoint(&self) -> &EndpointAddress {
        self.endpoint.address()
    }
}

impl MeshClient {
    pub(crate) fn new(mesh: Mesh, target: Option<Target>) -> Self {
        let leaf = Shaping::with_mirrors(
            Fault::from_route(RateLimit::from_route(Timeout::from_route(Hedge::new(
                Retry::new(CircuitBreaker::from_route(Balance::new())),
            )))),
            mesh.mirrors().clone(),
        );
        #[cfg(feature = "xds")]
        let xds = target
            .as_ref()
            .and_then(|t| t.listener())
            .and_then(|l| crate::xds::XdsTarget::watch(&mesh, l));
        let exporter = mesh.span_exporter().cloned();
        let telemetry = Arc::clone(mesh.telemetry());
        let inner = match target {
            Some(t) => Route::with_target(leaf, mesh, t),
            None => Route::new(leaf, mesh),
        };
        Self {
            inner,
            propagators: Propagators::default(),
            sampling: Sampling::never(),
            #[cfg(feature = "xds")]
            xds,
            exporter,
            telemetry,
        }
    }

    /// Records the spans of sampled calls (the logical call and each
    /// attempt) into `exporter`; the mesh's
    /// ([`MeshBuilder::with_span_exporter`](crate::MeshBuilder::with_span_exporter))
    /// unless set. Unsampled and untraced calls record nothing.
    pub fn with_span_exporter(mut self, exporter: OtlpExporter) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// Starts a new trace for `sampling`'s share of the calls made outside
    /// any trace (Istio's `randomSamplingPercentage`); calls inside a trace
    /// follow their parent's decision. [`Sampling::never`] unless set: a
    /// call with no trace to continue then sends no trace headers and costs
    /// nothing. See [`trace`](crate::trace).
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// The trace header formats this client injects (and reads from a
    /// request sent outside any server's trace context);
    /// [`Propagators::default`] unless set. See [`trace`](crate::trace).
    pub fn with_propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = propagators;
        self
    }

    /// Makes the routing and balancing decision for `req` without sending
    /// it: which route, which cluster, which endpoint. The request's URI is
    /// completed as sending would complete it.
    pub fn decide<B>(&self, req: &mut Request<B>) -> Result<Decision, Error> {
        let mesh = self.inner_mesh();
        let runtime = mesh.runtime().load_full();
        let decided = route::decide(&runtime, self.inner_target(), req).and_then(|route| {
            let endpoint = route
                .cluster
                .pick(route.cluster.request_hash(req))
                .cloned()
                .ok_or_else(|| Error::no_endpoints(route.cluster().name.as_str()))?;
            Ok(Decision { route, endpoint })
        });
        #[cfg(feature = "xds")]
        let decided = match &self.xds {
            Some(x) => decided.map_err(|e| x.explain(e)),
            None => decided,
        };
        decided
    }

    fn inner_mesh(&self) -> &Mesh {
        self.inner.mesh()
    }

    fn inner_target(&self) -> Option<&Target> {
        self.inner.target()
    }
}

impl<B> tower::Service<Request<B>> for MeshClient
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        tower::Service::<Request<body::BoxBody>>::poll_ready(&mut self.inner, cx)
            .map_err(Error::from_box)
    }

    fn call(&mut self, mut req: Request<B>) -> ResponseFuture {
        // The mesh's `Telemetry` (client side): one atomic load.
        let telemetry = self.telemetry.load();
        let policy = &telemetry.client;
        let sampling = policy.sampling.unwrap_or(self.sampling);
        let span = trace::outbound(req.headers_mut(), self.propagators, sampling);
        let access = access_log::Start::capture(
            &req,
            span.map(|s| s.trace_id),
            self.inner_mesh().access_log(),
        );
        let request_bytes = metrics::body_bytes(req.headers(), &req.body().size_hint());
        let protocol = metrics::Protocol::of(req.headers());
        // Only a sampled trace with an exporter records spans.
        let (recording, call) = match (&span, &self.exporter) {
            (Some(s), Some(exporter)) if s.sampled && policy.report => {
                let (mut r, c) = spans::client(exporter, s, &req);
                policy.tag(&mut r, req.headers());
                (Some(r), Some(c))
            }
            _ => (None, None),
        };
        drop(telemetry);
        let inner = spans::in_call(call.as_ref(), || self.inner.call(req.map(body::boxed)));
        ResponseFuture {
            inner,
            recording,
            call,
            span,
            start: tokio::time::Instant::now(),
            request_bytes,
            protocol,
            access,
            #[cfg(feature = "xds")]
            xds: self.xds.clone(),
        }
    }
}

/// The response future of [`MeshClient`]. When it completes it records
/// Istio's standard metrics (`reporter="source"`) into the table the
/// route decision resolved, and the access log line when enabled. The
/// response of a traced call carries the logical call's [`SpanContext`]
/// in its extensions (an untraced call's response gets nothing: no
/// extension map is allocated for it).
#[pin_project::pin_project]
pub struct ResponseFuture {
    #[pin]
    inner: route::ResponseFuture<shaping::ResponseFuture<LeafFuture, ResponseBody>>,
    recording: Option<Box<Recording>>,
    call: Option<Arc<Call>>,
    span: Option<SpanContext>,
    start: tokio::time::Instant,
    request_bytes: u64,
    protocol: metrics::Protocol,
    access: Option<Box<access_log::Start>>,
    #[cfg(feature = "xds")]
    xds: Option<Arc<crate::xds::XdsTarget>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = std::task::ready!(spans::in_call(this.call.as_ref(), || this
            .inner
            .as_mut()
            .poll(cx)));
        let grpc = *this.protocol == metrics::Protocol::Grpc;
        let table = this.inner.as_ref().get_ref().metrics();
        let destination = table.destination();
        let mut record = metrics::Record {
            reporter: metrics::Reporter::Source,
            destination,
            code: 0,
            grpc_status: None,
            flag: metrics::ResponseFlag::None,
            protocol: *this.protocol,
            duration: this.start.elapsed(),
            request_bytes: *this.request_bytes,
            response_bytes: 0,
            peer: metrics::Peer::default(),
        };
        let mut upstream = None;
        let result = match result {
            Ok(mut res) => {
                if this.access.is_some() {
                    upstream = res.extensions_mut().remove::<access_log::Upstream>();
                }
                if let Some(span) = *this.span {
                    res.extensions_mut().insert(span);
                }
                record.code = res.status().as_u16();
                record.grpc_status = metrics::grpc_status(res.headers());
                record.flag = res
                    .extensions()
                    .get::<metrics::ResponseFlag>()
                    .copied()
                    .unwrap_or(metrics::ResponseFlag::None);
                record.response_bytes =
                    metrics::body_bytes(res.headers(), &http_body::Body::size_hint(res.body()));
                Ok(res)
            }
            Err(e) => {
                let e = Error::from_box(e);
                #[cfg(feature = "xds")]
                let e = match this.xds.take() {
                    Some(x) => x.explain(e),
                    None => e,
                };
                let e = if grpc { e.for_grpc() } else { e };
                record.code = e.http_status().as_u16();
                record.flag = metrics::ResponseFlag::of_error(&e);
                if grpc {
                    record.grpc_status = u8::try_from(e.grpc_code() as i32).ok();
                }
                Err(e)
            }
        };
        table.record(&record);
        if let (Some(mut recording), Some(call)) = (this.recording.take(), this.call.take()) {
            match &result {
                Ok(res) => recording.response(res),
                Err(e) => recording.failed(e),
            }
            spans::end_call(
                recording,
                &call,
                destination.map(|c| c.as_str()),
                record.flag.as_str(),
            );
        }
        if let Some(a) = this.access.take() {
            a.log(&record, upstream.as_ref());
        }
        Poll::Ready(result)
    }
}
