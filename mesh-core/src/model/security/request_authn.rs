//! A `RequestAuthentication` (security.istio.io/v1): which JWTs a workload
//! accepts, where it finds them and what it does with them once verified.
//!
//! The fields mirror Istio's `JWTRule` (istio.io, "RequestAuthentication",
//! `security/v1beta1/request_authentication.proto`), which istiod
//! translates into Envoy's `jwt_authn` filter; the behaviour that goes
//! with them lives in `mesh-tower`'s `authn` layer. The key set is plain
//! data here: [`JwkSet::parse`] reads a JSON Web Key Set (RFC 7517) into
//! decoded key material with no crypto library, so both the file source
//! and the layer's fetcher validate a set the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderName;
use serde_json::Value;

use super::PolicyScope;

/// A `RequestAuthentication` (security.istio.io/v1).
///
/// Every policy that applies to a workload contributes its rules; a
/// request is checked against the union (Istio merges the `jwtRules` of
/// all applicable policies).
#[derive(Clone, Debug, PartialEq)]
pub struct RequestAuthentication {
    /// Where the policy applies.
    pub scope: PolicyScope,
    /// `jwtRules`: one per accepted issuer.
    pub jwt_rules: Arc<[JwtRule]>,
}

impl RequestAuthentication {
    /// A policy with `rules` at `scope`.
    pub fn new(scope: PolicyScope, rules: impl IntoIterator<Item = JwtRule>) -> Self {
        Self {
            scope,
            jwt_rules: rules.into_iter().collect(),
        }
    }
}

/// Istio's default for `JWTRule.timeout`: how long one JWKS fetch may take.
pub const DEFAULT_JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One `jwtRules` entry: the tokens of one issuer.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtRule {
    /// `issuer`: the `iss` a token must carry to be checked by this rule.
    pub issuer: Arc<str>,
    /// `audiences`: a token's `aud` must contain one of them. Empty means
    /// the audience is not checked, which is what Envoy's `jwt_authn` does
    /// with the empty list istiod passes on.
    pub audiences: Arc<[Arc<str>]>,
    /// Where the verification keys come from (`jwks` / `jwksUri`).
    pub jwks: JwksSource,
    /// `fromHeaders`. With `from_params` and `from_cookies` all empty, the
    /// defaults apply: `Authorization: Bearer <token>` and the
    /// `access_token` query parameter.
    pub from_headers: Arc<[JwtHeader]>,
    /// `fromParams`: query parameter names.
    pub from_params: Arc<[Arc<str>]>,
    /// `fromCookies`: cookie names.
    pub from_cookies: Arc<[Arc<str>]>,
    /// `forwardOriginalToken`: keep the token in the request forwarded to
    /// the application (by default it is removed once verified).
    pub forward_original_token: bool,
    /// `outputClaimToHeaders`: copy claims into request headers.
    pub output_claim_to_headers: Arc<[ClaimToHeader]>,
    /// `outputPayloadToHeader`: put the base64url payload into this header.
    pub output_payload_to_header: Option<HeaderName>,
    /// `timeout`: how long one JWKS fetch may take (default 5 s).
    pub timeout: Duration,
}

