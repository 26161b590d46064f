//! The connector: TCP to one fixed endpoint address, then TLS when the
//! cluster says so (see `tls`), both within the connect timeout (Envoy's
//! `connect_timeout` also covers the TLS handshake: a connection counts as
//! connected once its transport socket is).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use mesh_core::model::EndpointAddress;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::tls::UpstreamTlsConfig;
use crate::metrics::{SeriesTable, TcpCounters, TcpGuard};

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
    // TLS could not be set up, or its handshake failed (the message names
    // the cluster, the server name and the cause).
    Tls(String),
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
            ConnectErrorKind::Tls(what) => write!(f, "connect to {}: {what}", self.address),
            ConnectErrorKind::Shared(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ConnectErrorKind::Io(e) => Some(e),
            ConnectErrorKind::Handshake(e) => Some(e),
            ConnectErrorKind::Timeout(_)
            | ConnectErrorKind::Shared(_)
            | ConnectErrorKind::Tls(_) => None,
        }
    }
}

/// Dials one endpoint, ignoring the request URI's authority (which names
/// the service, not the endpoint), and secures the connection with the
/// cluster's TLS, if any.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    address: EndpointAddress,
    timeout: Duration,
    tls: Option<Arc<UpstreamTlsConfig>>,
    tcp: Option<Arc<SeriesTable>>,
}

impl Connector {
    pub(crate) fn new(
        address: EndpointAddress,
        timeout: Duration,
        tls: Option<Arc<UpstreamTlsConfig>>,
        tcp: Option<Arc<SeriesTable>>,
    ) -> Self {
        Self {
            address,
            timeout,
            tls,
            tcp,
        }
    }

    /// A failed HTTP/2 handshake on a new connection, as a connect error.
    pub(crate) fn error_from(&self, e: hyper::Error) -> ConnectError {
        ConnectError {
            address: self.address.to_string(),
            kind: ConnectErrorKind::Handshake(e),
        }
    }
}

/// A connection to an endpoint: plaintext or TLS, counted in the
/// cluster's `istio_tcp_connections_opened_total` / `_closed_total` (the
/// guard counts it closed when hyper drops the connection).
#[derive(Debug)]
pub(crate) struct Io {
    kind: IoKind,
    _tcp: Option<TcpGuard<Arc<SeriesTable>>>,
}

/// The transport of an [`Io`].
#[derive(Debug)]
enum IoKind {
    Plain(TokioIo<TcpStream>),
    // Boxed: a TLS stream is over a kilobyte, and this is per connection.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(io) => Pin::new(io).poll_read(cx, buf),
            IoKind::Tls(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(io) => Pin::new(io).poll_write(cx, buf),
            IoKind::Tls(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(io) => Pin::new(io).poll_flush(cx),
            IoKind::Tls(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(io) => Pin::new(io).poll_shutdown(cx),
            IoKind::Tls(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.kind {
            IoKind::Plain(io) => io.is_write_vectored(),
            IoKind::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().kind {
            IoKind::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            IoKind::Tls(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }
}

/// hyper-util's pool learns from this whether ALPN chose `h2`, and then
/// speaks HTTP/2 on the connection (DEPENDENCIES.md, trap 6: without it
/// the client would speak HTTP/1.1 to a server expecting HTTP/2).
impl Connection for Io {
    fn connected(&self) -> Connected {
        match &self.kind {
            IoKind::Plain(io) => io.connected(),
            IoKind::Tls(io) => {
                let (tcp, session) = io.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let address = self.address.clone();
        let timeout = self.timeout;
        let tls = self.tls.clone();
        let tcp = self.tcp.clone();
        // One allocation per new connection, not per request.
        Box::pin(async move {
            let error = |kind| ConnectError {
                address: address.to_string(),
                kind,
            };
            // The TLS config before any byte goes out: a cluster whose TLS
            // is unusable never gets a plaintext connection.
            let config = match &tls {
                Some(t) => Some(
                    t.client_config()
                        .map_err(|e| error(ConnectErrorKind::Tls(e.0)))?,
                ),
                None => None,
            };
            let connect = async {
                let stream = match &address {
                    EndpointAddress::Socket(addr) => TcpStream::connect(addr).await,
                    EndpointAddress::Dns { host, port } => {
                        TcpStream::connect((&**host, *port)).await
                    }
                }
                .map_err(|e| error(ConnectErrorKind::Io(e)))?;
                // Requests are small and latency matters more than packet count.
                let _ = stream.set_nodelay(true);
                let (Some(tls), Some(config)) = (&tls, config) else {
                    return Ok(IoKind::Plain(TokioIo::new(stream)));
                };
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(tls.server_name().clone(), stream)
                    .await
                    .map_err(|e| {
                        error(ConnectErrorKind::Tls(format!(
                            "{tls}: {}",
                            super::tls::describe(&e)
                        )))
                    })?;
                let alpn = stream.get_ref().1.alpn_protocol();
                if !tls.accepts_alpn(alpn) {
                    return Err(error(ConnectErrorKind::Tls(format!(
                        "{tls}: the server chose ALPN {:?}, but the cluster speaks HTTP/2 only",
                        String::from_utf8_lossy(alpn.unwrap_or_default())
                    ))));
                }
                Ok(IoKind::Tls(Box::new(TokioIo::new(stream))))
            };
            let kind = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| error(ConnectErrorKind::Timeout(timeout)))??;
            Ok(Io {
                kind,
                _tcp: tcp.as_ref().map(TcpCounters::open),
            })
        })
    }
}
