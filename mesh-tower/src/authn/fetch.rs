//! Loading a key set document: an HTTPS GET (one HTTP/1.1 request on its
//! own connection, verified against the configured roots with the ring
//! provider), two of them for OpenID discovery (the provider
//! configuration, then its `jwks_uri`), or a local file read.
//!
//! The connection is driven inside the fetch future, so no task outlives
//! it; the body is capped ([`AuthnOptions::with_max_jwks_bytes`]); any
//! status but 200 is a failure.
//!
//! [`AuthnOptions::with_max_jwks_bytes`]: super::AuthnOptions::with_max_jwks_bytes

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where a set document comes from.
pub(crate) enum Fetcher {
    /// `https://` (the URI was validated by the config model); with
    /// `discovery`, the URI is an OpenID Provider Configuration whose
    /// `jwks_uri` is fetched next.
    Https {
        uri: Arc<str>,
        discovery: bool,
        tls: Result<Arc<rustls::ClientConfig>, String>,
        max_bytes: usize,
    },
    /// A local file.
    File { path: PathBuf, max_bytes: usize },
}

impl Fetcher {
    pub(crate) fn https(
        uri: &Arc<str>,
        discovery: bool,
        tls: Result<Arc<rustls::ClientConfig>, String>,
        max_bytes: usize,
    ) -> Self {
        Self::Https {
            uri: Arc::clone(uri),
            discovery,
            tls,
            max_bytes,
        }
    }

    /// The document, or why it could not be loaded (for logs).
    pub(crate) async fn fetch(&self) -> Result<String, String> {
        match self {
            Self::File { path, max_bytes } => read_file(path, *max_bytes),
            Self::Https {
                uri,
                discovery: false,
                tls,
                max_bytes,
            } => get(uri, Arc::clone(tls.as_ref()?), *max_bytes).await,
            Self::Https {
                uri,
                discovery: true,
                tls,
                max_bytes,
            } => {
                let tls = tls.as_ref()?;
                let config = get(uri, Arc::clone(tls), *max_bytes).await?;
                let jwks_uri = jwks_uri(uri, &config)?;
                get(&jwks_uri, Arc::clone(tls), *max_bytes).await
            }
        }
    }
}

/// The `jwks_uri` of an OpenID Provider Configuration fetched from
/// `config_uri`. Its `issuer`, when present, must be the one the URI was
/// made from (OpenID Connect Discovery 1.0 §4.3), and the key set must be
/// `https://` too.
fn jwks_uri(config_uri: &str, body: &str) -> Result<String, String> {
    let doc: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("openid configuration: {e}"))?;
    let issuer = config_uri
        .strip_suffix("/.well-known/openid-configuration")
        .unwrap_or(config_uri);
    if let Some(i) = doc.get("issuer").and_then(|v| v.as_str())
        && i.trim_end_matches('/') != issuer
    {
        return Err(format!(
            "openid configuration names issuer {i:?}, expected {issuer:?}"
        ));
    }
    match doc.get("jwks_uri").and_then(|v| v.as_str()) {
        Some(u) if u.starts_with("https://") => Ok(u.to_owned()),
        Some(u) => Err(format!("openid configuration: jwks_uri {u:?} is not https")),
        None => Err("openid configuration has no jwks_uri".to_owned()),
    }
}

/// Reads a small local file in place: a key set is a few KiB, and reading
/// it without `spawn_blocking` keeps the load deterministic under paused
/// test time.
fn read_file(path: &std::path::Path, max_bytes: usize) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut text = String::new();
    let read = file
        .take(max_bytes as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if read > max_bytes {
        return Err(format!(
            "{} is larger than {max_bytes} bytes",
            path.display()
        ));
    }
    Ok(text)
}

async fn get(
    uri: &str,
    tls: Arc<rustls::ClientConfig>,
    max_bytes: usize,
) -> Result<String, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("invalid uri: {e}"))?;
    let host = parsed.host().ok_or("uri has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = parsed.port_u16().unwrap_or(443);
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|e| format!("invalid server name: {e}"))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, "rust-mesh-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let exchange = async move {
        let res = send
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        if res.status() != StatusCode::OK {
            return Err(format!("status {}", res.status()));
        }
        let body = Limited::new(res.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_owned())
    };
    tokio::select! {
        r = exchange => r,
        r = conn => Err(match r {
            Ok(()) => "connection closed before the response".to_owned(),
            Err(e) => format!("http: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::jwks_uri;

    const CONFIG: &str = "https://idp.example/realm/.well-known/openid-configuration";

    #[test]
    fn discovery_reads_jwks_uri_and_checks_the_issuer() {
        let ok = r#"{"issuer":"https://idp.example/realm","jwks_uri":"https://idp.example/keys"}"#;
        assert_eq!(jwks_uri(CONFIG, ok).unwrap(), "https://idp.example/keys");
        for (body, expect) in [
            (
                r#"{"issuer":"https://evil.example","jwks_uri":"https://idp.example/keys"}"#,
                "expected",
            ),
            (
                r#"{"issuer":"https://idp.example/realm","jwks_uri":"http://idp.example/keys"}"#,
                "not https",
            ),
            (r#"{"issuer":"https://idp.example/realm"}"#, "no jwks_uri"),
            ("nope", "openid configuration"),
        ] {
            let err = jwks_uri(CONFIG, body).unwrap_err();
            assert!(err.contains(expect), "{body}: {err}");
        }
    }
}