impl JwtRule {
    /// A rule for `issuer` with keys from `jwks` and every other field at
    /// Istio's default.
    pub fn new(issuer: impl Into<Arc<str>>, jwks: JwksSource) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: Arc::from([]),
            jwks,
            from_headers: Arc::from([]),
            from_params: Arc::from([]),
            from_cookies: Arc::from([]),
            forward_original_token: false,
            output_claim_to_headers: Arc::from([]),
            output_payload_to_header: None,
            timeout: DEFAULT_JWKS_FETCH_TIMEOUT,
        }
    }

    /// Sets the accepted audiences.
    pub fn with_audiences<S: Into<Arc<str>>>(
        mut self,
        audiences: impl IntoIterator<Item = S>,
    ) -> Self {
        self.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the headers tokens are read from.
    pub fn with_from_headers(mut self, headers: impl IntoIterator<Item = JwtHeader>) -> Self {
        self.from_headers = headers.into_iter().collect();
        self
    }

    /// Sets the query parameters tokens are read from.
    pub fn with_from_params<S: Into<Arc<str>>>(
        mut self,
        params: impl IntoIterator<Item = S>,
    ) -> Self {
        self.from_params = params.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the cookies tokens are read from.
    pub fn with_from_cookies<S: Into<Arc<str>>>(
        mut self,
        cookies: impl IntoIterator<Item = S>,
    ) -> Self {
        self.from_cookies = cookies.into_iter().map(Into::into).collect();
        self
    }

    /// Keeps the token in the forwarded request.
    pub fn with_forward_original_token(mut self, forward: bool) -> Self {
        self.forward_original_token = forward;
        self
    }

    /// Sets the claims copied to headers.
    pub fn with_output_claim_to_headers(
        mut self,
        outputs: impl IntoIterator<Item = ClaimToHeader>,
    ) -> Self {
        self.output_claim_to_headers = outputs.into_iter().collect();
        self
    }

    /// Sets the header that receives the payload.
    pub fn with_output_payload_to_header(mut self, header: HeaderName) -> Self {
        self.output_payload_to_header = Some(header);
        self
    }

    /// Sets the JWKS fetch timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the rule names no location, so the defaults apply.
    pub fn uses_default_locations(&self) -> bool {
        self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty()
    }
}

/// Where a rule's verification keys come from.
#[derive(Clone, Debug, PartialEq)]
pub enum JwksSource {
    /// `jwks`: a key set written into the policy.
    Inline(JwkSet),
    /// `jwksUri: https://...`: fetched, cached and refreshed.
    Remote(Arc<str>),
    /// `jwksUri: file:///path`: a local file, read and re-read like a
    /// remote set (Istio has no file source; this is the project's
    /// extension, for clusters without network access to the issuer).
    File(PathBuf),
    /// Neither `jwks` nor `jwksUri`: the set is found through the
    /// issuer's OpenID Provider Configuration
    /// (`<issuer>/.well-known/openid-configuration`, its `jwks_uri`;
    /// OpenID Connect Discovery 1.0 §4), as istiod does. The value is the
    /// configuration document's `https://` URL.
    Discovery(Arc<str>),
}

impl JwksSource {
    /// The OpenID discovery source of `issuer`, which must be an
    /// `https://` URL without query or fragment (OpenID Connect Discovery
    /// 1.0 §4: the configuration path is appended to the issuer).
    pub fn discovery(issuer: &str) -> Result<Self, String> {
        let ok = issuer.parse::<http::Uri>().is_ok_and(|u| {
            u.scheme_str() == Some("https") && u.host().is_some() && u.query().is_none()
        }) && !issuer.contains('#');
        if !ok {
            return Err(format!(
                "issuer {issuer:?} is not an https URL, so its key set cannot be discovered; set \
                 jwks or jwksUri"
            ));
        }
        Ok(Self::Discovery(Arc::from(format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ))))
    }
}

/// One `fromHeaders` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtHeader {
    /// The header's name.
    pub name: HeaderName,
    /// The prefix before the token (`"Bearer "`), empty for none.
    pub prefix: Arc<str>,
}

impl JwtHeader {
    /// A header location.
    pub fn new(name: HeaderName, prefix: impl Into<Arc<str>>) -> Self {
        Self {
            name,
            prefix: prefix.into(),
        }
    }
}

/// One `outputClaimToHeaders` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimToHeader {
    /// The header to set.
    pub header: HeaderName,
    /// The claim to copy; `.` separates nested claims (`a.b`), as Envoy's
    /// `claim_to_headers` reads them.
    pub claim: Arc<str>,
}

/// A JWS algorithm this project verifies (RFC 7518 §3.1 names). The list is
/// the allow-list: `none` and the HMAC family are not representable, so
/// an attacker cannot make a verifier treat a public key as an HMAC secret
/// (reference checklist B.9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519 (RFC 8037).
    EdDsa,
}

impl JwtAlgorithm {
    /// The algorithm with the JOSE name `name`, if allowed.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// Whether a key can verify this algorithm.
    pub fn fits(self, key: &JwkKey) -> bool {
        match (self, key) {
            (
                Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512,
                JwkKey::Rsa { .. },
            ) => true,
            (Self::Es256, JwkKey::Ec { curve, .. }) => *curve == EcCurve::P256,
            (Self::Es384, JwkKey::Ec { curve, .. }) => *curve == EcCurve::P384,
            (Self::EdDsa, JwkKey::Ed25519 { .. }) => true,
            _ => false,
        }
    }
}

/// An elliptic curve of an `EC` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// `P-256`.
    P256,
    /// `P-384`.
    P384,
}

