//! The rules of one workload compiled for the request path, and the
//! decision for one request.
//!
//! Token locations are deduplicated across rules (two rules reading
//! `Authorization: Bearer` read it once) and each remembers the rules that
//! read it: a token is checked only by rules of its `iss` that name the
//! place it was found in, as Envoy's `jwt_authn` extractors are per
//! provider (an issuer cannot be tricked into accepting its tokens from a
//! header it never configured).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Uri};
use mesh_core::model::VerifiedJwt;
use mesh_core::model::security::{ClaimToHeader, JwksSource, JwtRule};
use serde_json::Value;

use super::AuthnOptions;
use super::jwt::{Reject, Token, audience_ok};
use super::keys::{self, Jwks, Keys};

/// Where a token may be.
#[derive(Clone, Debug, PartialEq)]
enum Location {
    Header { name: HeaderName, prefix: Arc<str> },
    Param(Arc<str>),
    Cookie(Arc<str>),
}

struct Rule {
    issuer: Arc<str>,
    audiences: Arc<[Arc<str>]>,
    keys: Arc<Jwks>,
    forward: bool,
    claims: Arc<[ClaimToHeader]>,
    payload: Option<HeaderName>,
    /// Indices into `Compiled::locations`.
    locations: Vec<usize>,
}

/// The compiled rules of one workload.
pub(crate) struct Compiled {
    rules: Vec<Rule>,
    locations: Vec<Location>,
    /// Every header a rule writes: inbound copies are removed from every
    /// request, token or not, so a client cannot forge them.
    outputs: Vec<HeaderName>,
    skew: u64,
}

/// Key sets by source, kept across recompilations so that an unrelated
/// config change neither refetches nor forgets a set.
#[derive(Default)]
pub(crate) struct JwksCache {
    sets: Vec<(JwksSource, Duration, Arc<Jwks>)>,
}

impl JwksCache {
    fn get(&mut self, source: &JwksSource, timeout: Duration, options: &AuthnOptions) -> Arc<Jwks> {
        if let Some((_, _, jwks)) = self
            .sets
            .iter()
            .find(|(s, t, _)| s == source && *t == timeout)
        {
            return Arc::clone(jwks);
        }
        let jwks = Arc::new(Jwks::new(source, timeout, options));
        self.sets.push((source.clone(), timeout, Arc::clone(&jwks)));
        jwks
    }
}

/// What the layer does with a request.
pub(crate) enum Outcome {
    /// No token anywhere: the request goes on without a [`VerifiedJwt`].
    NoToken,
    /// A token verified; the request was updated.
    Verified,
    /// 401.
    Rejected(Reject),
    /// The token's key is not loaded: wait for this set's refetch, then
    /// decide again.
    NeedKeys(Arc<Jwks>),
}

const DEFAULT_HEADER_PREFIX: &str = "Bearer ";
const DEFAULT_PARAM: &str = "access_token";

