//! Redirects and direct responses: routes that answer themselves.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use mesh_core::model::{DirectResponse, Redirect};

/// The `Location` a redirect sends `req` to: each part the redirect sets
/// replaces the request's (Envoy `RedirectAction`: `scheme_redirect`,
/// `host_redirect`, `port_redirect`, `path_redirect`), and the query is
/// kept unless the new path has one.
pub(crate) fn location<B>(r: &Redirect, req: &Request<B>) -> String {
    let uri = req.uri();
    let scheme = r
        .scheme
        .as_deref()
        .unwrap_or_else(|| uri.scheme_str().unwrap_or("http"));
    let authority = r.authority.as_deref().unwrap_or_else(|| {
        uri.authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
            .unwrap_or_default()
    });
    let host = match authority.rsplit_once(':') {
        // A port follows the last ':' unless it is inside an IPv6 literal.
        Some((h, p)) if !p.contains(']') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let mut out = String::with_capacity(64);
    out.push_str(scheme);
    out.push_str("://");
    match r.port {
        Some(port) => {
            out.push_str(host);
            out.push(':');
            out.push_str(&port.to_string());
        }
        None => out.push_str(authority),
    }
    match &r.path {
        Some(p) => {
            out.push_str(p);
            if !p.contains('?')
                && let Some(q) = uri.query()
            {
                out.push('?');
                out.push_str(q);
            }
        }
        None => out.push_str(uri.path_and_query().map_or("/", |pq| pq.as_str())),
    }
    out
}

/// The redirect response for `req`.
pub(crate) fn redirect<B, ResB: From<Bytes>>(r: &Redirect, req: &Request<B>) -> Response<ResB> {
    let mut res = Response::new(ResB::from(Bytes::new()));
    *res.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    match HeaderValue::try_from(location(r, req)) {
        Ok(v) => {
            res.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
    }
    res
}

/// The direct response.
pub(crate) fn direct<ResB: From<Bytes>>(d: &DirectResponse) -> Response<ResB> {
    let body = d
        .body
        .as_ref()
        .map_or_else(Bytes::new, |b| Bytes::copy_from_slice(b));
    let mut res = Response::new(ResB::from(body));
    *res.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
    if d.body.is_some() {
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn r(
        scheme: Option<&str>,
        authority: Option<&str>,
        port: Option<u16>,
        path: Option<&str>,
    ) -> Redirect {
        Redirect {
            scheme: scheme.map(Arc::from),
            authority: authority.map(Arc::from),
            port,
            path: path.map(Arc::from),
            status: 301,
        }
    }

    #[test]
    fn redirects_replace_the_parts_they_set() {
        let req = Request::get("http://reviews:9080/a/b?x=1")
            .body(())
            .unwrap();
        assert_eq!(
            location(&r(None, None, None, Some("/v2")), &req),
            "http://reviews:9080/v2?x=1"
        );
        assert_eq!(
            location(&r(Some("https"), Some("new.example.com"), None, None), &req),
            "https://new.example.com/a/b?x=1"
        );
        assert_eq!(
            location(&r(None, None, Some(8443), Some("/z?q=2")), &req),
            "http://reviews:8443/z?q=2"
        );
        assert_eq!(
            location(&r(None, Some("[::1]:80"), Some(81), None), &req),
            "http://[::1]:81/a/b?x=1"
        );
    }
}
