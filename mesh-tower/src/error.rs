//! The error type of the mesh client.

use std::fmt;
use std::time::Duration;

use http::StatusCode;
use mesh_core::model::EndpointAddress;

/// A boxed error, the error type of the individual layers (as in `tower`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request through the mesh failed.
///
/// Opaque, with predicates for each condition, as hyper's error is. Each
/// condition maps to the HTTP status and gRPC code a proxy would answer
/// with ([`http_status`](Self::http_status), [`grpc_code`](Self::grpc_code)).
/// For a gRPC request the error carries a `tonic::Status` in its source
/// chain, so a tonic client built on [`MeshClient`](crate::MeshClient)
/// reports the right code without any glue.
pub struct Error {
    kind: Kind,
    message: String,
    cause: Option<BoxError>,
    status: Option<Box<tonic::Status>>,
    // The endpoint an attempt failed at, for previous-host avoidance.
    endpoint: Option<EndpointAddress>,
    // The cluster a no-endpoints error is about (to name its xDS state).
    cluster: Option<Box<str>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NoRoute,
    NoEndpoints,
    Timeout,
    Connect,
    Upstream,
    InvalidRequest,
    BudgetExhausted,
    CircuitOpen,
    #[cfg_attr(not(feature = "xds"), allow(dead_code))]
    XdsUnavailable,
}

impl Error {
    pub(crate) fn no_route(message: impl fmt::Display) -> Self {
        Self::new(Kind::NoRoute, format!("no route: {message}"), None)
    }

    pub(crate) fn no_endpoints(cluster: &str) -> Self {
        let mut e = Self::new(
            Kind::NoEndpoints,
            format!("no endpoints in cluster {cluster:?}"),
            None,
        );
        e.cluster = Some(cluster.into());
        e
    }

    /// The config from the xDS control plane does not (yet) let the
    /// request be routed; `message` names the resource, its state and the
    /// node (rule A3.14: `UNAVAILABLE`, never `NOT_FOUND`).
    #[cfg_attr(not(feature = "xds"), allow(dead_code))]
    pub(crate) fn xds_unavailable(message: String) -> Self {
        Self::new(Kind::XdsUnavailable, message, None)
    }

    /// The cluster of a no-endpoints error.
    #[cfg_attr(not(feature = "xds"), allow(dead_code))]
    pub(crate) fn no_endpoints_cluster(&self) -> Option<&str> {
        self.cluster
            .as_deref()
            .filter(|_| self.kind == Kind::NoEndpoints)
    }

    /// A circuit breaker limit of `cluster` is reached (Envoy response
    /// flag `UO`, upstream overflow).
    pub(crate) fn circuit_open(cluster: &str, what: fmt::Arguments<'_>) -> Self {
        Self::new(
            Kind::CircuitOpen,
            format!("circuit open: cluster {cluster:?}: {what}"),
            None,
        )
    }

    pub(crate) fn invalid_request(message: impl fmt::Display) -> Self {
        Self::new(
            Kind::InvalidRequest,
            format!("invalid request: {message}"),
            None,
        )
    }

    /// Retries were wanted but the cluster's retry budget (or its
    /// `http.maxRetries` limit) refused them; `last` says what the last
    /// attempt produced.
    pub(crate) fn budget_exhausted(message: impl fmt::Display, last: impl fmt::Display) -> Self {
        Self::new(
            Kind::BudgetExhausted,
            format!("{message}; last attempt: {last}"),
            None,
        )
    }

    /// Records the endpoint the failed attempt went to.
    pub(crate) fn with_endpoint(mut self, endpoint: EndpointAddress) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// The endpoint the failed attempt went to, when known.
    pub(crate) fn endpoint(&self) -> Option<&EndpointAddress> {
        self.endpoint.as_ref()
    }

    pub(crate) fn from_box(err: BoxError) -> Self {
        match err.downcast::<Error>() {
            Ok(e) => *e,
            Err(err) => match err.downcast::<Elapsed>() {
                Ok(e) => Self::new(Kind::Timeout, e.to_string(), None),
                Err(err) => Self::from_upstream(err),
            },
        }
    }