impl Compiled {
    /// Compiles `rules`, reusing the key sets of `cache` (which is left
    /// holding exactly the sets these rules use).
    pub(crate) fn new<'a>(
        rules: impl IntoIterator<Item = &'a JwtRule>,
        cache: &mut JwksCache,
        options: &AuthnOptions,
    ) -> Self {
        let mut next_cache = JwksCache::default();
        let mut compiled = Compiled {
            rules: Vec::new(),
            locations: Vec::new(),
            outputs: Vec::new(),
            skew: options.clock_skew.as_secs(),
        };
        for rule in rules {
            let mut wanted = Vec::new();
            if rule.uses_default_locations() {
                wanted.push(Location::Header {
                    name: header::AUTHORIZATION,
                    prefix: Arc::from(DEFAULT_HEADER_PREFIX),
                });
                wanted.push(Location::Param(Arc::from(DEFAULT_PARAM)));
            }
            wanted.extend(rule.from_headers.iter().map(|h| Location::Header {
                name: h.name.clone(),
                prefix: Arc::clone(&h.prefix),
            }));
            wanted.extend(rule.from_params.iter().cloned().map(Location::Param));
            wanted.extend(rule.from_cookies.iter().cloned().map(Location::Cookie));
            let locations = wanted
                .into_iter()
                .map(|l| match compiled.locations.iter().position(|x| *x == l) {
                    Some(i) => i,
                    None => {
                        compiled.locations.push(l);
                        compiled.locations.len() - 1
                    }
                })
                .collect();
            let jwks = match next_cache
                .sets
                .iter()
                .find(|(s, t, _)| *s == rule.jwks && *t == rule.timeout)
            {
                Some((_, _, j)) => Arc::clone(j),
                None => {
                    let j = cache.get(&rule.jwks, rule.timeout, options);
                    next_cache
                        .sets
                        .push((rule.jwks.clone(), rule.timeout, Arc::clone(&j)));
                    j
                }
            };
            for h in rule
                .output_claim_to_headers
                .iter()
                .map(|c| &c.header)
                .chain(&rule.output_payload_to_header)
            {
                if !compiled.outputs.contains(h) {
                    compiled.outputs.push(h.clone());
                }
            }
            compiled.rules.push(Rule {
                issuer: Arc::clone(&rule.issuer),
                audiences: Arc::clone(&rule.audiences),
                keys: jwks,
                forward: rule.forward_original_token,
                claims: Arc::clone(&rule.output_claim_to_headers),
                payload: rule.output_payload_to_header.clone(),
                locations,
            });
        }
        // A header that is also where tokens are read is written, not
        // stripped, or the token would be gone before it is looked for
        // (Envoy extracts first, then writes the outputs).
        let locations = &compiled.locations;
        compiled.outputs.retain(|h| {
            !locations
                .iter()
                .any(|l| matches!(l, Location::Header { name, .. } if name == h))
        });
        *cache = next_cache;
        compiled
    }

    /// The key sets of the rules (tests).
    #[cfg(test)]
    pub(crate) fn key_sets(&self) -> Vec<Arc<Jwks>> {
        self.rules.iter().map(|r| Arc::clone(&r.keys)).collect()
    }

    /// Whether there is no rule: every request passes untouched.
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Decides for `req`, updating it when a token verifies. With
    /// `may_wait`, a token whose key set lacks its key (or is not loaded)
    /// yields [`Outcome::NeedKeys`] when a refetch is possible.
    pub(crate) fn authenticate<B>(&self, req: &mut Request<B>, may_wait: bool) -> Outcome {
        for h in &self.outputs {
            req.headers_mut().remove(h);
        }
        let (location, raw) = match self.find_token(req) {
            Ok(Some(found)) => found,
            Ok(None) => return Outcome::NoToken,
            Err(r) => return Outcome::Rejected(r),
        };
        let token = match Token::parse(&raw) {
            Ok(t) => t,
            Err(r) => return Outcome::Rejected(r),
        };
        let issuer = match token.issuer() {
            Ok(i) => i,
            Err(r) => return Outcome::Rejected(r),
        };
        let mut reject = Reject::Issuer;
        let mut refetch: Option<&Arc<Jwks>> = None;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for rule in &self.rules {
            if *rule.issuer != *issuer || !rule.locations.contains(&location) {
                continue;
            }
            let checked = match rule.keys.keys() {
                Keys::Set(set) => keys::verify(
                    &set,
                    token.alg,
                    token.kid.as_deref(),
                    token.signing_input.as_bytes(),
                    token.signature,
                ),
                Keys::None => Err(Reject::NoKeys),
            };
            match checked {
                Ok(()) => {}
                Err(r @ (Reject::UnknownKid | Reject::NoKeys)) => {
                    reject = r;
                    if may_wait && refetch.is_none() && rule.keys.can_refetch() {
                        refetch = Some(&rule.keys);
                    }
                    continue;
                }
                Err(r) => {
                    reject = r;
                    continue;
                }
            }
            // The signature holds: the claims are the issuer's.
            if let Err(r) = token.check_time(now, self.skew) {
                return Outcome::Rejected(r);
            }
            let audiences = match token.audiences() {
                Ok(a) => a,
                Err(r) => return Outcome::Rejected(r),
            };
            if !audience_ok(&audiences, &rule.audiences) {
                reject = Reject::Audience;
                continue;
            }
            let payload = rule.payload.as_ref().and_then(|h| {
                HeaderValue::from_str(token.payload_b64)
                    .ok()
                    .map(|v| (h.clone(), v))
            });
            let verified = verified(token.claims, audiences);
            if !rule.forward {
                self.remove_token(req, location, &raw);
            }
            for out in rule.claims.iter() {
                if let Some(v) = claim_value(&verified.claims, &out.claim) {
                    req.headers_mut().insert(out.header.clone(), v);
                }
            }
            if let Some((h, v)) = payload {
                req.headers_mut().insert(h, v);
            }
            req.extensions_mut().insert(verified);
            return Outcome::Verified;
        }
        match refetch {
            Some(jwks) => Outcome::NeedKeys(Arc::clone(jwks)),
            None => Outcome::Rejected(reject),
        }
    }

    /// The one token of the request and where it is; a second token
    /// anywhere is an error (Istio rejects requests with tokens in more
    /// than one location).
    fn find_token<B>(&self, req: &Request<B>) -> Result<Option<(usize, String)>, Reject> {
        let mut found: Option<(usize, String)> = None;
        let mut take = |i: usize, t: &str| -> Result<(), Reject> {
            if t.is_empty() {
                return Ok(());
            }
            if found.is_some() {
                return Err(Reject::MultipleTokens);
            }
            found = Some((i, t.to_owned()));
            Ok(())
        };
        for (i, loc) in self.locations.iter().enumerate() {
            match loc {
                Location::Header { name, prefix } => {
                    for v in req.headers().get_all(name) {
                        if let Some(t) = v.to_str().ok().and_then(|v| strip_prefix(v, prefix)) {
                            take(i, t)?;
                        }
                    }
                }
                Location::Param(name) => {
                    for (k, v) in query_pairs(req.uri()) {
                        if k == &**name {
                            take(i, v)?;
                        }
                    }
                }
                Location::Cookie(name) => {
                    for (k, v) in cookie_pairs(req) {
                        if k == &**name {
                            take(i, v)?;
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    fn remove_token<B>(&self, req: &mut Request<B>, location: usize, raw: &str) {
        match &self.locations[location] {
            Location::Header { name, prefix } => {
                let keep: Vec<HeaderValue> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .filter(|v| v.to_str().ok().and_then(|v| strip_prefix(v, prefix)) != Some(raw))
                    .cloned()
                    .collect();
                req.headers_mut().remove(name);
                for v in keep {
                    req.headers_mut().append(name.clone(), v);
                }
            }
            Location::Param(name) => {
                let uri = req.uri();
                let Some(query) = uri.query() else { return };
                let rest: Vec<&str> = query
                    .split('&')
                    .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k != &**name))
                    .collect();
                let path_and_query = if rest.is_empty() {
                    uri.path().to_owned()
                } else {
                    format!("{}?{}", uri.path(), rest.join("&"))
                };
                let mut parts = uri.clone().into_parts();
                if let Ok(pq) = PathAndQuery::from_maybe_shared(path_and_query) {
                    parts.path_and_query = Some(pq);
                    if let Ok(u) = Uri::from_parts(parts) {
                        *req.uri_mut() = u;
                    }
                }
            }
            Location::Cookie(name) => {
                let values: Vec<HeaderValue> = req
                    .headers()
                    .get_all(header::COOKIE)
                    .iter()
                    .filter_map(|v| {
                        let v = v.to_str().ok()?;
                        let kept: Vec<&str> = v
                            .split(';')
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .filter(|c| c.split_once('=').is_none_or(|(k, _)| k.trim() != &**name))
                            .collect();
                        if kept.is_empty() {
                            None
                        } else {
                            HeaderValue::from_str(&kept.join("; ")).ok()
                        }
                    })
                    .collect();
                req.headers_mut().remove(header::COOKIE);
                for v in values {
                    req.headers_mut().append(header::COOKIE, v);
                }
            }
        }
    }
}

/// The token after `prefix` (compared case-insensitively, as the HTTP
/// authentication scheme `Bearer` is, RFC 9110 §11.1).
fn strip_prefix<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value[prefix.len()..].trim())
}

fn query_pairs(uri: &Uri) -> impl Iterator<Item = (&str, &str)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
}

