//! Recording spans: the server request, the logical client call and each
//! attempt, for sampled traces only.
//!
//! A span is recorded only when its trace is sampled and the mesh has an
//! [`OtlpExporter`]; otherwise none of this runs and nothing is allocated.
//! The span ids are the ones the propagation code already put in the
//! headers ([`SpanContext`]), so what the collector receives links up
//! with what the callees saw.
//!
//! Attributes follow OpenTelemetry's semantic conventions for HTTP spans
//! (`http.request.method`, `http.response.status_code`, `url.path`,
//! `url.full`, `http.route`, `server.address`, `server.port`,
//! `client.address`, `network.protocol.version`,
//! `http.request.resend_count`) and RPC spans (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), with the span
//! kinds SERVER and CLIENT and the status rules of both: a server span is
//! an error for a 5xx (or a gRPC server error code), a client span for a
//! 4xx or 5xx (or any gRPC code but OK) and for a request that got no
//! response. Mesh attributes are under `mesh.*`: `mesh.route`,
//! `mesh.cluster`, `mesh.endpoint`, `mesh.attempt`, `mesh.retries`,
//! `mesh.response_flags`, `mesh.endpoint.ejected`,
//! `mesh.peer.principal` (the caller's verified SPIFFE ID).
//!
//! A span ends when the response head arrives (a gRPC status sent in
//! trailers is not seen, as for the metrics), or when its request is
//! dropped unanswered (status error, `cancelled`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

use http::{HeaderMap, Method, Request, Response, Version};
use opentelemetry::trace::{self as ot, SpanKind, Status};
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::{OtlpExporter, SpanContext};

/// This crate's span context as OpenTelemetry's.
pub(crate) fn otel_context(span: &SpanContext, remote: bool) -> ot::SpanContext {
    ot::SpanContext::new(
        ot::TraceId::from(span.trace_id.get()),
        ot::SpanId::from(span.span_id.get()),
        if span.sampled {
            ot::TraceFlags::SAMPLED
        } else {
            ot::TraceFlags::default()
        },
        remote,
        ot::TraceState::NONE,
    )
}

/// A span being recorded: ended (and queued for export) by
/// [`Recording::end`], or when dropped unanswered.
pub(crate) struct Recording {
    exporter: OtlpExporter,
    data: Option<SpanData>,
    start: tokio::time::Instant,
}

impl Recording {
    fn start(
        exporter: &OtlpExporter,
        span: &SpanContext,
        parent_is_remote: bool,
        kind: SpanKind,
        name: Cow<'static, str>,
        attributes: Vec<KeyValue>,
    ) -> Box<Self> {
        Box::new(Self {
            exporter: exporter.clone(),
            data: Some(SpanData {
                span_context: otel_context(span, false),
                parent_span_id: span
                    .parent_span_id
                    .map_or(ot::SpanId::INVALID, |p| ot::SpanId::from(p.get())),
                parent_span_is_remote: parent_is_remote,
                span_kind: kind,
                name,
                start_time: SystemTime::now(),
                end_time: SystemTime::UNIX_EPOCH,
                attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
                instrumentation_scope: exporter.instrumentation_scope().clone(),
            }),
            start: tokio::time::Instant::now(),
        })
    }

    /// Adds an attribute.
    pub(crate) fn attribute(&mut self, kv: KeyValue) {
        if let Some(d) = &mut self.data {
            d.attributes.push(kv);
        }
    }

    /// Records the response head: the status code, the gRPC status when
    /// it is in the headers, and the span's status by the conventions of
    /// its kind.
    pub(crate) fn response<B>(&mut self, res: &Response<B>) {
        let code = res.status().as_u16();
        self.attribute(KeyValue::new("http.response.status_code", i64::from(code)));
        let server = self
            .data
            .as_ref()
            .is_some_and(|d| d.span_kind == SpanKind::Server);
        let grpc = grpc_status(res.headers());
        if let Some(g) = grpc {
            self.attribute(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
        }
        let http_error = if server { code >= 500 } else { code >= 400 };
        let grpc_error = grpc.is_some_and(|g| {
            if server {
                // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
                // UNAVAILABLE, DATA_LOSS (RPC semantic conventions).
                matches!(g, 2 | 4 | 12 | 13 | 14 | 15)
            } else {
                g != 0
            }
        });
        if http_error || grpc_error {
            self.set_status(Status::error(""));
        }
    }

    /// Records a request that got no response.
    pub(crate) fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.attribute(KeyValue::new("error.type", error_type(error)));
        self.set_status(Status::error(error.to_string()));
    }

