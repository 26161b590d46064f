//! The server side: the layer every inbound request passes.
//!
//! [`MeshServer`] does the cheap, always-on part of a sidecar's inbound
//! work: it gives each request an `x-request-id` (keeping a valid one the
//! caller sent, generating one otherwise, and echoing it on the response),
//! and counts requests and responses per route. The route is axum's
//! method path for gRPC, otherwise axum's `MatchedPath` (the route
//! template, so `/reviews/{id}` and not every id); anything else counts as
//! `unmatched`, and
//! the table is capped so that request paths can never grow it without
//! bound.
//!
//! An inbound `grpc-timeout` becomes the deadline of the calls the
//! handler makes through the mesh ([`deadline`](crate::deadline)).
//!
//! Peer identity (mTLS), authorization, rate limits and telemetry are
//! layers of their own that wrap this one.
//!
//! ```no_run
//! # async fn f(mesh: mesh_tower::Mesh) {
//! let app: axum::Router = axum::Router::new()
//!     .route("/reviews/{id}", axum::routing::get(|| async { "ok" }))
//!     .layer(mesh.server_layer());
//! # let _ = app;
//! # }
//! ```

mod stats;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::task::futures::TaskLocalFuture;

pub use stats::{MAX_ROUTES, RouteStats, ServerStats};

use stats::RouteCounters;

use crate::access_log::AccessLogConfig;
use crate::metrics::{self, IstioMetrics};
pub use crate::trace::REQUEST_ID;
use crate::trace::span::Recording;
use crate::trace::telemetry::TelemetryState;
use crate::trace::{
    OtlpExporter, Propagators, Sampling, TraceContext, new_request_id, valid_request_id,
};

/// Applies [`MeshServer`] to a service.
#[derive(Clone, Debug, Default)]
pub struct MeshServerLayer {
    stats: Arc<ServerStats>,
    propagators: Propagators,
    sampling: Sampling,
    metrics: Option<Arc<IstioMetrics>>,
    access_log: AccessLogConfig,
    exporter: Option<OtlpExporter>,
    telemetry: Option<Arc<TelemetryState>>,
}

impl MeshServerLayer {
    /// A layer with its own counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer that counts into `stats` (shared with a [`Mesh`](crate::Mesh)).
    pub fn with_stats(stats: Arc<ServerStats>) -> Self {
        Self {
            stats,
            propagators: Propagators::default(),
            sampling: Sampling::never(),
            metrics: None,
            access_log: AccessLogConfig::new(),
            exporter: None,
            telemetry: None,
        }
    }

    /// Reads the sampling percentage, span reporting and custom tags of
    /// the mesh's `Telemetry` resources per request (one atomic load);
    /// a percentage set there overrides [`with_sampling`](Self::with_sampling).
    pub(crate) fn with_telemetry(mut self, telemetry: Arc<TelemetryState>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Records a server span for every sampled request into `exporter`
    /// ([`Mesh::server_layer`](crate::Mesh::server_layer) uses the mesh's,
    /// if it has one). Unsampled and untraced requests record nothing.
    pub fn with_span_exporter(mut self, exporter: OtlpExporter) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// Which requests and fields the access log events of this layer
    /// carry ([`AccessLogConfig::new`] unless set: all;
    /// [`Mesh::server_layer`](crate::Mesh::server_layer) uses the mesh's).
    pub fn with_access_log(mut self, config: AccessLogConfig) -> Self {
        self.access_log = config;
        self
    }

    /// Starts a new trace for `sampling`'s share of the requests that
    /// arrive without a valid trace context (Istio's
    /// `randomSamplingPercentage`); [`Sampling::never`] unless set, so an
    /// untraced request costs nothing. A request that carries a trace
    /// context always continues it, with its parent's sampling decision.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
    }

