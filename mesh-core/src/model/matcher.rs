//! String, path and header matchers, with Envoy's semantics.
//!
//! These are the matchers of Envoy's `RouteMatch`
//! (`envoy.config.route.v3.RouteMatch`, `HeaderMatcher`, `StringMatcher`)
//! and therefore also of Istio's `HTTPMatchRequest`, which istiod translates
//! into them. Regular expressions use RE2 syntax and must match the *whole*
//! value, as Envoy's `safe_regex` does.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;

use crate::error::{FieldPath, InvalidConfig};

/// A compiled regular expression that matches whole values only.
///
/// Compares equal to another `Regex` with the same source pattern and case
/// handling, so config containing regexes stays `PartialEq`.
#[derive(Clone)]
pub struct Regex {
    pattern: Arc<str>,
    ignore_case: bool,
    compiled: regex::Regex,
}

impl Regex {
    /// Compiles `pattern` (RE2 syntax) anchored at both ends.
    ///
    /// The compiled program is bounded in size, as Envoy bounds
    /// `safe_regex` program size, so a hostile config cannot make matching
    /// expensive.
    pub fn try_new(pattern: &str, ignore_case: bool) -> Result<Self, InvalidConfig> {
        let compiled = regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .case_insensitive(ignore_case)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                InvalidConfig::new(
                    FieldPath::root(),
                    format!("invalid regex {pattern:?}: {}", first_line(&e.to_string())),
                )
            })?;
        Ok(Self {
            pattern: pattern.into(),
            ignore_case,
            compiled,
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }
}

fn first_line(s: &str) -> &str {
    // regex errors are multi-line with a caret diagram; the last line names
    // the problem.
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.ignore_case == other.ignore_case
    }
}

impl Eq for Regex {}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", &*self.pattern)
    }
}

/// How a string value is matched (Envoy `StringMatcher`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringMatch {
    /// The whole value equals this string.
    Exact(Arc<str>),
    /// The value starts with this string.
    Prefix(Arc<str>),
    /// The value ends with this string.
    Suffix(Arc<str>),
    /// The value contains this string.
    Contains(Arc<str>),
    /// The whole value matches this regular expression.
    Regex(Regex),
}

impl StringMatch {
    /// Whether `value` matches; `ignore_case` applies to the literal forms
    /// (a regex carries its own case flag).
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Self::Exact(s) => {
                if ignore_case {
                    value.eq_ignore_ascii_case(s)
                } else {
                    value == &**s
                }
            }
            Self::Prefix(s) => starts_with(value, s, ignore_case),
            Self::Suffix(s) => {
                value.len() >= s.len() && {
                    let tail = &value.as_bytes()[value.len() - s.len()..];
                    if ignore_case {
                        tail.eq_ignore_ascii_case(s.as_bytes())
                    } else {
                        tail == s.as_bytes()
                    }
                }
            }
            Self::Contains(s) => {
                if ignore_case {
                    let needle = s.as_bytes();
                    value
                        .as_bytes()
                        .windows(needle.len().max(1))
                        .any(|w| w.eq_ignore_ascii_case(needle))
                        || needle.is_empty()
                } else {
                    value.contains(&**s)
                }
            }
            Self::Regex(r) => r.is_match(value),
        }
    }
}

fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    value.len() >= prefix.len() && {
        let head = &value.as_bytes()[..prefix.len()];
        if ignore_case {
            head.eq_ignore_ascii_case(prefix.as_bytes())
        } else {
            head == prefix.as_bytes()
        }
    }
}

/// How the request path (without the query string) is matched.
///
/// Istio's `uri.prefix` is a plain string prefix, as in Envoy: `/api`
/// matches `/api`, `/api/v1` and also `/apis`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// The path equals this string.
    Exact(Arc<str>),
    /// The path starts with this string.
    Prefix(Arc<str>),
    /// The whole path matches this regex.
    Regex(Regex),
}

impl PathMatch {
    /// Whether `path` matches. `ignore_case` is Istio's `ignoreUriCase`
    /// (Envoy `case_sensitive: false`); a regex carries its own flag.
    pub fn matches(&self, path: &str, ignore_case: bool) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(s) => {
                if ignore_case {
                    path.eq_ignore_ascii_case(s)
                } else {
                    path == &**s
                }
            }
            Self::Prefix(s) => starts_with(path, s, ignore_case),
            Self::Regex(r) => r.is_match(path),
        }
    }
}

