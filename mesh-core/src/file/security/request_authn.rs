//! `RequestAuthentication` (security.istio.io/v1): `jwtRules` into
//! [`JwtRule`]s.
//!
//! Every field of Istio's `JWTRule` is read (istio.io, "RequestAuthentication").
//! What cannot be honoured is an error, never a warning: dropping part of
//! an authentication policy would weaken it silently. That covers
//! `targetRef(s)` (gateways and waypoints), a rule with neither `jwks` nor
//! `jwksUri` whose issuer is not an `https://` URL (the key set is then
//! discovered from the issuer's OpenID configuration, as istiod does) and
//! a plain `http://` `jwksUri` (keys fetched without TLS could be replaced
//! by anyone on the path; istiod allows it, this project does not).
//! `jwksUri: file:///path` is this project's extension: the key set is
//! read from a local file and re-read like a remote one.

use std::sync::Arc;

use http::HeaderName;

use crate::error::{FieldPath, InvalidConfig};
use crate::file::duration;
use crate::file::yaml::{Fields, Obj};
use crate::model::security::{
    ClaimToHeader, DEFAULT_JWKS_FETCH_TIMEOUT, JwkSet, JwksSource, JwtHeader, JwtRule,
};
use crate::model::{PolicyScope, RequestAuthentication};

const SPEC_FIELDS: Fields<'static> = Fields {
    supported: &["selector", "jwtRules"],
    unsupported: &[],
    ignored: &[],
};

const RULE_FIELDS: Fields<'static> = Fields {
    supported: &[
        "issuer",
        "audiences",
        "jwksUri",
        "jwks",
        "fromHeaders",
        "fromParams",
        "fromCookies",
        "outputPayloadToHeader",
        "forwardOriginalToken",
        "outputClaimToHeaders",
        "timeout",
    ],
    unsupported: &[],
    ignored: &[],
};

