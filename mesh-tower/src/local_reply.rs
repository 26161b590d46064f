//! Local replies: responses the mesh answers itself, without a backend
//! (Envoy's `sendLocalReply`): injected aborts, rate-limited requests,
//! redirects and direct responses.
//!
//! A gRPC request gets a gRPC answer: HTTP 200 with `grpc-status` (and
//! `grpc-message`) in the only HEADERS frame, the "Trailers-Only" form of
//! the gRPC over HTTP/2 protocol (grpc/grpc `doc/PROTOCOL-HTTP2.md`),
//! which is also what Envoy answers gRPC callers with.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

/// Whether a request is gRPC (`content-type: application/grpc*`).
pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An HTTP reply with a static text body.
pub(crate) fn http<B: From<Bytes>>(status: StatusCode, body: &'static str) -> Response<B> {
    let mut res = Response::new(B::from(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    if !body.is_empty() {
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    res
}

/// A gRPC Trailers-Only reply with `code` and `message`.
pub(crate) fn grpc<B: From<Bytes>>(code: i32, message: &'static str) -> Response<B> {
    let mut res = Response::new(B::from(Bytes::new()));
    grpc_headers(&mut res, code, message);
    res
}

/// Makes `res` a gRPC Trailers-Only reply with `code` and `message`.
pub(crate) fn grpc_headers<B>(res: &mut Response<B>, code: i32, message: &'static str) {
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        h.insert("grpc-message", HeaderValue::from_static(message));
    }
}

/// The gRPC code for an HTTP status a proxy answers a gRPC caller with
/// (grpc/grpc `doc/http-grpc-status-mapping.md`, as Envoy's
/// `Grpc::Utility::httpToGrpcStatus` applies it): 400 `INTERNAL`, 401
/// `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 404 `UNIMPLEMENTED`, 429,
/// 502, 503 and 504 `UNAVAILABLE`, anything else `UNKNOWN`.
pub(crate) fn grpc_code_for_http(status: u16) -> i32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes_as_grpc_documents() {
        let codes: Vec<i32> = [400, 401, 403, 404, 429, 502, 503, 504, 500, 418]
            .into_iter()
            .map(grpc_code_for_http)
            .collect();
        assert_eq!(codes, [13, 16, 7, 12, 14, 14, 14, 14, 2, 2]);
    }

    #[test]
    fn grpc_replies_are_trailers_only() {
        let res: Response<crate::ResponseBody> = grpc(8, "local_rate_limited");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "8");
        assert_eq!(res.headers()["grpc-message"], "local_rate_limited");
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert!(http_body::Body::is_end_stream(res.body()));
    }
}