impl EcCurve {
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// The public key material of one JWK, decoded from base64url.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwkKey {
    /// `kty: RSA`: big-endian modulus and exponent.
    Rsa {
        /// `n`, without leading zero bytes.
        n: Arc<[u8]>,
        /// `e`.
        e: Arc<[u8]>,
    },
    /// `kty: EC`: the uncompressed point `0x04 || x || y`.
    Ec {
        /// `crv`.
        curve: EcCurve,
        /// The SEC1 uncompressed point.
        point: Arc<[u8]>,
    },
    /// `kty: OKP`, `crv: Ed25519`: the 32-byte public key.
    Ed25519 {
        /// `x`.
        x: Arc<[u8]>,
    },
}

/// One usable key of a [`JwkSet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`.
    pub kid: Option<Arc<str>>,
    /// `alg`, when the key names one: the key then verifies only that
    /// algorithm.
    pub alg: Option<JwtAlgorithm>,
    /// The key material.
    pub key: JwkKey,
}

/// A JSON Web Key Set (RFC 7517 §5) reduced to the keys that can verify an
/// allowed algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwkSet {
    /// The usable keys, in document order.
    pub keys: Arc<[Jwk]>,
}

/// The smallest RSA modulus accepted, in bytes (2048 bits, the floor of
/// ring's `RSA_*_2048_8192_*` verifiers and of NIST SP 800-131A).
const MIN_RSA_MODULUS_BYTES: usize = 256;

impl JwkSet {
    /// Parses a JWKS document. Keys of other types (`oct`: HMAC secrets
    /// are never accepted; `RSA-OAEP` or `use: enc` keys; curves this
    /// project does not verify) are skipped and described in the returned
    /// notes; a key of a supported type whose members are malformed, or a
    /// set with no usable key, is an error: a broken set must not
    /// silently shrink to nothing.
    pub fn parse(json: &str) -> Result<(JwkSet, Vec<String>), String> {
        let doc: Value =
            serde_json::from_str(json).map_err(|e| format!("invalid JWKS JSON: {e}"))?;
        let Some(keys) = doc.get("keys") else {
            return Err("invalid JWKS: no \"keys\" member".into());
        };
        let Value::Array(keys) = keys else {
            return Err("invalid JWKS: \"keys\" is not a list".into());
        };
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match parse_key(key) {
                Ok(Some(k)) => out.push(k),
                Ok(None) => notes.push(format!("keys[{i}]: {}", skip_reason(key))),
                Err(e) => return Err(format!("invalid JWKS: keys[{i}]: {e}")),
            }
        }
        if out.is_empty() {
            return Err(
                "invalid JWKS: no key usable for RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
                    .into(),
            );
        }
        Ok((JwkSet { keys: out.into() }, notes))
    }
}

fn skip_reason(key: &Value) -> String {
    let kty = key.get("kty").and_then(Value::as_str).unwrap_or("?");
    let alg = key.get("alg").and_then(Value::as_str);
    match (kty, alg) {
        ("oct", _) => "skipped: symmetric (oct) keys are never accepted".into(),
        (_, Some(a)) if JwtAlgorithm::from_name(a).is_none() => {
            format!("skipped: algorithm {a:?} is not allowed")
        }
        _ if key
            .get("use")
            .and_then(Value::as_str)
            .is_some_and(|u| u != "sig") =>
        {
            "skipped: not a signature key (use is not \"sig\")".into()
        }
        _ => format!("skipped: key type {kty:?} is not supported"),
    }
}

