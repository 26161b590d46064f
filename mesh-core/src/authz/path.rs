//! Request path normalization before authorization.
//!
//! A path rule can only be trusted when the path it matched is the path
//! the application serves. Envoy normalizes `:path` before its RBAC filter
//! and forwards the normalized path, and Istio configures that with
//! `meshConfig.pathNormalization` (istio.io, "Security Best Practices",
//! "Understand path normalization in authorization policy"). This module
//! implements the same options under Istio's names; the authorization
//! layer matches on the result and forwards the result to the application,
//! so both agree (the lesson of CVE-2019-9901, `/info/../private` passing a
//! `/info/*` rule).
//!
//! Whatever the option:
//!
//! - the query (`?...`) is never part of the matched path, and a fragment
//!   (`#...`, which no client should send) is cut off (Istio
//!   CVE-2021-39156, CVE-2020-8595);
//! - the path must start with `/` (or be `*`, `OPTIONS *`).
//!
//! With `BASE` (the default) and `MERGE_SLASHES` a path containing an
//! escaped slash (`%2F`, `%5C`, any case) is **rejected** rather than kept
//! as is (Envoy's `KEEP_UNCHANGED`): a backend that decodes it would serve
//! `/admin` for a path that no `/admin` rule matched (Istio
//! CVE-2021-31920). `DECODE_AND_MERGE_SLASHES` decodes them instead.
//! Malformed percent-escapes (`%zz`, a trailing `%`) are rejected too.

use std::borrow::Cow;
use std::fmt;

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PathNormalization {
    /// `NONE`: the path is matched as received (only the query and a
    /// fragment are cut off). Not recommended: every bypass of the
    /// advisories works.
    None,
    /// `BASE` (Istio's `DEFAULT`): RFC 3986 normalization as Envoy's
    /// `normalize_path`: percent-encoded unreserved characters decoded,
    /// other escapes upper-cased, `\` turned into `/`, and `.` and `..`
    /// segments removed (RFC 3986 §5.2.4, §6.2.2). Escaped slashes are
    /// rejected.
    #[default]
    Base,
    /// `MERGE_SLASHES`: `BASE`, then runs of `/` merged into one (Envoy
    /// `merge_slashes`).
    MergeSlashes,
    /// `DECODE_AND_MERGE_SLASHES`: `%2F` and `%5C` (any case) decoded to
    /// `/` and `\` first (Envoy `UNESCAPE_AND_FORWARD`), then
    /// `MERGE_SLASHES`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// Parses Istio's names: `NONE`, `BASE` or `DEFAULT`, `MERGE_SLASHES`,
    /// `DECODE_AND_MERGE_SLASHES`.
    pub fn from_istio(name: &str) -> Option<Self> {
        Some(match name {
            "NONE" => Self::None,
            "BASE" | "DEFAULT" => Self::Base,
            "MERGE_SLASHES" => Self::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => Self::DecodeAndMergeSlashes,
            _ => return None,
        })
    }

    fn merges(self) -> bool {
        matches!(self, Self::MergeSlashes | Self::DecodeAndMergeSlashes)
    }
}

/// Why a path cannot be authorized: the request is answered 400 (Envoy
/// answers `REJECT_REQUEST` for escaped slashes with 400) and never
/// reaches the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidPath {
    /// `%2F` or `%5C` under an option that does not decode them.
    EscapedSlash,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The path does not start with `/` (and is not `*`).
    NotAbsolute,
}

impl fmt::Display for InvalidPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EscapedSlash => "escaped slash in path",
            Self::BadEscape => "malformed percent-escape in path",
            Self::NotAbsolute => "path does not start with /",
        })
    }
}

impl std::error::Error for InvalidPath {}

/// The path part of a request target (`:path`): everything before the
/// first `?` or `#`.
pub fn path_only(target: &str) -> &str {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    &target[..end]
}

