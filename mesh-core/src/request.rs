//! The parts of a request that routing looks at.

use http::{HeaderMap, Method, Uri};

/// A borrowed view of the request fields that route matching reads.
///
/// Built from an `http::Request` on the request path without copying, or
/// from plain strings by [`check_route`](crate::check_route) callers.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// The authority the request is addressed to (`host` or `host:port`),
    /// which selects the virtual host.
    pub authority: &'a str,
    /// The port the request is addressed to, which selects the client
    /// listener (and so the route table).
    pub port: u16,
    /// The path, without the query string.
    pub path: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RouteRequest<'a> {
    /// A view of `uri`, `method` and `headers`.
    ///
    /// The authority comes from the URI, or from `Host` when the URI has
    /// none (HTTP/1.1 origin-form). The port is the authority's port, or
    /// the scheme's default (80 for `http`, 443 for `https`). Returns
    /// `None` when neither the URI nor `Host` names an authority.
    pub fn from_parts(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Option<Self> {
        let authority = match uri.authority() {
            Some(a) => a.as_str(),
            None => headers.get(http::header::HOST)?.to_str().ok()?,
        };
        let port = authority_port(authority).unwrap_or_else(|| {
            if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            }
        });
        Some(Self {
            method,
            authority,
            port,
            path: uri.path(),
            headers,
        })
    }
}

/// The explicit port of an authority (`host:port`, `[v6]:port`), if any.
pub fn authority_port(authority: &str) -> Option<u16> {
    // Scan the trailing digits: they are a port only when a ':' precedes
    // them ("[::1]" ends in ']', "host" has no ':').
    let bytes = authority.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 5 || digits == bytes.len() || bytes[bytes.len() - digits - 1] != b':'
    {
        return None;
    }
    let mut port: u32 = 0;
    for &b in &bytes[bytes.len() - digits..] {
        port = port * 10 + u32::from(b - b'0');
    }
    u16::try_from(port).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_uri_or_host_header() {
        let uri: Uri = "http://reviews:9080/a?b=c".parse().unwrap();
        let headers = HeaderMap::new();
        let r = RouteRequest::from_parts(&Method::GET, &uri, &headers).unwrap();
        assert_eq!((r.authority, r.port, r.path), ("reviews:9080", 9080, "/a"));

        let uri: Uri = "/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        assert!(RouteRequest::from_parts(&Method::GET, &uri, &headers).is_none());
        headers.insert("host", "ratings".parse().unwrap());
        let r = RouteRequest::from_parts(&Method::GET, &uri, &headers).unwrap();
        assert_eq!((r.authority, r.port), ("ratings", 80));

        let uri: Uri = "https://secure/x".parse().unwrap();
        let r = RouteRequest::from_parts(&Method::GET, &uri, &headers).unwrap();
        assert_eq!(r.port, 443);
    }

    #[test]
    fn ports_of_authorities() {
        assert_eq!(authority_port("a:1"), Some(1));
        assert_eq!(authority_port("a"), None);
        assert_eq!(authority_port("[::1]"), None);
        assert_eq!(authority_port("[::1]:8080"), Some(8080));
        assert_eq!(authority_port("a:notaport"), None);
        assert_eq!(authority_port("a:"), None);
        assert_eq!(authority_port("a:65536"), None);
        assert_eq!(authority_port("a:123456"), None);
        assert_eq!(authority_port("8080"), None, "a bare number is a host");
        assert_eq!(authority_port("[::1]:443"), Some(443));
    }
}
