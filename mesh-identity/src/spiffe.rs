//! SPIFFE IDs (spiffe/spiffe `standards/SPIFFE-ID.md`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A SPIFFE ID: `spiffe://<trust domain><path>`.
///
/// Parsing follows the specification's rules (reference checklist B.1):
/// the scheme compares case-insensitively; the trust domain is lowercase
/// letters, digits, `.`, `-` and `_`, at most 255 bytes, with no port,
/// userinfo or percent-encoding; the path is `/`-separated segments of
/// letters, digits, `.`, `-` and `_`, with no empty, `.` or `..` segment
/// and no trailing `/`; there is no query or fragment; the whole ID is at
/// most 2048 bytes. The stored form has the scheme lowercased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Arc<str>,
    // Byte offset where the path starts (= id.len() when there is none).
    path_start: usize,
}

/// A string that is not a valid SPIFFE ID, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpiffeId {
    reason: &'static str,
}

impl InvalidSpiffeId {
    /// Why the ID is invalid.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

impl fmt::Display for InvalidSpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid SPIFFE ID: {}", self.reason)
    }
}

impl std::error::Error for InvalidSpiffeId {}

const MAX_ID: usize = 2048;
const MAX_TRUST_DOMAIN: usize = 255;
const SCHEME: &str = "spiffe://";

fn bad(reason: &'static str) -> InvalidSpiffeId {
    InvalidSpiffeId { reason }
}