/// One key: `Ok(None)` when it is of a kind this project skips.
fn parse_key(key: &Value) -> Result<Option<Jwk>, String> {
    let Value::Object(k) = key else {
        return Err("not a JSON object".into());
    };
    let text = |name: &str| -> Result<Option<&str>, String> {
        match k.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let s = text(name)?.ok_or_else(|| format!("{name} is missing"))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("{name} is not base64url without padding"))
    };
    let kty = text("kty")?.ok_or("kty is missing")?;
    // `jwt-svid` is the `use` of JWT-SVID keys in SPIFFE bundles
    // (spiffe `standards/JWT-SVID.md` §6).
    if text("use")?.is_some_and(|u| u != "sig" && u != "jwt-svid") {
        return Ok(None);
    }
    let alg = match text("alg")? {
        None => None,
        Some(a) => match JwtAlgorithm::from_name(a) {
            Some(a) => Some(a),
            None => return Ok(None),
        },
    };
    let kid = text("kid")?.map(Arc::from);
    let key = match kty {
        "RSA" => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
            let n = &n[first..];
            if n.len() < MIN_RSA_MODULUS_BYTES {
                return Err(format!(
                    "RSA modulus of {} bits is shorter than 2048 bits",
                    n.len() * 8
                ));
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent e is empty or too long".into());
            }
            JwkKey::Rsa {
                n: n.into(),
                e: e.into(),
            }
        }
        "EC" => {
            let curve = match text("crv")?.ok_or("crv is missing")? {
                "P-256" => EcCurve::P256,
                "P-384" => EcCurve::P384,
                _ => return Ok(None),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            let len = curve.coordinate_len();
            if x.len() != len || y.len() != len {
                return Err(format!("x and y must be {len} bytes for this curve"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            JwkKey::Ec {
                curve,
                point: point.into(),
            }
        }
        "OKP" => {
            if text("crv")?.ok_or("crv is missing")? != "Ed25519" {
                return Ok(None);
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("an Ed25519 x must be 32 bytes".into());
            }
            JwkKey::Ed25519 { x: x.into() }
        }
        _ => return Ok(None),
    };
    if let Some(a) = alg
        && !a.fits(&key)
    {
        return Err(format!("alg {} does not fit key type {kty}", a.name()));
    }
    Ok(Some(Jwk { kid, alg, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn parses_rsa_ec_and_okp_keys_and_skips_the_rest() {
        let n = b64(&[0xc5; 256]);
        let jwks = format!(
            r#"{{"keys":[
              {{"kty":"RSA","kid":"r","alg":"RS256","use":"sig","n":"{n}","e":"AQAB"}},
              {{"kty":"EC","kid":"e","crv":"P-256","x":"{x}","y":"{x}"}},
              {{"kty":"OKP","crv":"Ed25519","x":"{x}"}},
              {{"kty":"oct","k":"c2VjcmV0"}},
              {{"kty":"RSA","use":"enc","n":"{n}","e":"AQAB"}},
              {{"kty":"EC","crv":"P-521","x":"AA","y":"AA"}},
              {{"kty":"RSA","alg":"HS256","n":"{n}","e":"AQAB"}}
            ]}}"#,
            x = b64(&[7; 32])
        );
        let (set, notes) = JwkSet::parse(&jwks).unwrap();
        assert_eq!(set.keys.len(), 3);
        assert_eq!(set.keys[0].kid.as_deref(), Some("r"));
        assert_eq!(set.keys[0].alg, Some(JwtAlgorithm::Rs256));
        assert!(
            matches!(set.keys[1].key, JwkKey::Ec { curve: EcCurve::P256, ref point } if point.len() == 65 && point[0] == 4)
        );
        assert!(matches!(set.keys[2].key, JwkKey::Ed25519 { .. }));
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes[0].contains("oct"), "{notes:?}");
        assert!(notes[3].contains("HS256"), "{notes:?}");
    }

    #[test]
    fn malformed_or_empty_sets_are_errors() {
        for (json, expect) in [
            ("nope", "invalid JWKS JSON"),
            ("{}", "no \"keys\""),
            (r#"{"keys":{}}"#, "not a list"),
            (r#"{"keys":[]}"#, "no key usable"),
            (r#"{"keys":[{"kty":"oct","k":"AA"}]}"#, "no key usable"),
            (
                r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
                "keys[0]: RSA modulus of 24 bits",
            ),
            (
                r#"{"keys":[{"kty":"RSA","n":"A+B","e":"AQAB"}]}"#,
                "keys[0]: n is not base64url",
            ),
            (
                r#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#,
                "32 bytes",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519"}]}"#,
                "x is missing",
            ),
            (
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"ES256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#,
                "does not fit",
            ),
        ] {
            let err = JwkSet::parse(json).unwrap_err();
            assert!(err.contains(expect), "{json}: {err}");
        }
    }

    #[test]
    fn algorithms_fit_only_their_key_types() {
        let rsa = JwkKey::Rsa {
            n: Arc::from([1u8; 256]),
            e: Arc::from([1u8, 0, 1]),
        };
        let p384 = JwkKey::Ec {
            curve: EcCurve::P384,
            point: Arc::from([4u8; 97]),
        };
        assert!(JwtAlgorithm::Ps256.fits(&rsa));
        assert!(!JwtAlgorithm::Es256.fits(&rsa));
        assert!(JwtAlgorithm::Es384.fits(&p384));
        assert!(!JwtAlgorithm::Es256.fits(&p384));
        for name in ["none", "HS256", "HS384", "HS512", "RS1", "ES512", "ES256K"] {
            assert_eq!(JwtAlgorithm::from_name(name), None, "{name}");
        }
    }
}