    pub(crate) fn from_upstream(err: BoxError) -> Self {
        let connect = err
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
            || err.is::<crate::endpoint::ConnectError>();
        // Name the causes: hyper-util's own message is generic. Skip a
        // cause whose text its parent already includes.
        let mut detail = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            let text = s.to_string();
            if !detail.ends_with(&text) {
                detail = format!("{detail}: {text}");
            }
            source = s.source();
        }
        if connect {
            Self::new(Kind::Connect, detail, Some(err))
        } else {
            Self::new(
                Kind::Upstream,
                format!("upstream error: {detail}"),
                Some(err),
            )
        }
    }

    fn new(kind: Kind, message: String, cause: Option<BoxError>) -> Self {
        Self {
            kind,
            message,
            cause,
            status: None,
            endpoint: None,
            cluster: None,
        }
    }

    /// Attaches the gRPC status this error maps to, for tonic to find.
    pub(crate) fn for_grpc(mut self) -> Self {
        self.status = Some(Box::new(tonic::Status::new(
            self.grpc_code(),
            self.message.clone(),
        )));
        self
    }

    /// No route matched the request (Envoy response flag `NR`).
    pub fn is_no_route(&self) -> bool {
        self.kind == Kind::NoRoute
    }

    /// The chosen cluster had no endpoint to send to (Envoy `UH`).
    pub fn is_no_endpoints(&self) -> bool {
        self.kind == Kind::NoEndpoints
    }

    /// The route timeout elapsed before response headers arrived (Envoy
    /// `UT`).
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The connection to the endpoint could not be established (Envoy
    /// `UF`).
    pub fn is_connect(&self) -> bool {
        self.kind == Kind::Connect
    }

    /// The endpoint's connection failed after the request was sent (reset,
    /// protocol error; Envoy `UR`/`UC`).
    pub fn is_upstream(&self) -> bool {
        self.kind == Kind::Upstream
    }

    /// A circuit breaker limit of the cluster was reached and the request
    /// was failed fast without being sent (Envoy `UO`). Never retried.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == Kind::CircuitOpen
    }

    /// The request could not be sent as given (no authority, bad target).
    pub fn is_invalid_request(&self) -> bool {
        self.kind == Kind::InvalidRequest
    }

    /// Retries were needed but the cluster's retry budget was spent or its
    /// `http.maxRetries` concurrent-retry limit was reached (Envoy
    /// `upstream_rq_retry_overflow`); the message names which, and what
    /// the last attempt produced.
    pub fn is_budget_exhausted(&self) -> bool {
        self.kind == Kind::BudgetExhausted
    }

    /// The xDS config does not let the request be routed yet: its
    /// listener was not received, was rejected or does not exist, or its
    /// cluster has no endpoints (feature `xds`). The message names the
    /// resource, its state and the node ID.
    pub fn is_xds_unavailable(&self) -> bool {
        self.kind == Kind::XdsUnavailable
    }

    /// The status a proxy answers with for this error: 404 for no route,
    /// 503 for no endpoints, a failed connect, a spent retry budget or an
    /// open circuit or unavailable xDS config, 504 for a timeout, 502 for
    /// a failed upstream connection, 400 for an invalid request.
    pub fn http_status(&self) -> StatusCode {
        match self.kind {
            Kind::NoRoute => StatusCode::NOT_FOUND,
            Kind::NoEndpoints
            | Kind::Connect
            | Kind::BudgetExhausted
            | Kind::CircuitOpen
            | Kind::XdsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::Upstream => StatusCode::BAD_GATEWAY,
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC code for this error: `DEADLINE_EXCEEDED` for a timeout,
    /// `INTERNAL` for an invalid request, `UNAVAILABLE` otherwise. A missing
    /// route is `UNAVAILABLE` as gRFC A28 specifies, never `NOT_FOUND`
    /// (gRFC A54: the library must not invent codes that look like the
    /// application's).
    pub fn grpc_code(&self) -> tonic::Code {
        match self.kind {
            Kind::Timeout => tonic::Code::DeadlineExceeded,
            Kind::InvalidRequest => tonic::Code::Internal,
            _ => tonic::Code::Unavailable,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(status) = &self.status {
            return Some(&**status);
        }
        self.cause
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Which bound a timeout came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutReason {
    /// The route's `timeout`, over the whole call including retries.
    Route,
    /// The route's `perTryTimeout`, over one attempt.
    PerTry,
    /// The caller's deadline: an outbound `grpc-timeout`, or the deadline
    /// inherited from the inbound request being handled.
    Deadline,
}

impl fmt::Display for TimeoutReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Route => "route timeout",
            Self::PerTry => "per-try timeout",
            Self::Deadline => "deadline",
        })
    }
}

/// A timeout elapsed. Returned (boxed) by [`Timeout`](crate::timeout::Timeout)
/// and by [`Retry`](crate::retry::Retry) for per-try timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elapsed {
    after: Duration,
    reason: TimeoutReason,
}

impl Elapsed {
    pub(crate) fn because(after: Duration, reason: TimeoutReason) -> Self {
        Self { after, reason }
    }

    /// The timeout that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Which bound elapsed.
    pub fn reason(&self) -> TimeoutReason {
        self.reason
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request timed out after {:?} ({})",
            self.after, self.reason
        )
    }
}

impl std::error::Error for Elapsed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_map_to_proxy_statuses_and_grpc_codes() {
        let e = Error::no_route("x");
        assert_eq!(
            (e.http_status(), e.grpc_code()),
            (StatusCode::NOT_FOUND, tonic::Code::Unavailable)
        );
        let e = Error::from_box(Box::new(Elapsed::because(
            Duration::from_millis(50),
            TimeoutReason::Route,
        )));
        assert!(e.is_timeout());
        assert_eq!(
            e.to_string(),
            "request timed out after 50ms (route timeout)"
        );
        assert_eq!(
            (e.http_status(), e.grpc_code()),
            (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded)
        );
        let e = Error::no_endpoints("c");
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        let e = Error::circuit_open("c", format_args!("10 requests in flight"));
        assert!(e.is_circuit_open());
        assert_eq!(
            (e.http_status(), e.grpc_code()),
            (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable)
        );
    }

    #[test]
    fn grpc_errors_carry_a_status_tonic_finds() {
        let e: BoxError = Box::new(Error::no_endpoints("c").for_grpc());
        let status = tonic::Status::from_error(e);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "no endpoints in cluster \"c\"");
    }

    #[test]
    fn boxed_mesh_errors_come_back_unchanged() {
        let e = Error::from_box(Box::new(Error::no_route("nothing matched")));
        assert!(e.is_no_route());
        assert_eq!(e.to_string(), "no route: nothing matched");
    }
}
