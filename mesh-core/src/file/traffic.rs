//! The traffic-shaping parts of a VirtualService `http` route: `fault`,
//! `rewrite`, `headers`, `mirror`/`mirrors`, `redirect` and
//! `directResponse`, translated into the model's policies.
//!
//! Each function reads one field of an `HTTPRoute`. A field Istio defines
//! that the mesh does not implement (`rewrite.uriRegexRewrite`,
//! `redirect.derivePort`, `fault.abort.http2Error`,
//! `fault.delay.exponentialDelay`) is an error naming it: ignoring it would
//! send traffic somewhere its author did not mean.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::duration;
use super::yaml::{Fields, Obj};
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{
    AbortStatus, DirectResponse, FaultAbort, FaultDelay, FaultPolicy, Fraction, HeaderMutations,
    Redirect, Rewrite,
};

type Problems<'a> = (&'a mut Vec<InvalidConfig>, &'a mut Vec<InvalidConfig>);

fn not_supported(o: &Obj<'_>, keys: &[&str]) -> Result<(), InvalidConfig> {
    for key in keys {
        if o.get(key).is_some() {
            return Err(InvalidConfig::new(o.path.field(key), "not supported"));
        }
    }
    Ok(())
}

/// An Istio `Percent` (`{value: 12.5}`) as a fraction.
pub(crate) fn percent(o: &Obj<'_>, key: &str) -> Result<Option<Fraction>, InvalidConfig> {
    let path = o.path.field(key);
    let Some(v) = o.get(key) else {
        return Ok(None);
    };
    let p = Obj::new(v, &path)?;
    let value = match p.get("value") {
        None => 0.0,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(-1.0),
        Some(_) => {
            return Err(InvalidConfig::new(path.field("value"), "expected a number"));
        }
    };
    if let Some(k) = p.map.keys().find(|k| *k != "value") {
        return Err(InvalidConfig::new(path.field(k), "unknown field"));
    }
    Fraction::from_percent(value).map(Some).ok_or_else(|| {
        InvalidConfig::new(
            path.field("value"),
            format!("{value} is out of range (0 to 100)"),
        )
    })
}

/// The share of a fault: `percentage` or the deprecated integer `percent`.
/// Neither set is 0%: Istio then sends Envoy an unset (zero) percentage
/// (`translateFault` in `pilot/pkg/networking/core/route/route.go`), so
/// the fault applies to no request; a warning says so.
fn fault_fraction(
    o: &Obj<'_>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Fraction, InvalidConfig> {
    if let Some(f) = percent(o, "percentage")? {
        return Ok(f);
    }
    if let Some(p) = o.int("percent", 0, 100)? {
        return Ok(Fraction::from_ppm(p as u32 * 10_000));
    }
    warnings.push(InvalidConfig::new(
        o.path.field("percentage"),
        "not set: as in Istio, the fault applies to no request",
    ));
    Ok(Fraction::NONE)
}