    /// Records Istio's standard metrics (`reporter="destination"`) of
    /// every request into `metrics` ([`Mesh::server_layer`](crate::Mesh::server_layer)
    /// records into the mesh's).
    pub fn with_metrics(mut self, metrics: Arc<IstioMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The trace header formats extracted from inbound requests
    /// ([`Propagators::default`] unless set).
    pub fn with_propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = propagators;
        self
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }
}

impl<S> tower::Layer<S> for MeshServerLayer {
    type Service = MeshServer<S>;

    fn layer(&self, inner: S) -> MeshServer<S> {
        MeshServer {
            inner,
            stats: Arc::clone(&self.stats),
            propagators: self.propagators,
            sampling: self.sampling,
            metrics: self.metrics.clone(),
            access_log: self.access_log,
            exporter: self.exporter.clone(),
            telemetry: self.telemetry.clone(),
        }
    }
}

/// Request ids and per-route counts for inbound requests; see the module
/// docs.
#[derive(Clone, Debug)]
pub struct MeshServer<S> {
    inner: S,
    stats: Arc<ServerStats>,
    propagators: Propagators,
    sampling: Sampling,
    metrics: Option<Arc<IstioMetrics>>,
    access_log: AccessLogConfig,
    exporter: Option<OtlpExporter>,
    telemetry: Option<Arc<TelemetryState>>,
}

impl<S> MeshServer<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn route_key<B>(req: &Request<B>) -> &str {
    route_template(req).unwrap_or(stats::UNMATCHED)
}

/// The route the request matched: the gRPC method path, or axum's
/// `MatchedPath`.
fn route_template<B>(req: &Request<B>) -> Option<&str> {
    // gRPC first: tonic services inside axum match on a wildcard template
    // (`/pkg.Service/{*rest}`), which would hide the method.
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return Some(req.uri().path());
    }
    req.extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str())
}

impl<S, B, ResB> tower::Service<Request<B>> for MeshServer<S>
where
    S: tower::Service<Request<B>, Response = Response<ResB>>,
    B: http_body::Body,
    ResB: http_body::Body,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<
        TaskLocalFuture<
            Option<TraceContext>,
            TaskLocalFuture<Option<tokio::time::Instant>, S::Future>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(&REQUEST_ID) {
            Some(v) if valid_request_id(v) => v.clone(),
            // A missing or unusable id is replaced, never echoed as sent.
            _ => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let counters = self.stats.counters(route_key(&req));
        counters.request();
        let deadline = crate::deadline::inbound(&req);
        let telemetry = self.telemetry.as_ref().map(|t| t.load());
        let policy = telemetry.as_ref().map(|t| &t.server);
        let sampling = policy.and_then(|p| p.sampling).unwrap_or(self.sampling);
        let trace = crate::trace::server_context(req.headers(), self.propagators, sampling, &id);
        let access = crate::access_log::Start::capture(
            &req,
            trace.as_ref().map(|t| t.span.trace_id),
            &self.access_log,
        )
        .map(|a| a.with_route(route_key(&req)));
        // Only a sampled trace with an exporter records a span.
        let report = policy.is_none_or(|p| p.report);
        let (span, otel) = match (&trace, &self.exporter) {
            (Some(t), Some(exporter)) if t.span.sampled && report => {
                let mut span =
                    crate::trace::span::server(exporter, &t.span, &req, route_template(&req));
                if let Some(p) = policy {
                    p.tag(&mut span, req.headers());
                }
                (Some(span), Some(crate::trace::otel::context(&t.span)))
            }
            _ => (None, None),
        };
        drop(telemetry);
        let metrics = (self.metrics.is_some() || access.is_some()).then(|| Inbound {
            peer: self.metrics.as_ref().map_or(metrics::Peer::default(), |m| {
                m.peer(req.extensions().get::<crate::serve::ConnectionSecurity>())
            }),
            metrics: self.metrics.clone(),
            access,
            start: tokio::time::Instant::now(),
            request_bytes: metrics::body_bytes(req.headers(), &req.body().size_hint()),
            protocol: metrics::Protocol::of(req.headers()),
        });
        ResponseFuture {
            inner: crate::trace::scope(
                trace,
                crate::deadline::scope(deadline, self.inner.call(req)),
            ),
            counters,
            id: Some(id),
            metrics,
            span,
            otel,
        }
    }
}