/// Normalizes the request target `target` (a `:path`, query allowed) for
/// matching, as `mode` says (see the [module docs](self)). Borrows when
/// the path is already normal, so the common case allocates nothing.
///
/// ```
/// use mesh_core::authz::{normalize_path, PathNormalization, InvalidPath};
///
/// let n = |p| normalize_path(p, PathNormalization::Base);
/// assert_eq!(n("/a/./b/../c?x=1").unwrap(), "/a/c");
/// assert_eq!(n("/%61dmin#frag").unwrap(), "/admin");
/// assert_eq!(n("/admin%2Fx"), Err(InvalidPath::EscapedSlash));
/// let merge = normalize_path("//admin", PathNormalization::MergeSlashes);
/// assert_eq!(merge.unwrap(), "/admin");
/// ```
pub fn normalize_path(target: &str, mode: PathNormalization) -> Result<Cow<'_, str>, InvalidPath> {
    let path = path_only(target);
    if mode == PathNormalization::None || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(InvalidPath::NotAbsolute);
    }
    let needs_work = path.bytes().any(|b| b == b'%' || b == b'\\')
        || path.split('/').any(|s| s == "." || s == "..")
        || (mode.merges() && path.contains("//"));
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(path, mode)?;
    let mut out = remove_dot_segments(&decoded);
    if mode.merges() {
        out = merge_slashes(&out);
    }
    Ok(Cow::Owned(out))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Percent-decoding of unreserved characters (and of slashes when `mode`
/// decodes them), upper-case hex for the other escapes, `\` to `/`.
fn decode(path: &str, mode: PathNormalization) -> Result<String, InvalidPath> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(InvalidPath::BadEscape);
            };
            let v = hi << 4 | lo;
            if unreserved(v) {
                out.push(char::from(v));
            } else if v == b'/' || v == b'\\' {
                if mode != PathNormalization::DecodeAndMergeSlashes {
                    return Err(InvalidPath::EscapedSlash);
                }
                // A decoded backslash is a slash after canonicalization,
                // as a literal one is.
                out.push('/');
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(hi)]));
                out.push(char::from(HEX[usize::from(lo)]));
            }
            i += 3;
        } else {
            // Whole UTF-8 sequences are copied below; `%` and `\` are
            // ASCII and never inside one.
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'%' || c == b'\\')
                .map_or(bytes.len(), |p| i + p);
            if end == i {
                // A backslash (`\da` normalizes to `/da`, Istio's BASE).
                out.push('/');
                i += 1;
            } else {
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    out.push('/');
    out.push_str(&segments.join("/"));
    if trailing_slash && !segments.is_empty() {
        out.push('/');
    }
    out
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut last_slash = false;
    for c in path.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::*;
    use super::*;

    fn n(p: &str, mode: PathNormalization) -> Result<String, InvalidPath> {
        normalize_path(p, mode).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a/b/", "/a.b/..c/...", "/a//b"] {
            assert!(
                matches!(normalize_path(p, Base), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
        assert!(matches!(
            normalize_path("/a/b?x=/../", MergeSlashes),
            Ok(Cow::Borrowed("/a/b"))
        ));
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        let cases = [
            ("/a/b/c/./../../g", "/a/g"),
            ("/info/../private", "/private"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a//../b", "/a/b"),
        ];
        for (input, want) in cases {
            assert_eq!(n(input, Base).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(n("/%61%64min", Base).as_deref(), Ok("/admin"));
        assert_eq!(n("/a%7e%2D", Base).as_deref(), Ok("/a~-"));
        assert_eq!(n("/a%20b%3f", Base).as_deref(), Ok("/a%20b%3F"));
        assert_eq!(
            n("/%2561", Base).as_deref(),
            Ok("/%2561"),
            "no double decode"
        );
        assert_eq!(n("/a%", Base), Err(InvalidPath::BadEscape));
        assert_eq!(n("/a%4", Base), Err(InvalidPath::BadEscape));
        assert_eq!(n("/a%zz", Base), Err(InvalidPath::BadEscape));
    }

    #[test]
    fn backslashes_become_slashes() {
        assert_eq!(n("\\da", Base), Err(InvalidPath::NotAbsolute));
        assert_eq!(n("/\\da", Base).as_deref(), Ok("//da"));
        assert_eq!(n("/a\\..\\admin", Base).as_deref(), Ok("/admin"));
    }

    #[test]
    fn escaped_slashes_are_rejected_unless_decoding() {
        for mode in [Base, MergeSlashes] {
            for p in ["/admin%2Fx", "/a%2fadmin", "/a%5Cadmin", "/a%5cb"] {
                assert_eq!(n(p, mode), Err(InvalidPath::EscapedSlash), "{p}");
            }
        }
        assert_eq!(
            n("/public%2F..%2Fadmin", DecodeAndMergeSlashes).as_deref(),
            Ok("/admin")
        );
        assert_eq!(
            n("/a%2F%2fb%5Cc", DecodeAndMergeSlashes).as_deref(),
            Ok("/a/b/c")
        );
    }

    #[test]
    fn slashes_merge_only_when_asked() {
        assert_eq!(n("//admin", Base).as_deref(), Ok("//admin"));
        assert_eq!(n("//admin//x", MergeSlashes).as_deref(), Ok("/admin/x"));
        assert_eq!(n("/a//./b", MergeSlashes).as_deref(), Ok("/a/b"));
    }

    #[test]
    fn query_and_fragment_are_cut_and_none_keeps_the_rest() {
        assert_eq!(
            n("/user/profile#section1", Base).as_deref(),
            Ok("/user/profile")
        );
        assert_eq!(n("/a?b#c", Base).as_deref(), Ok("/a"));
        assert_eq!(n("/a/../b%2F?x", None).as_deref(), Ok("/a/../b%2F"));
        assert_eq!(n("*", Base).as_deref(), Ok("*"));
        assert_eq!(n("a/b", Base), Err(InvalidPath::NotAbsolute));
    }

    #[test]
    fn istio_names_parse() {
        assert_eq!(PathNormalization::from_istio("DEFAULT"), Some(Base));
        assert_eq!(
            PathNormalization::from_istio("DECODE_AND_MERGE_SLASHES"),
            Some(DecodeAndMergeSlashes)
        );
        assert_eq!(PathNormalization::from_istio("base"), Option::None);
    }
}