/// gRPC status names as Istio's `grpcStatus` takes them (grpc/grpc
/// `doc/statuscodes.md`).
const GRPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `http[].fault`.
pub(crate) fn fault(
    o: Obj<'_>,
    (errors, warnings): Problems<'_>,
) -> Result<FaultPolicy, InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["delay", "abort"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut policy = FaultPolicy::default();
    let dpath = o.path.field("delay");
    if let Some(d) = o.obj("delay", &dpath)? {
        d.check_fields(
            &Fields {
                supported: &["fixedDelay", "percentage", "percent"],
                unsupported: &[],
                ignored: &["exponentialDelay"],
            },
            errors,
            warnings,
        );
        not_supported(&d, &["exponentialDelay"])?;
        let fixed = d.req_str("fixedDelay")?;
        let delay =
            duration::parse(fixed).map_err(|m| InvalidConfig::new(dpath.field("fixedDelay"), m))?;
        // Istio's validation: "duration must be greater than 1ms".
        if delay < std::time::Duration::from_millis(1) {
            return Err(InvalidConfig::new(
                dpath.field("fixedDelay"),
                "must be at least 1ms",
            ));
        }
        policy.delay = Some(FaultDelay {
            delay,
            fraction: fault_fraction(&d, warnings)?,
        });
    }
    let apath = o.path.field("abort");
    if let Some(a) = o.obj("abort", &apath)? {
        a.check_fields(
            &Fields {
                supported: &["httpStatus", "grpcStatus", "percentage", "percent"],
                unsupported: &[],
                ignored: &["http2Error"],
            },
            errors,
            warnings,
        );
        not_supported(&a, &["http2Error"])?;
        let status = match (a.get("httpStatus"), a.get("grpcStatus")) {
            (Some(_), Some(_)) => {
                return Err(InvalidConfig::new(
                    apath.clone(),
                    "only one of httpStatus and grpcStatus may be set",
                ));
            }
            (Some(_), None) => {
                AbortStatus::Http(a.int("httpStatus", 200, 599)?.unwrap_or(503) as u16)
            }
            (None, Some(_)) => {
                let name = a.req_str("grpcStatus")?;
                let code = GRPC_CODES.iter().position(|c| *c == name).ok_or_else(|| {
                    InvalidConfig::new(
                        apath.field("grpcStatus"),
                        format!(
                            "unknown gRPC status {name:?} (expected a name such as UNAVAILABLE)"
                        ),
                    )
                })?;
                AbortStatus::Grpc(code as i32)
            }
            (None, None) => {
                return Err(InvalidConfig::new(
                    apath,
                    "one of httpStatus and grpcStatus is required",
                ));
            }
        };
        policy.abort = Some(FaultAbort {
            status,
            fraction: fault_fraction(&a, warnings)?,
        });
    }
    Ok(policy)
}

/// `http[].rewrite`.
pub(crate) fn rewrite(
    o: Obj<'_>,
    (errors, warnings): Problems<'_>,
) -> Result<Rewrite, InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["uri", "authority"],
            unsupported: &[],
            ignored: &["uriRegexRewrite"],
        },
        errors,
        warnings,
    );
    not_supported(&o, &["uriRegexRewrite"])?;
    // An empty `uri` rewrites the matched prefix away.
    let uri = uri_path(&o, true)?;
    let authority = authority(&o)?;
    Ok(Rewrite {
        path_prefix: uri.map(Arc::from),
        authority: authority.map(Arc::from),
    })
}

/// The `uri` field of a rewrite or redirect: a path starting with `/`
/// (or empty, where `empty_ok`).
fn uri_path<'v>(o: &Obj<'v>, empty_ok: bool) -> Result<Option<&'v str>, InvalidConfig> {
    let uri = o.str("uri")?;
    if let Some(u) = uri
        && !(u.starts_with('/') || empty_ok && u.is_empty())
    {
        return Err(InvalidConfig::new(
            o.path.field("uri"),
            format!("{u:?} does not start with '/'"),
        ));
    }
    Ok(uri)
}

/// The `authority` field of a rewrite or redirect, checked as a URI
/// authority.
fn authority<'v>(o: &Obj<'v>) -> Result<Option<&'v str>, InvalidConfig> {
    let authority = o.str("authority")?;
    if let Some(a) = authority
        && http::uri::Authority::try_from(a).is_err()
    {
        return Err(InvalidConfig::new(
            o.path.field("authority"),
            format!("invalid authority {a:?}"),
        ));
    }
    Ok(authority)
}

fn header_name(name: &str, path: &FieldPath) -> Result<HeaderName, InvalidConfig> {
    let h = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| InvalidConfig::new(path.clone(), "invalid header name"))?;
    // Pseudo-headers and Host are not headers a route may edit (Istio's
    // validation rejects them too).
    if name.starts_with(':') || h == http::header::HOST {
        return Err(InvalidConfig::new(
            path.clone(),
            format!("header {name:?} cannot be edited; use rewrite.authority"),
        ));
    }
    Ok(h)
}

fn header_pairs(o: &Obj<'_>, key: &str) -> Result<Arc<[(HeaderName, HeaderValue)]>, InvalidConfig> {
    let path = o.path.field(key);
    o.str_map(key)?
        .into_iter()
        .map(|(k, v)| {
            let kpath = path.key(k);
            let name = header_name(k, &kpath)?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| InvalidConfig::new(kpath, "invalid header value"))?;
            Ok((name, value))
        })
        .collect()
}