/// The response future of [`MeshServer`].
#[pin_project::pin_project]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    counters: Arc<RouteCounters>,
    id: Option<HeaderValue>,
    metrics: Option<Inbound>,
    span: Option<Box<Recording>>,
    /// The server span as the current OpenTelemetry context while the
    /// handler runs (the `tracing` integration, [`crate::trace::otel`]).
    otel: Option<opentelemetry::Context>,
}

/// What the server records when the response is ready.
struct Inbound {
    metrics: Option<Arc<IstioMetrics>>,
    access: Option<Box<crate::access_log::Start>>,
    start: tokio::time::Instant,
    request_bytes: u64,
    protocol: metrics::Protocol,
    peer: metrics::Peer,
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let result = {
            let _otel = this.otel.as_ref().map(|c| c.clone().attach());
            std::task::ready!(this.inner.poll(cx))
        };
        match &result {
            Ok(res) => this.counters.response(res.status()),
            Err(_) => this.counters.failure(),
        }
        if let Some(mut span) = this.span.take() {
            match &result {
                Ok(res) => span.response(res),
                Err(_) => span.failed(&"connection error"),
            }
            span.end();
        }
        if let Some(m) = this.metrics.take() {
            let (code, grpc_status, flag, response_bytes) = match &result {
                Ok(res) => (
                    res.status().as_u16(),
                    metrics::grpc_status(res.headers()),
                    res.extensions()
                        .get::<metrics::ResponseFlag>()
                        .copied()
                        .unwrap_or(metrics::ResponseFlag::None),
                    metrics::body_bytes(res.headers(), &res.body().size_hint()),
                ),
                // The connection is reset: Envoy logs code 0 with `DC`-like
                // flags; 0 with no flag here.
                Err(_) => (0, None, metrics::ResponseFlag::None, 0),
            };
            let record = metrics::Record {
                reporter: metrics::Reporter::Destination,
                destination: None,
                code,
                grpc_status,
                flag,
                protocol: m.protocol,
                duration: m.start.elapsed(),
                request_bytes: m.request_bytes,
                response_bytes,
                peer: m.peer,
            };
            if let Some(metrics) = &m.metrics {
                metrics.record_inbound(&record);
            }
            if let Some(a) = &m.access {
                a.log(&record, None);
            }
        }
        Poll::Ready(result.map(|mut res| {
            if let Some(id) = this.id.take() {
                res.headers_mut().entry(REQUEST_ID).or_insert(id);
            }
            res
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_ne!(new_request_id(), new_request_id());
    }

    #[tokio::test]
    async fn keeps_valid_ids_replaces_bad_ones_and_counts() {
        let layer = MeshServerLayer::new();
        let mut svc = layer.layer(tower::service_fn(|req: Request<String>| async move {
            let id = req.headers().get(&REQUEST_ID).cloned().unwrap();
            let status = if req.uri().path() == "/fail" {
                500
            } else {
                200
            };
            let mut res = Response::builder()
                .status(status)
                .body(String::new())
                .unwrap();
            res.headers_mut().insert("x-seen-id", id);
            Ok::<_, Infallible>(res)
        }));
        let req = Request::builder()
            .header("x-request-id", "abc-123")
            .body(String::new())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "abc-123");
        assert_eq!(res.headers()["x-seen-id"], "abc-123");

        let req = Request::builder()
            .uri("/fail")
            .header("x-request-id", "<script>")
            .body(String::new())
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a bad id is replaced, not echoed");
        assert_eq!(res.headers()["x-seen-id"], id.as_str());

        let stats = layer.stats().routes();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].route, "unmatched");
        assert_eq!(
            (stats[0].requests, stats[0].success, stats[0].server_errors),
            (2, 1, 1)
        );
    }
}
