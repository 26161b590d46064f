//! JWS compact serialization (RFC 7515 §7.1) and the registered claims a
//! verifier checks (RFC 7519 §4.1), without trusting anything in the token
//! before its signature verified.
//!
//! The algorithm is read from the header only to pick among the
//! allow-listed ones ([`JwtAlgorithm`]); `none`, the HMAC family and every
//! other name fail here, before any key is looked at, so a public key can
//! never be used as an HMAC secret (reference checklist B.9.1). A header
//! with `crit` is rejected: this verifier understands no extension
//! (RFC 7515 §4.1.11). Embedded keys (`jwk`, `jku`, `x5u`, `x5c`) are never
//! used: keys come from the policy only.
//!
//! The signature itself is verified by `jsonwebtoken` ([`super::keys`]).
//! The header and claims stay parsed here, on purpose: the allow-list must
//! run before the crate sees anything (the crate knows HS* and would parse
//! them; it also accepts `crit: ["b64"]`, RFC 7797, which this verifier
//! refuses), and the claim checks follow Envoy's `jwt_authn` (fractional
//! `exp`/`nbf`, optional `exp`, one skew both ways, audiences matched per
//! rule after the issuer picked the rule) rather than the crate's
//! `Validation` defaults (required `exp`, one audience list).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_core::model::security::JwtAlgorithm;
use serde_json::{Map, Value};

/// Why a token was not accepted; logged (never the token), never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// `alg` is not allow-listed.
    Algorithm,
    /// No rule accepts the token's `iss` at the place it was found.
    Issuer,
    /// Tokens in more than one place.
    MultipleTokens,
    /// No key of the set verifies the signature.
    Signature,
    /// The token's `kid` is not in the key set (after a refetch).
    UnknownKid,
    /// The issuer's key set could not be loaded.
    NoKeys,
    /// `exp` is past (beyond the clock skew).
    Expired,
    /// `nbf` is ahead (beyond the clock skew).
    NotYetValid,
    /// `aud` names none of the rule's audiences.
    Audience,
}

impl Reject {
    /// A short name for logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm not allowed",
            Self::Issuer => "issuer not accepted here",
            Self::MultipleTokens => "multiple tokens",
            Self::Signature => "bad signature",
            Self::UnknownKid => "unknown kid",
            Self::NoKeys => "no key set",
            Self::Expired => "expired",
            Self::NotYetValid => "not yet valid",
            Self::Audience => "audience not accepted",
        }
    }
}

/// Tokens longer than this are malformed (Envoy's header limit is 60 KiB;
/// hyper's default header list is 16 KiB).
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A parsed, not yet verified token.
#[derive(Debug)]
pub(crate) struct Token<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    /// The payload part as sent (base64url), for `outputPayloadToHeader`.
    pub(crate) payload_b64: &'a str,
    /// The signature part as sent (base64url, checked to be well formed);
    /// `jsonwebtoken` decodes it when it verifies.
    pub(crate) signature: &'a str,
    pub(crate) alg: JwtAlgorithm,
    pub(crate) kid: Option<String>,
    pub(crate) claims: Map<String, Value>,
}

impl<'a> Token<'a> {
    /// Parses a compact JWS.
    pub(crate) fn parse(raw: &'a str) -> Result<Self, Reject> {
        if raw.len() > MAX_TOKEN_LEN {
            return Err(Reject::Malformed);
        }
        let mut parts = raw.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        let header: Map<String, Value> = json_part(h)?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) => JwtAlgorithm::from_name(a).ok_or(Reject::Algorithm)?,
            _ => return Err(Reject::Malformed),
        };
        if header.contains_key("crit") {
            return Err(Reject::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Reject::Malformed),
        };
        let claims: Map<String, Value> = json_part(p)?;
        if !is_base64url(s) {
            return Err(Reject::Malformed);
        }
        Ok(Self {
            signing_input: &raw[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature: s,
            alg,
            kid,
            claims,
        })
    }

    /// The `iss` claim.
    pub(crate) fn issuer(&self) -> Result<&str, Reject> {
        match self.claims.get("iss") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(Reject::Issuer),
        }
    }

    /// Checks `exp` and `nbf` against `now` (seconds since the Unix epoch)
    /// with `skew` seconds of leeway either way. `exp` is optional, as in
    /// Envoy's `jwt_authn` unless `require_expiration` is set (istiod does
    /// not set it).
    pub(crate) fn check_time(&self, now: u64, skew: u64) -> Result<(), Reject> {
        let now = now as f64;
        let skew = skew as f64;
        if let Some(exp) = self.numeric("exp")?
            && now > exp + skew
        {
            return Err(Reject::Expired);
        }
        if let Some(nbf) = self.numeric("nbf")?
            && nbf > now + skew
        {
            return Err(Reject::NotYetValid);
        }
        Ok(())
    }

    fn numeric(&self, claim: &str) -> Result<Option<f64>, Reject> {
        match self.claims.get(claim) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Reject::Malformed),
            Some(_) => Err(Reject::Malformed),
        }
    }

    /// The `aud` claim: a string is one audience (RFC 7519 §4.1.3).
    pub(crate) fn audiences(&self) -> Result<Vec<String>, Reject> {
        match self.claims.get("aud") {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(Reject::Malformed))
                .collect(),
            Some(_) => Err(Reject::Malformed),
        }
    }
}