/// Translates the spec of a `RequestAuthentication`.
pub(crate) fn translate(
    scope: PolicyScope,
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<RequestAuthentication, InvalidConfig> {
    for key in ["targetRef", "targetRefs"] {
        if spec.get(key).is_some() {
            return Err(InvalidConfig::new(
                spec.path.field(key),
                "not supported: policies attached to gateways or waypoints cannot be enforced \
                 by an in-process server; use selector",
            ));
        }
    }
    spec.check_fields(&SPEC_FIELDS, errors, warnings);
    let mut rules = Vec::new();
    for (i, value) in spec.list("jwtRules")?.iter().enumerate() {
        let path = spec.path.field("jwtRules").index(i);
        let rule = Obj::new(value, &path)?;
        rule.check_fields(&RULE_FIELDS, errors, warnings);
        match jwt_rule(rule, warnings) {
            Ok(r) => rules.push(r),
            Err(e) => errors.push(e),
        }
    }
    Ok(RequestAuthentication::new(scope, rules))
}

fn jwt_rule(rule: Obj<'_>, warnings: &mut Vec<InvalidConfig>) -> Result<JwtRule, InvalidConfig> {
    let issuer = rule.req_str("issuer")?;
    if issuer.trim().is_empty() {
        return Err(InvalidConfig::new(
            rule.path.field("issuer"),
            "must not be empty",
        ));
    }
    let jwks = jwks_source(rule, warnings)?;
    let mut out = JwtRule::new(issuer, jwks);
    out.audiences = non_empty_strings(rule, "audiences")?;
    out.from_params = non_empty_strings(rule, "fromParams")?;
    out.from_cookies = non_empty_strings(rule, "fromCookies")?;
    out.from_headers = from_headers(rule)?;
    out.forward_original_token = rule.bool("forwardOriginalToken")?.unwrap_or(false);
    out.output_claim_to_headers = claim_headers(rule)?;
    out.output_payload_to_header = match rule.str("outputPayloadToHeader")? {
        None => None,
        Some(h) => Some(output_header(h, &rule.path.field("outputPayloadToHeader"))?),
    };
    out.timeout = match rule.str("timeout")? {
        None => DEFAULT_JWKS_FETCH_TIMEOUT,
        Some(t) => {
            let path = rule.path.field("timeout");
            let d = duration::parse(t).map_err(|e| InvalidConfig::new(path.clone(), e))?;
            if d.is_zero() {
                return Err(InvalidConfig::new(path, "must be greater than 0"));
            }
            d
        }
    };
    Ok(out)
}

fn jwks_source(
    rule: Obj<'_>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<JwksSource, InvalidConfig> {
    let inline = rule.str("jwks")?;
    let uri = rule.str("jwksUri")?;
    match (inline, uri) {
        (Some(_), Some(_)) => Err(InvalidConfig::new(
            rule.path.field("jwks"),
            "set only one of jwks and jwksUri",
        )),
        (None, None) => JwksSource::discovery(rule.req_str("issuer")?)
            .map_err(|e| InvalidConfig::new(rule.path.field("issuer"), e)),
        (Some(json), None) => {
            let path = rule.path.field("jwks");
            let (set, notes) =
                JwkSet::parse(json).map_err(|e| InvalidConfig::new(path.clone(), e))?;
            warnings.extend(
                notes
                    .into_iter()
                    .map(|n| InvalidConfig::new(path.clone(), n)),
            );
            Ok(JwksSource::Inline(set))
        }
        (None, Some(uri)) => {
            let path = rule.path.field("jwksUri");
            if let Some(file) = uri.strip_prefix("file://") {
                if !file.starts_with('/') {
                    return Err(InvalidConfig::new(
                        path,
                        format!("{uri:?}: a file URI needs an absolute path (file:///path)"),
                    ));
                }
                return Ok(JwksSource::File(file.into()));
            }
            if uri.starts_with("http://") {
                return Err(InvalidConfig::new(
                    path,
                    format!(
                        "{uri:?}: plain http is not accepted for key sets (anyone on the path \
                         could substitute keys); use https or inline jwks"
                    ),
                ));
            }
            match uri.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {
                    Ok(JwksSource::Remote(Arc::from(uri)))
                }
                _ => Err(InvalidConfig::new(
                    path,
                    format!("{uri:?}: expected an https:// or file:/// URI"),
                )),
            }
        }
    }
}

fn non_empty_strings(rule: Obj<'_>, key: &str) -> Result<Arc<[Arc<str>]>, InvalidConfig> {
    rule.str_list(key)?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            if s.is_empty() {
                Err(InvalidConfig::new(
                    rule.path.field(key).index(i),
                    "must not be empty",
                ))
            } else {
                Ok(Arc::from(s))
            }
        })
        .collect()
}

fn from_headers(rule: Obj<'_>) -> Result<Arc<[JwtHeader]>, InvalidConfig> {
    let list_path = rule.path.field("fromHeaders");
    let mut out = Vec::new();
    for (i, v) in rule.list("fromHeaders")?.iter().enumerate() {
        let path = list_path.index(i);
        let h = Obj::new(v, &path)?;
        h.only_fields(&["name", "prefix"])?;
        let name = h.req_str("name")?;
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            InvalidConfig::new(
                path.field("name"),
                format!("{name:?} is not a valid header name"),
            )
        })?;
        let prefix = h.str("prefix")?.unwrap_or("");
        out.push(JwtHeader::new(name, prefix));
    }
    Ok(out.into())
}

fn claim_headers(rule: Obj<'_>) -> Result<Arc<[ClaimToHeader]>, InvalidConfig> {
    let list_path = rule.path.field("outputClaimToHeaders");
    let mut out = Vec::new();
    for (i, v) in rule.list("outputClaimToHeaders")?.iter().enumerate() {
        let path = list_path.index(i);
        let o = Obj::new(v, &path)?;
        o.only_fields(&["header", "claim"])?;
        let header = output_header(o.req_str("header")?, &path.field("header"))?;
        let claim = o.req_str("claim")?;
        if claim.is_empty() || claim.split('.').any(str::is_empty) {
            return Err(InvalidConfig::new(
                path.field("claim"),
                format!("{claim:?} is not a claim name (nested claims are a.b)"),
            ));
        }
        out.push(ClaimToHeader {
            header,
            claim: Arc::from(claim),
        });
    }
    Ok(out.into())
}