    fn set_status(&mut self, status: Status) {
        if let Some(d) = &mut self.data {
            d.status = status;
        }
    }

    /// Ends the span and queues it for export.
    pub(crate) fn end(mut self: Box<Self>) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut d) = self.data.take() {
            d.end_time = d.start_time + self.start.elapsed();
            self.exporter.submit(d);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.data.is_some() {
            self.set_status(Status::error("cancelled"));
            self.attribute(KeyValue::new("error.type", "cancelled"));
            self.finish();
        }
    }
}

/// A short, bounded `error.type` for an error: its first word.
fn error_type(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.split([':', ' ']).next().unwrap_or("error").to_owned()
}

fn grpc_status(h: &HeaderMap) -> Option<u8> {
    std::str::from_utf8(h.get("grpc-status")?.as_bytes())
        .ok()?
        .parse()
        .ok()
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The method as a `&'static str` for the well-known ones (no allocation),
/// `_OTHER` otherwise, as the HTTP conventions ask.
fn method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn protocol_version(v: Version) -> Option<&'static str> {
    Some(match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => return None,
    })
}

/// `rpc.service` and `rpc.method` of a gRPC path `/pkg.Service/Method`.
fn rpc_parts(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// Host and port of a `Host` header (`host`, `host:port`, `[v6]:port`).
fn host_header(h: &HeaderMap) -> Option<(&str, Option<u16>)> {
    let host = h.get(http::header::HOST)?.to_str().ok()?;
    match host.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => Some((h, p.parse().ok())),
        _ => Some((host, None)),
    }
}

fn string(s: &str) -> Value {
    Value::String(StringValue::from(s.to_owned()))
}

/// Semantic-convention attributes of the request and the span's name:
/// `{service}/{method}` for gRPC, `{method} {route}` for an HTTP server
/// span with a route template, `{method}` otherwise.
fn request_attributes<B>(
    req: &Request<B>,
    route: Option<&str>,
    server: bool,
) -> (Cow<'static, str>, Vec<KeyValue>) {
    let mut attrs = Vec::with_capacity(16);
    let m = method(req.method());
    attrs.push(KeyValue::new("http.request.method", m));
    if m == "_OTHER" {
        attrs.push(KeyValue::new(
            "http.request.method_original",
            string(req.method().as_str()),
        ));
    }
    if let Some(v) = protocol_version(req.version()) {
        attrs.push(KeyValue::new("network.protocol.version", v));
    }
    let path = req.uri().path();
    let authority = req
        .uri()
        .authority()
        .map(|a| (a.host(), a.port_u16()))
        .or_else(|| host_header(req.headers()));
    if let Some((host, port)) = authority {
        attrs.push(KeyValue::new("server.address", string(host)));
        if let Some(p) = port {
            attrs.push(KeyValue::new("server.port", i64::from(p)));
        }
    }
    if server {
        attrs.push(KeyValue::new("url.path", string(path)));
        if let Some(q) = req.uri().query() {
            attrs.push(KeyValue::new("url.query", string(q)));
        }
        if let Some(r) = route {
            attrs.push(KeyValue::new("http.route", string(r)));
        }
    } else {
        attrs.push(KeyValue::new("url.full", string(&req.uri().to_string())));
    }
    let grpc = is_grpc(req.headers());
    let name: Cow<'static, str> = match rpc_parts(path).filter(|_| grpc) {
        Some((service, method)) => {
            attrs.push(KeyValue::new("rpc.system", "grpc"));
            attrs.push(KeyValue::new("rpc.service", string(service)));
            attrs.push(KeyValue::new("rpc.method", string(method)));
            Cow::Owned(format!("{service}/{method}"))
        }
        None => match route.filter(|_| server) {
            Some(r) => Cow::Owned(format!("{m} {r}")),
            None => Cow::Borrowed(m),
        },
    };
    (name, attrs)
}

/// Starts the server span of an inbound request whose context `span` is
/// sampled (its parent, if any, is the caller's attempt: remote).
pub(crate) fn server<B>(
    exporter: &OtlpExporter,
    span: &SpanContext,
    req: &Request<B>,
    route: Option<&str>,
) -> Box<Recording> {
    let (name, mut attrs) = request_attributes(req, route, true);
    if let Some(sec) = req.extensions().get::<crate::serve::ConnectionSecurity>() {
        attrs.push(KeyValue::new(
            "client.address",
            string(&sec.remote_addr().ip().to_string()),
        ));
        if let Some(peer) = sec.peer() {
            attrs.push(KeyValue::new("mesh.peer.principal", string(peer.as_str())));
        }
    }
    Recording::start(
        exporter,
        span,
        span.parent_span_id.is_some(),
        SpanKind::Server,
        name,
        attrs,
    )
}