fn header_operations(
    o: Obj<'_>,
    (errors, warnings): Problems<'_>,
) -> Result<HeaderMutations, InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["set", "add", "remove"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let remove = o
        .str_list("remove")?
        .into_iter()
        .enumerate()
        .map(|(i, k)| header_name(k, &o.path.field("remove").index(i)))
        .collect::<Result<_, _>>()?;
    Ok(HeaderMutations {
        set: header_pairs(&o, "set")?,
        add: header_pairs(&o, "add")?,
        remove,
    })
}

/// `http[].headers` (or `route[].headers`): request and response edits.
pub(crate) fn headers(
    o: Obj<'_>,
    (errors, warnings): Problems<'_>,
) -> Result<(HeaderMutations, HeaderMutations), InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["request", "response"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let rpath = o.path.field("request");
    let request = match o.obj("request", &rpath)? {
        Some(r) => header_operations(r, (errors, warnings))?,
        None => HeaderMutations::default(),
    };
    let spath = o.path.field("response");
    let response = match o.obj("response", &spath)? {
        Some(r) => header_operations(r, (errors, warnings))?,
        None => HeaderMutations::default(),
    };
    Ok((request, response))
}

/// Envoy's redirect codes (`RedirectAction.RedirectResponseCode`).
const REDIRECT_CODES: &[u16] = &[301, 302, 303, 307, 308];

/// `http[].redirect`. `redirectCode` defaults to 301 (istio.io
/// VirtualService reference, `HTTPRedirect.redirectCode`: "On a redirect,
/// overwrite the HTTP status code with this value. Defaults to 301.").
pub(crate) fn redirect(
    o: Obj<'_>,
    (errors, warnings): Problems<'_>,
) -> Result<Redirect, InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["uri", "authority", "port", "scheme", "redirectCode"],
            unsupported: &[],
            ignored: &["derivePort"],
        },
        errors,
        warnings,
    );
    not_supported(&o, &["derivePort"])?;
    let status = o.int("redirectCode", 100, 599)?.unwrap_or(301) as u16;
    if !REDIRECT_CODES.contains(&status) {
        return Err(InvalidConfig::new(
            o.path.field("redirectCode"),
            format!("{status} is not a redirect code (expected 301, 302, 303, 307 or 308)"),
        ));
    }
    let path = uri_path(&o, false)?;
    let scheme = o.str("scheme")?;
    if let Some(s) = scheme
        && !matches!(s, "http" | "https")
    {
        return Err(InvalidConfig::new(
            o.path.field("scheme"),
            format!("unknown scheme {s:?} (expected http or https)"),
        ));
    }
    let authority = authority(&o)?;
    Ok(Redirect {
        scheme: scheme.map(Arc::from),
        authority: authority.map(Arc::from),
        port: o.int("port", 1, 65535)?.map(|p| p as u16),
        path: path.map(Arc::from),
        status,
    })
}

/// `http[].directResponse`: `status` (Istio validates 200 to 599) and an
/// optional `body` given as `string` or base64 `bytes`.
pub(crate) fn direct_response(
    o: Obj<'_>,
    (errors, warnings): Problems<'_>,
) -> Result<DirectResponse, InvalidConfig> {
    o.check_fields(
        &Fields {
            supported: &["status", "body"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let status =
        o.int("status", 200, 599)?
            .ok_or_else(|| InvalidConfig::new(o.path.field("status"), "required"))? as u16;
    let bpath = o.path.field("body");
    let body = match o.obj("body", &bpath)? {
        None => None,
        Some(b) => {
            b.check_fields(
                &Fields {
                    supported: &["string", "bytes"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            match (b.str("string")?, b.str("bytes")?) {
                (Some(s), None) => Some(Arc::from(s.as_bytes())),
                (None, Some(encoded)) => {
                    Some(Arc::from(base64_decode(encoded).ok_or_else(|| {
                        InvalidConfig::new(bpath.field("bytes"), "invalid base64")
                    })?))
                }
                _ => {
                    return Err(InvalidConfig::new(
                        bpath,
                        "exactly one of string and bytes is required",
                    ));
                }
            }
        }
    };
    Ok(DirectResponse { status, body })
}

/// Standard base64 (RFC 4648 section 4), padding optional; `None` when
/// invalid.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$==").is_none());
    }
}