/// Headers the layer writes: a valid name, and none that would change how
/// the request is framed or routed (Istio's validation rejects pseudo
/// headers and `host` the same way).
fn output_header(name: &str, path: &FieldPath) -> Result<HeaderName, InvalidConfig> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        InvalidConfig::new(path.clone(), format!("{name:?} is not a valid header name"))
    })?;
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
        "authorization",
    ];
    if RESERVED.contains(&header.as_str()) {
        return Err(InvalidConfig::new(
            path.clone(),
            format!("{name:?} cannot be set from a token"),
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use crate::file::FileSource;
    use crate::model::security::{JwksSource, JwtAlgorithm};

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","alg":"EdDSA","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn doc(rule: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{ name: jwt, namespace: shop }}\nspec:\n  selector:\n    matchLabels: {{ app: cart }}\n  jwtRules:\n  - {rule}\n"
        )
    }

    #[test]
    fn reads_every_jwt_rule_field() {
        let rule = format!(
            "issuer: https://issuer.example\n    audiences: [cart, shop]\n    jwks: '{JWKS}'\n    fromHeaders: [{{ name: x-jwt, prefix: 'Token ' }}]\n    fromParams: [token]\n    fromCookies: [session]\n    forwardOriginalToken: true\n    outputClaimToHeaders: [{{ header: x-sub, claim: sub }}, {{ header: x-org, claim: org.id }}]\n    outputPayloadToHeader: x-jwt-payload\n    timeout: 2s"
        );
        let snap = FileSource::parse_str("mesh.yaml", &doc(&rule)).unwrap();
        let policies = &snap.resources.security.request_authentications;
        assert_eq!(policies.len(), 1);
        let p = &policies[0];
        assert_eq!(&*p.scope.namespace, "shop");
        assert!(p.scope.selector.is_some());
        let r = &p.jwt_rules[0];
        assert_eq!(&*r.issuer, "https://issuer.example");
        assert_eq!(r.audiences.len(), 2);
        let JwksSource::Inline(set) = &r.jwks else {
            panic!("{:?}", r.jwks)
        };
        assert_eq!(set.keys[0].alg, Some(JwtAlgorithm::EdDsa));
        assert_eq!(r.from_headers[0].name.as_str(), "x-jwt");
        assert_eq!(&*r.from_headers[0].prefix, "Token ");
        assert_eq!(&*r.from_params[0], "token");
        assert_eq!(&*r.from_cookies[0], "session");
        assert!(r.forward_original_token);
        assert_eq!(r.output_claim_to_headers[1].header.as_str(), "x-org");
        assert_eq!(&*r.output_claim_to_headers[1].claim, "org.id");
        assert_eq!(
            r.output_payload_to_header.as_ref().unwrap().as_str(),
            "x-jwt-payload"
        );
        assert_eq!(r.timeout, std::time::Duration::from_secs(2));
        assert!(!r.uses_default_locations());
    }

    #[test]
    fn jwks_uris_are_https_or_absolute_files() {
        let snap = FileSource::parse_str(
            "mesh.yaml",
            &doc("issuer: a\n    jwksUri: https://keys.example/jwks.json"),
        )
        .unwrap();
        let r = &snap.resources.security.request_authentications[0].jwt_rules[0];
        assert_eq!(
            r.jwks,
            JwksSource::Remote("https://keys.example/jwks.json".into())
        );
        assert!(r.uses_default_locations());
        let snap = FileSource::parse_str(
            "mesh.yaml",
            &doc("issuer: a\n    jwksUri: file:///etc/jwks.json"),
        )
        .unwrap();
        assert_eq!(
            snap.resources.security.request_authentications[0].jwt_rules[0].jwks,
            JwksSource::File("/etc/jwks.json".into())
        );
    }

    #[test]
    fn an_https_issuer_without_keys_is_discovered() {
        let snap =
            FileSource::parse_str("mesh.yaml", &doc("issuer: https://idp.example/realm/")).unwrap();
        assert_eq!(
            snap.resources.security.request_authentications[0].jwt_rules[0].jwks,
            JwksSource::Discovery(
                "https://idp.example/realm/.well-known/openid-configuration".into()
            )
        );
    }

    #[test]
    fn bad_rules_name_the_field() {
        let prefix = "mesh.yaml: document 1 (RequestAuthentication jwt): ";
        for (rule, expect) in [
            (
                "issuer: ''\n    jwksUri: https://k/",
                "jwtRules[0].issuer: must not be empty",
            ),
            (
                "audiences: [a]\n    jwksUri: https://k/",
                "jwtRules[0].issuer: required",
            ),
            (
                "issuer: a",
                "jwtRules[0].issuer: issuer \"a\" is not an https URL, so its key set cannot be discovered",
            ),
            (
                "issuer: 'http://idp'",
                "jwtRules[0].issuer: issuer \"http://idp\" is not an https URL",
            ),
            (
                "issuer: a\n    jwksUri: http://k/jwks",
                "jwtRules[0].jwksUri: \"http://k/jwks\": plain http",
            ),
            (
                "issuer: a\n    jwksUri: file://rel/jwks",
                "jwtRules[0].jwksUri: \"file://rel/jwks\": a file URI needs an absolute path",
            ),
            (
                "issuer: a\n    jwksUri: ftp://k/",
                "jwtRules[0].jwksUri: \"ftp://k/\": expected an https://",
            ),
            (
                "issuer: a\n    jwks: '{\"keys\":[]}'",
                "jwtRules[0].jwks: invalid JWKS: no key usable",
            ),
            (
                "issuer: a\n    jwks: x\n    jwksUri: https://k/",
                "jwtRules[0].jwks: set only one",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    fromHeaders: [{ name: 'bad header' }]",
                "jwtRules[0].fromHeaders[0].name: \"bad header\" is not a valid header name",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    fromHeaders: [{ prefix: x }]",
                "jwtRules[0].fromHeaders[0].name: required",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    fromParams: ['']",
                "jwtRules[0].fromParams[0]: must not be empty",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    outputClaimToHeaders: [{ header: host, claim: sub }]",
                "jwtRules[0].outputClaimToHeaders[0].header: \"host\" cannot be set from a token",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    outputClaimToHeaders: [{ header: x, claim: 'a..b' }]",
                "jwtRules[0].outputClaimToHeaders[0].claim: \"a..b\" is not a claim name",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    outputPayloadToHeader: 'x y'",
                "jwtRules[0].outputPayloadToHeader: \"x y\" is not a valid header name",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    timeout: 0s",
                "jwtRules[0].timeout: must be greater than 0",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    timeout: soon",
                "jwtRules[0].timeout: invalid duration",
            ),
            (
                "issuer: a\n    jwksUri: https://k/\n    fromHeader: []",
                "jwtRules[0].fromHeader: unknown field (did you mean \"fromHeaders\"?)",
            ),
        ] {
            let err = FileSource::parse_str("mesh.yaml", &doc(rule))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{prefix}{expect}")), "{rule}\n{err}");
        }
    }

    #[test]
    fn target_refs_are_rejected_not_ignored() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: { name: jwt }\nspec:\n  targetRef: { kind: Gateway, name: gw }\n  jwtRules: [{ issuer: a, jwksUri: 'https://k/' }]\n";
        let err = FileSource::parse_str("mesh.yaml", yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains("targetRef: not supported"), "{err}");
    }
}
