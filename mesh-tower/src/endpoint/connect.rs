//! The connector: TCP to one fixed endpoint address, with a timeout.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_core::model::EndpointAddress;
use tokio::net::TcpStream;

/// A connection to an endpoint could not be established.
#[derive(Debug)]
pub struct ConnectError {
    address: String,
    kind: ConnectErrorKind,
}

#[derive(Debug)]
enum ConnectErrorKind {
    Io(std::io::Error),
    Timeout(Duration),
    Handshake(hyper::Error),
    // Another request's failed attempt, shared with those that waited.
    Shared(String),
}

impl ConnectError {
    pub(crate) fn shared(message: String) -> Self {
        Self {
            address: String::new(),
            kind: ConnectErrorKind::Shared(message),
        }
    }

    /// Whether the connect timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::Timeout(_))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ConnectErrorKind::Io(e) => write!(f, "connect to {}: {e}", self.address),
            ConnectErrorKind::Timeout(t) => {
                write!(f, "connect to {}: timed out after {t:?}", self.address)
            }
            ConnectErrorKind::Handshake(e) => {
                write!(f, "connect to {}: HTTP/2 handshake: {e}", self.address)
            }
            ConnectErrorKind::Shared(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ConnectErrorKind::Io(e) => Some(e),
            ConnectErrorKind::Handshake(e) => Some(e),
            ConnectErrorKind::Timeout(_) | ConnectErrorKind::Shared(_) => None,
        }
    }
}

/// Dials one endpoint, ignoring the request URI's authority (which names
/// the service, not the endpoint). TLS wraps this connector in the
/// identity work.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    address: EndpointAddress,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(address: EndpointAddress, timeout: Duration) -> Self {
        Self { address, timeout }
    }

    /// A failed HTTP/2 handshake on a new connection, as a connect error.
    pub(crate) fn error_from(&self, e: hyper::Error) -> ConnectError {
        ConnectError {
            address: self.address.to_string(),
            kind: ConnectErrorKind::Handshake(e),
        }
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let address = self.address.clone();
        let timeout = self.timeout;
        // One allocation per new connection, not per request.
        Box::pin(async move {
            let error = |kind| ConnectError {
                address: address.to_string(),
                kind,
            };
            let connect = async {
                match &address {
                    EndpointAddress::Socket(addr) => TcpStream::connect(addr).await,
                    EndpointAddress::Dns { host, port } => {
                        TcpStream::connect((&**host, *port)).await
                    }
                }
            };
            let stream = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| error(ConnectErrorKind::Timeout(timeout)))?
                .map_err(|e| error(ConnectErrorKind::Io(e)))?;
            // Requests are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}