/// Whether `s` is unpadded base64url (RFC 7515 §2): only the URL-safe
/// alphabet, and a length no encoding produces (`4k + 1`) is refused.
/// Checked without decoding, so the hot path does not allocate for it.
fn is_base64url(s: &str) -> bool {
    s.len() % 4 != 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn json_part(b64: &str) -> Result<Map<String, Value>, Reject> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| Reject::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Reject::Malformed),
    }
}

/// Whether the audiences of a token satisfy a rule's list (empty: any).
pub(crate) fn audience_ok(token: &[String], accepted: &[std::sync::Arc<str>]) -> bool {
    accepted.is_empty() || token.iter().any(|a| accepted.iter().any(|b| **b == **a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    #[test]
    fn only_allow_listed_algorithms_parse() {
        let ok = token(r#"{"alg":"ES256","kid":"k"}"#, r#"{"iss":"a"}"#);
        let t = Token::parse(&ok).unwrap();
        assert_eq!(t.alg, JwtAlgorithm::Es256);
        assert_eq!(t.kid.as_deref(), Some("k"));
        assert_eq!(t.issuer(), Ok("a"));
        assert_eq!(t.signature, b64("sig"));
        assert!(ok.starts_with(t.signing_input) && t.signing_input.matches('.').count() == 1);
        for alg in ["none", "HS256", "HS384", "HS512", "RS1", "ES512"] {
            let raw = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
            assert_eq!(Token::parse(&raw).unwrap_err(), Reject::Algorithm, "{alg}");
        }
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good_h = b64(r#"{"alg":"RS256"}"#);
        let good_p = b64("{}");
        for raw in [
            String::new(),
            "a.b".into(),
            format!("{good_h}.{good_p}.x.y.z"),
            format!("{good_h}.{good_p}.a+b"),
            format!("{good_h}=.{good_p}.AA"),
            format!("{}.{good_p}.AA", b64("[]")),
            format!("{good_h}.{}.AA", b64("7")),
            format!("{}.{good_p}.AA", b64(r#"{"alg":"RS256","crit":["exp"]}"#)),
            format!("{}.{good_p}.AA", b64(r#"{"alg":"RS256","kid":3}"#)),
            format!("{}.{good_p}.AA", b64(r#"{"typ":"JWT"}"#)),
        ] {
            assert_eq!(Token::parse(&raw).unwrap_err(), Reject::Malformed, "{raw}");
        }
    }

    #[test]
    fn exp_and_nbf_have_bounded_skew() {
        let t = |claims: &str| token(r#"{"alg":"RS256"}"#, claims);
        let check = |raw: &str, now| Token::parse(raw).unwrap().check_time(now, 60);
        assert_eq!(check(&t(r#"{"exp":1000}"#), 1060), Ok(()));
        assert_eq!(check(&t(r#"{"exp":1000}"#), 1061), Err(Reject::Expired));
        assert_eq!(check(&t(r#"{"nbf":1000}"#), 940), Ok(()));
        assert_eq!(check(&t(r#"{"nbf":1000}"#), 939), Err(Reject::NotYetValid));
        assert_eq!(check(&t(r#"{"exp":"soon"}"#), 0), Err(Reject::Malformed));
        assert_eq!(check(&t("{}"), u64::MAX / 2), Ok(()), "exp is optional");
    }

    #[test]
    fn audiences_are_a_string_or_a_list() {
        let t = |claims: &str| {
            Token::parse(&token(r#"{"alg":"RS256"}"#, claims))
                .unwrap()
                .audiences()
        };
        assert_eq!(t(r#"{"aud":"a"}"#), Ok(vec!["a".to_owned()]));
        assert_eq!(t(r#"{"aud":["a","b"]}"#).unwrap().len(), 2);
        assert_eq!(t(r#"{"aud":[1]}"#), Err(Reject::Malformed));
        assert_eq!(t("{}"), Ok(vec![]));
        let accepted = [std::sync::Arc::from("b")];
        assert!(audience_ok(&["a".into(), "b".into()], &accepted));
        assert!(!audience_ok(&["a".into()], &accepted));
        assert!(!audience_ok(&[], &accepted));
        assert!(audience_ok(&[], &[]));
    }
}
