//! Client targets.

use std::fmt;
use std::str::FromStr;

use http::Request;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};

use crate::error::Error;

/// What a client sends to: an authority or an xDS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    port: u16,
    listener: Option<Box<str>>,
}

/// A target string that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidTarget(String);

impl fmt::Display for InvalidTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidTarget {}

impl FromStr for Target {
    type Err = InvalidTarget;

    /// Parses `http://host[:port]`, `https://host[:port]` or
    /// `xds:///<listener>`. For an xDS target the listener name is also the
    /// authority the virtual host is matched against, as in gRPC
    /// (`xds:///reviews.default.svc.cluster.local:9080`).
    fn from_str(s: &str) -> Result<Self, InvalidTarget> {
        let bad = |why: &str| InvalidTarget(format!("invalid target {s:?}: {why}"));
        if let Some(name) = s.strip_prefix("xds:///") {
            if name.is_empty() {
                return Err(bad("no listener name"));
            }
            let authority: Authority = name
                .parse()
                .map_err(|_| bad("the listener name is not a valid authority"))?;
            let port = mesh_core::authority_port(name).unwrap_or(80);
            return Ok(Self {
                scheme: Scheme::HTTP,
                authority,
                port,
                listener: Some(name.into()),
            });
        }
        let uri: Uri = s.parse().map_err(|_| bad("not a URI"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("expected http://, https:// or xds:///"))?;
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("expected http://, https:// or xds:///")),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("no authority"))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("a target has no path"));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        Ok(Self {
            scheme,
            authority,
            port,
            listener: None,
        })
    }
}

impl Target {
    pub(crate) fn authority_and_port(&self) -> (&str, u16) {
        (self.authority.as_str(), self.port)
    }

    pub(crate) fn listener(&self) -> Option<&str> {
        self.listener.as_deref()
    }

    /// Points the request's URI at this target.
    pub(crate) fn apply<B>(&self, req: &mut Request<B>) -> Result<(), Error> {
        let uri = req.uri();
        if uri.scheme() == Some(&self.scheme) && uri.authority() == Some(&self.authority) {
            return Ok(());
        }
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(Error::invalid_request)?;
        Ok(())
    }
}

/// Makes an origin-form request absolute from its `Host` header, since the
/// connection pool is keyed by scheme and authority.
pub(crate) fn ensure_absolute<B>(req: &mut Request<B>) -> Result<(), Error> {
    if req.uri().authority().is_some() {
        if req.uri().scheme().is_none() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTP);
            *req.uri_mut() = Uri::from_parts(parts).map_err(Error::invalid_request)?;
        }
        return Ok(());
    }
    let host = req.headers().get(http::header::HOST).ok_or_else(|| {
        Error::invalid_request("the request names no authority (no URI authority, no Host header)")
    })?;
    let authority = Authority::try_from(host.as_bytes())
        .map_err(|_| Error::invalid_request("invalid Host header"))?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(Error::invalid_request)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: Target = "http://reviews:9080".parse().unwrap();
        assert_eq!(t.authority_and_port(), ("reviews:9080", 9080));
        let t: Target = "http://reviews".parse().unwrap();
        assert_eq!(t.authority_and_port(), ("reviews", 80));
        let t: Target = "xds:///ratings.default.svc.cluster.local:50051"
            .parse()
            .unwrap();
        assert_eq!(
            t.listener(),
            Some("ratings.default.svc.cluster.local:50051")
        );
        assert_eq!(t.authority_and_port().1, 50051);
        assert_eq!(
            "ftp://x".parse::<Target>().unwrap_err().to_string(),
            "invalid target \"ftp://x\": expected http://, https:// or xds:///"
        );
        assert!("http://x/path".parse::<Target>().is_err());
        assert!("xds:///".parse::<Target>().is_err());
    }

    #[test]
    fn targets_rewrite_origin_form_uris() {
        let t: Target = "http://ratings:50051".parse().unwrap();
        let mut req = Request::new(());
        *req.uri_mut() = "/ratings.Ratings/Get".parse().unwrap();
        t.apply(&mut req).unwrap();
        assert_eq!(req.uri(), "http://ratings:50051/ratings.Ratings/Get");
    }

    #[test]
    fn host_headers_make_requests_absolute() {
        let mut req = Request::builder()
            .uri("/x?y=1")
            .header("host", "reviews:9080")
            .body(())
            .unwrap();
        ensure_absolute(&mut req).unwrap();
        assert_eq!(req.uri(), "http://reviews:9080/x?y=1");
        let mut req = Request::builder().uri("/x").body(()).unwrap();
        assert!(ensure_absolute(&mut req).unwrap_err().is_invalid_request());
    }
}