fn cookie_pairs<B>(req: &Request<B>) -> impl Iterator<Item = (&str, &str)> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

fn verified(claims: serde_json::Map<String, Value>, audiences: Vec<String>) -> VerifiedJwt {
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let issuer = text("iss").unwrap_or_default();
    let subject = text("sub").unwrap_or_default();
    VerifiedJwt {
        principal: format!("{issuer}/{subject}"),
        presenter: text("azp"),
        issuer,
        subject,
        audiences,
        claims,
    }
}

/// A claim as a header value: strings, numbers and booleans only (Istio's
/// `outputClaimToHeaders`); `a.b` reads nested objects.
fn claim_value(claims: &serde_json::Map<String, Value>, path: &str) -> Option<HeaderValue> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for p in parts {
        value = value.as_object()?.get(p)?;
    }
    match value {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        Value::Bool(b) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_become_header_values_only_when_scalar() {
        let claims: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"sub":"alice","n":42,"admin":true,"org":{"id":"o1"},"groups":["a"],"bad":"a\nb"}"#,
        )
        .unwrap();
        let get = |p| claim_value(&claims, p).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(get("sub").as_deref(), Some("alice"));
        assert_eq!(get("n").as_deref(), Some("42"));
        assert_eq!(get("admin").as_deref(), Some("true"));
        assert_eq!(get("org.id").as_deref(), Some("o1"));
        assert_eq!(get("groups"), None);
        assert_eq!(get("org"), None);
        assert_eq!(get("missing"), None);
        assert_eq!(
            get("bad"),
            None,
            "a value that is not a valid header value is dropped"
        );
    }

    #[test]
    fn prefixes_compare_case_insensitively() {
        assert_eq!(strip_prefix("bearer abc", "Bearer "), Some("abc"));
        assert_eq!(strip_prefix("Basic abc", "Bearer "), None);
        assert_eq!(strip_prefix("abc", ""), Some("abc"));
        assert_eq!(strip_prefix("Bear", "Bearer "), None);
    }
}