fn segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl SpiffeId {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, InvalidSpiffeId> {
        if s.len() > MAX_ID {
            return Err(bad("longer than 2048 bytes"));
        }
        // Compare bytes, not a `str` slice: a multi-byte character across
        // byte 9 must be an error, not a panic on a char boundary.
        if s.len() < SCHEME.len()
            || !s.as_bytes()[..SCHEME.len()].eq_ignore_ascii_case(SCHEME.as_bytes())
        {
            return Err(bad("the scheme must be spiffe://"));
        }
        let rest = &s[SCHEME.len()..];
        if rest.contains('?') {
            return Err(bad("a query is not allowed"));
        }
        if rest.contains('#') {
            return Err(bad("a fragment is not allowed"));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(bad("the trust domain is empty"));
        }
        if td.len() > MAX_TRUST_DOMAIN {
            return Err(bad("the trust domain is longer than 255 bytes"));
        }
        if td.contains('@') {
            return Err(bad("userinfo is not allowed"));
        }
        if td.contains(':') {
            return Err(bad("a port is not allowed"));
        }
        if td.contains('%') {
            return Err(bad("percent-encoding is not allowed"));
        }
        if !td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) {
            return Err(bad(
                "the trust domain may only hold lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(bad("the path must not end with '/'"));
            }
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(bad("the path has an empty segment")),
                    "." | ".." => return Err(bad("the path has a '.' or '..' segment")),
                    s if s.contains('%') => return Err(bad("percent-encoding is not allowed")),
                    s if !s.bytes().all(segment_char) => {
                        return Err(bad(
                            "path segments may only hold letters, digits, '.', '-' and '_'",
                        ));
                    }
                    _ => {}
                }
            }
        }
        let id = format!("{SCHEME}{td}{path}");
        Ok(Self {
            path_start: SCHEME.len() + td.len(),
            id: id.into(),
        })
    }

    /// Istio's identity of a service account:
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn istio(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// Whether the ID names a workload: it has a path (X.509-SVID §4: an
    /// ID without a path names a trust domain, not a workload).
    pub fn is_workload(&self) -> bool {
        !self.path().is_empty()
    }

    /// The namespace and service account of an Istio-form ID.
    pub fn istio_namespace_and_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;

    fn from_str(s: &str) -> Result<Self, InvalidSpiffeId> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.id, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted IDs, after grpc-java's `SpiffeUtilTest` and the spec.
    #[test]
    fn accepts_valid_ids() {
        for (input, td, path) in [
            (
                "spiffe://trustdomain/abc0123.-_",
                "trustdomain",
                "/abc0123.-_",
            ),
            (
                "SPIFFE://example.com/Czech.Republic/Prague",
                "example.com",
                "/Czech.Republic/Prague",
            ),
            ("spiffe://example.com/.a..", "example.com", "/.a.."),
            ("spiffe://example.com/...", "example.com", "/..."),
            (
                "spiffe://trust_domain-1.example/p",
                "trust_domain-1.example",
                "/p",
            ),
            ("spiffe://trustdomain", "trustdomain", ""),
        ] {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!((id.trust_domain(), id.path()), (td, path), "{input}");
        }
        assert_eq!(
            SpiffeId::parse("SPIFFE://example.com/x").unwrap().as_str(),
            "spiffe://example.com/x",
            "the scheme is normalized"
        );
    }

    /// Rejected IDs, after grpc-java's `SpiffeUtilTest` and the spec.
    #[test]
    fn rejects_invalid_ids_with_the_reason() {
        for (input, reason) in [
            ("spiffe:///", "the trust domain is empty"),
            ("spiffe:////", "the trust domain is empty"),
            (
                "spiffe://example!com",
                "the trust domain may only hold lowercase letters, digits, '.', '-' and '_'",
            ),
            (
                "spiffe://ex\u{2603}mple.com",
                "the trust domain may only hold lowercase letters, digits, '.', '-' and '_'",
            ),
            (
                "spiffe://eXample.com",
                "the trust domain may only hold lowercase letters, digits, '.', '-' and '_'",
            ),
            (
                "spiffe://trust%20domain/path",
                "percent-encoding is not allowed",
            ),
            (
                "spiffe://trustdomain/pa%20th",
                "percent-encoding is not allowed",
            ),
            ("spiffe://user@trustdomain/path", "userinfo is not allowed"),
            ("spiffe://trustdomain:8080/path", "a port is not allowed"),
            (
                "spiffe://trust.domain/../path",
                "the path has a '.' or '..' segment",
            ),
            (
                "spiffe://trust.domain/./path",
                "the path has a '.' or '..' segment",
            ),
            (
                "spiffe://trustdomain//path",
                "the path has an empty segment",
            ),
            ("spiffe://trustdomain/", "the path must not end with '/'"),
            (
                "spiffe://trustdomain/path/",
                "the path must not end with '/'",
            ),
            ("spiffe://trustdomain/path?query", "a query is not allowed"),
            (
                "spiffe://trustdomain/path#fragment",
                "a fragment is not allowed",
            ),
            (
                "spiffe://trustdomain/p\u{e4}th",
                "path segments may only hold letters, digits, '.', '-' and '_'",
            ),
            ("https://trustdomain/path", "the scheme must be spiffe://"),
            ("spiffe:/trustdomain", "the scheme must be spiffe://"),
            ("", "the scheme must be spiffe://"),
            ("spiffe:/\u{e4}trustdomain", "the scheme must be spiffe://"),
            ("spiffe:", "the scheme must be spiffe://"),
            ("spiffe://", "the trust domain is empty"),
            ("spiffe://?q", "a query is not allowed"),
            ("spiffe://td#f", "a fragment is not allowed"),
            (
                "spiffe://trustdomain/pa th",
                "path segments may only hold letters, digits, '.', '-' and '_'",
            ),
        ] {
            assert_eq!(
                SpiffeId::parse(input).unwrap_err().reason(),
                reason,
                "{input}"
            );
        }
    }

    #[test]
    fn enforces_length_limits() {
        let td = "a".repeat(256);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{td}/p"))
                .unwrap_err()
                .reason(),
            "the trust domain is longer than 255 bytes"
        );
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(
            SpiffeId::parse(&long).unwrap_err().reason(),
            "longer than 2048 bytes"
        );
        let max = format!("spiffe://td/{}", "a".repeat(2048 - "spiffe://td/".len()));
        assert!(
            SpiffeId::parse(&max).is_ok(),
            "exactly 2048 bytes is allowed"
        );
    }

    #[test]
    fn istio_identities() {
        let id = SpiffeId::istio("cluster.local", "default", "bookinfo-reviews").unwrap();
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        );
        assert_eq!(
            id.istio_namespace_and_account(),
            Some(("default", "bookinfo-reviews"))
        );
        assert!(id.is_workload());
        let other = SpiffeId::parse("spiffe://cluster.local/workload/x").unwrap();
        assert_eq!(other.istio_namespace_and_account(), None);
        assert!(
            !SpiffeId::parse("spiffe://cluster.local")
                .unwrap()
                .is_workload()
        );
    }
}