/// What a header matcher checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderRule {
    /// `true`: the header is present, with any value. `false`: it is
    /// absent (Envoy `present_match: false`).
    Present(bool),
    /// The header is present and its value matches.
    Value(StringMatch),
}

/// A condition on one request header (Envoy `HeaderMatcher`).
///
/// When a header appears several times, its values are joined with `,`
/// before matching, as Envoy does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The header name (lowercase, as HTTP/2 requires).
    pub name: HeaderName,
    /// What is checked.
    pub rule: HeaderRule,
    /// Inverts the result (Istio `withoutHeaders`).
    pub invert: bool,
}

impl HeaderMatch {
    /// Whether the header map satisfies this condition.
    pub fn matches(&self, headers: &http::HeaderMap) -> bool {
        let result = match &self.rule {
            HeaderRule::Present(want) => headers.contains_key(&self.name) == *want,
            HeaderRule::Value(m) => {
                let mut values = headers.get_all(&self.name).iter();
                match (values.next(), values.next()) {
                    (None, _) => false,
                    (Some(v), None) => std::str::from_utf8(v.as_bytes())
                        .map(|v| m.matches(v, false))
                        .unwrap_or(false),
                    (Some(_), Some(_)) => {
                        // Rare: repeated header. Join as Envoy does; this is
                        // the only allocation in matching.
                        let joined = headers
                            .get_all(&self.name)
                            .iter()
                            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
                            .collect::<Vec<_>>()
                            .join(",");
                        m.matches(&joined, false)
                    }
                }
            }
        };
        result != self.invert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_matches_whole_value_only() {
        let r = Regex::try_new("/api/v[0-9]+", false).unwrap();
        assert!(r.is_match("/api/v12"));
        assert!(!r.is_match("/api/v12/users"));
        assert!(!r.is_match("x/api/v1"));
        let alternation = Regex::try_new("a|b", false).unwrap();
        assert!(!alternation.is_match("ab"), "anchoring covers alternations");
    }

    #[test]
    fn invalid_regex_names_the_pattern() {
        let err = Regex::try_new("a(b", false).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid regex \"a(b\": "),
            "{err}"
        );
    }

    #[test]
    fn string_match_forms() {
        let exact = StringMatch::Exact("Foo".into());
        assert!(exact.matches("Foo", false));
        assert!(!exact.matches("foo", false));
        assert!(exact.matches("foo", true));
        assert!(StringMatch::Prefix("ab".into()).matches("abc", false));
        assert!(!StringMatch::Prefix("abcd".into()).matches("abc", false));
        assert!(StringMatch::Suffix("bc".into()).matches("abc", false));
        assert!(StringMatch::Suffix("BC".into()).matches("abc", true));
        assert!(StringMatch::Contains("b".into()).matches("abc", false));
        assert!(StringMatch::Contains("B".into()).matches("abc", true));
        assert!(!StringMatch::Contains("x".into()).matches("abc", true));
    }

    #[test]
    fn prefix_is_a_plain_string_prefix_like_envoy() {
        let p = PathMatch::Prefix("/api".into());
        assert!(p.matches("/api", false));
        assert!(p.matches("/apis", false));
        assert!(!p.matches("/API", false));
        assert!(p.matches("/API/x", true));
    }

    #[test]
    fn header_rules_and_invert() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-canary", "true".parse().unwrap());
        let name = HeaderName::from_static("x-canary");
        let present = HeaderMatch {
            name: name.clone(),
            rule: HeaderRule::Present(true),
            invert: false,
        };
        assert!(present.matches(&headers));
        let absent = HeaderMatch {
            rule: HeaderRule::Present(false),
            ..present.clone()
        };
        assert!(!absent.matches(&headers));
        let exact = HeaderMatch {
            rule: HeaderRule::Value(StringMatch::Exact("true".into())),
            ..present.clone()
        };
        assert!(exact.matches(&headers));
        let inverted = HeaderMatch {
            invert: true,
            ..exact.clone()
        };
        assert!(!inverted.matches(&headers));
        assert!(inverted.matches(&http::HeaderMap::new()));
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-tag", "a".parse().unwrap());
        headers.append("x-tag", "b".parse().unwrap());
        let m = HeaderMatch {
            name: HeaderName::from_static("x-tag"),
            rule: HeaderRule::Value(StringMatch::Exact("a,b".into())),
            invert: false,
        };
        assert!(m.matches(&headers));
    }
}