/// The logical call of a [`MeshClient`](crate::MeshClient): its span and
/// its attempt count, which the attempts below it find through
/// [`in_call`] (retries rebuild their requests, so a request extension
/// would not reach them).
pub(crate) struct Call {
    exporter: OtlpExporter,
    attempts: AtomicU32,
}

impl Call {
    /// How many attempts were made.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }
}

/// Starts the span of a logical call whose context `span` is sampled.
pub(crate) fn client<B>(
    exporter: &OtlpExporter,
    span: &SpanContext,
    req: &Request<B>,
) -> (Box<Recording>, Arc<Call>) {
    let (name, attrs) = request_attributes(req, None, false);
    let recording = Recording::start(exporter, span, false, SpanKind::Client, name, attrs);
    let call = Arc::new(Call {
        exporter: exporter.clone(),
        attempts: AtomicU32::new(0),
    });
    (recording, call)
}

thread_local! {
    static CALL: RefCell<Option<Arc<Call>>> = const { RefCell::new(None) };
}

/// Runs `f` with `call` as the logical call attempts record against (the
/// client's response future wraps its `call` and every `poll` in this,
/// so the balancer below finds it whichever retry or hedge asks).
pub(crate) fn in_call<R>(call: Option<&Arc<Call>>, f: impl FnOnce() -> R) -> R {
    let Some(call) = call else { return f() };
    struct Restore(Option<Arc<Call>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            let _ = CALL.try_with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CALL
        .try_with(|c| c.replace(Some(Arc::clone(call))))
        .ok()
        .flatten();
    let _restore = Restore(prev);
    f()
}

/// Starts the span of one attempt (`span`, from
/// [`attempt`](super::attempt)) of the current logical call, if that call
/// is recorded.
pub(crate) fn attempt<B>(
    span: &SpanContext,
    req: &Request<B>,
    route: Option<&str>,
    cluster: &str,
    endpoint: &crate::endpoint::EndpointState,
) -> Option<Box<Recording>> {
    if !span.sampled {
        return None;
    }
    let call = CALL.try_with(|c| c.borrow().clone()).ok().flatten()?;
    let n = call.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let (name, mut attrs) = request_attributes(req, None, false);
    attrs.retain(|kv| kv.key.as_str() != "server.address" && kv.key.as_str() != "server.port");
    let address = endpoint.address();
    if let mesh_core::model::EndpointAddress::Socket(s) = address {
        attrs.push(KeyValue::new("server.address", string(&s.ip().to_string())));
        attrs.push(KeyValue::new("server.port", i64::from(s.port())));
    }
    attrs.push(KeyValue::new("mesh.endpoint", string(&address.to_string())));
    attrs.push(KeyValue::new("mesh.cluster", string(cluster)));
    if let Some(r) = route {
        attrs.push(KeyValue::new("mesh.route", string(r)));
    }
    attrs.push(KeyValue::new("mesh.attempt", i64::from(n)));
    if n > 1 {
        attrs.push(KeyValue::new("http.request.resend_count", i64::from(n - 1)));
    }
    if endpoint.outlier().is_ejected() {
        // Picked although ejected: the cluster is in panic.
        attrs.push(KeyValue::new("mesh.endpoint.ejected", true));
    }
    Some(Recording::start(
        &call.exporter,
        span,
        false,
        SpanKind::Client,
        name,
        attrs,
    ))
}

/// Attributes the call span gets when it ends.
pub(crate) fn end_call(
    mut recording: Box<Recording>,
    call: &Call,
    cluster: Option<&str>,
    flag: &str,
) {
    let attempts = call.attempts();
    recording.attribute(KeyValue::new("mesh.attempts", i64::from(attempts)));
    recording.attribute(KeyValue::new(
        "mesh.retries",
        i64::from(attempts.saturating_sub(1)),
    ));
    if let Some(c) = cluster {
        recording.attribute(KeyValue::new("mesh.cluster", string(c)));
    }
    if !flag.is_empty() && flag != "-" {
        recording.attribute(KeyValue::new("mesh.response_flags", string(flag)));
    }
    recording.end();
}
