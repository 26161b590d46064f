//! The channel to a management server: `unix:` paths (Istio's agent serves
//! `unix:///etc/istio/proxy/XDS`), plaintext authorities, and TLS or mTLS
//! from [`ChannelCreds::Tls`] (rustls with the ring provider, through
//! tonic's `tls-ring`).

use std::path::PathBuf;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::config::{ChannelCreds, ServerConfig};

/// Why a channel could not be made.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the channel to the server at index `usize` of the config (the
/// test hook: the conformance suite connects over in-memory pipes).
pub type Connector = std::sync::Arc<
    dyn Fn(usize, &ServerConfig) -> BoxFuture<'static, Result<Channel, ConnectError>> + Send + Sync,
>;

/// The default connector: a real connection to `server.uri`.
pub(crate) fn default_connector() -> Connector {
    std::sync::Arc::new(|_, server: &ServerConfig| {
        let server = server.clone();
        Box::pin(async move { connect(&server).await })
    })
}

async fn connect(server: &ServerConfig) -> Result<Channel, ConnectError> {
    if let Some(path) = server
        .uri
        .strip_prefix("unix://")
        .or_else(|| server.uri.strip_prefix("unix:"))
    {
        let path = PathBuf::from(path);
        // The authority of a Unix-socket channel is not used for routing.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await?;
        return Ok(channel);
    }
    let tls = matches!(server.channel_creds, ChannelCreds::Tls { .. });
    let uri = if server.uri.contains("://") {
        server.uri.clone()
    } else {
        format!("{}://{}", if tls { "https" } else { "http" }, server.uri)
    };
    let mut endpoint =
        Endpoint::from_shared(uri.clone()).map_err(|e| format!("xds server uri {uri:?}: {e}"))?;
    if let ChannelCreds::Tls {
        ca_certificate_file,
        certificate_file,
        private_key_file,
    } = &server.channel_creds
    {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("xds server {uri}: reading {}: {e}", p.display()))
        };
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca_certificate_file)?));
        if let (Some(cert), Some(key)) = (certificate_file, private_key_file) {
            cfg = cfg.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(cfg)
            .map_err(|e| format!("xds server {uri}: TLS: {e}"))?;
    }
    Ok(endpoint.connect().await?)
}
