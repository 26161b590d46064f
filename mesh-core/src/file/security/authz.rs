//! `AuthorizationPolicy` (security.istio.io/v1).
//!
//! Every field of Istio's API is read; what this project cannot honour is
//! an error, never ignored, because a security policy that is applied in
//! part is weaker than the one written: `action: CUSTOM` and `provider`
//! (external authorization), `targetRef(s)` (gateways and waypoints),
//! path templates (`{*}`, `{**}`), and the condition keys
//! `connection.sni` and `experimental.envoy.filters.*`. The checks of
//! Istio's own validation (istio.io, "Authorization Policy" reference;
//! `pkg/config/validation` in istio/istio) apply too: `from` and `to`
//! may not be empty lists, a `source` or `operation` must set a field, a
//! condition needs `values` or `notValues`, and values of addresses and
//! ports must parse.
//!
//! The dry-run annotation `istio.io/dry-run` takes Go's boolean spellings
//! (`true`, `false`, `1`, `0`, `t`, `f`, ...), as istiod parses it with
//! `strconv.ParseBool`; any other value is an error.

use std::str::FromStr;
use std::sync::Arc;

use http::HeaderName;
use serde_json::Value;

use crate::error::{FieldPath, InvalidConfig};
use crate::file::yaml::{Fields, Obj, int_value};
use crate::model::security::{
    AuthzAction, AuthzRule, Condition, ConditionKey, ConditionValues, IpBlock, OneOf, Operation,
    ServiceAccount, Source, StrPattern,
};
use crate::model::{AuthorizationPolicy, PolicyScope};

/// The annotation that makes a policy dry-run.
pub(crate) const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Translates the spec of a `AuthorizationPolicy`. Every problem is
/// pushed to `errors`; the policy is returned only when there is none.
pub(crate) fn translate(
    scope: PolicyScope,
    metadata: Option<Obj<'_>>,
    spec: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<AuthorizationPolicy, InvalidConfig> {
    let before = errors.len();
    let dry_run = match metadata.map(dry_run).transpose() {
        Ok(d) => d.flatten().unwrap_or(false),
        Err(e) => {
            errors.push(e);
            false
        }
    };
    spec.check_fields(
        &Fields {
            supported: &["selector", "action", "rules"],
            unsupported: &[],
            ignored: &["provider", "targetRef", "targetRefs"],
        },
        errors,
        warnings,
    );
    for key in ["targetRef", "targetRefs"] {
        if spec.get(key).is_some() {
            errors.push(InvalidConfig::new(
                spec.path.field(key),
                "not supported: policies attach to workloads by `selector` only",
            ));
        }
    }
    if spec.get("provider").is_some() {
        errors.push(InvalidConfig::new(
            spec.path.field("provider"),
            "not supported: external authorization (action CUSTOM) is not implemented",
        ));
    }
    let action = match spec.str("action") {
        Ok(None | Some("ALLOW")) => AuthzAction::Allow,
        Ok(Some("DENY")) => AuthzAction::Deny,
        Ok(Some("AUDIT")) => AuthzAction::Audit,
        Ok(Some("CUSTOM")) => {
            errors.push(InvalidConfig::new(
                spec.path.field("action"),
                "CUSTOM is not supported: external authorization is not implemented",
            ));
            AuthzAction::Deny
        }
        Ok(Some(other)) => {
            errors.push(InvalidConfig::new(
                spec.path.field("action"),
                format!("unknown action {other:?} (expected ALLOW, DENY or AUDIT)"),
            ));
            AuthzAction::Deny
        }
        Err(e) => {
            errors.push(e);
            AuthzAction::Deny
        }
    };
    let mut rules = Vec::new();
    match spec.list("rules") {
        Ok(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = spec.path.field("rules").index(i);
                if let Some(r) = collect(rule(item, &path, errors, warnings), errors) {
                    rules.push(r);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    match errors.len() > before {
        // The caller reports `errors`; this one is the last of them.
        true => Err(errors.pop().unwrap_or_else(|| {
            InvalidConfig::new(FieldPath::root(), "invalid AuthorizationPolicy")
        })),
        false => Ok(AuthorizationPolicy {
            scope,
            action,
            rules: rules.into(),
            dry_run,
        }),
    }
}

fn collect<T>(r: Result<T, InvalidConfig>, errors: &mut Vec<InvalidConfig>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

fn dry_run(meta: Obj<'_>) -> Result<Option<bool>, InvalidConfig> {
    let annotations = meta.str_map("annotations")?;
    let Some((_, value)) = annotations.iter().find(|(k, _)| *k == DRY_RUN_ANNOTATION) else {
        return Ok(None);
    };
    match *value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Some(true)),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Some(false)),
        other => Err(InvalidConfig::new(
            meta.path.field("annotations").key(DRY_RUN_ANNOTATION),
            format!("expected \"true\" or \"false\", found {other:?}"),
        )),
    }
}

fn rule(
    value: &Value,
    path: &FieldPath,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<AuthzRule, InvalidConfig> {
    let obj = Obj::new(value, path)?;
    obj.check_fields(
        &Fields {
            supported: &["from", "to", "when"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let from = items(&obj, "from", "source", errors, warnings, source)?;
    let to = items(&obj, "to", "operation", errors, warnings, operation)?;
    let mut when = Vec::new();
    for (i, item) in obj.list("when")?.iter().enumerate() {
        let p = path.field("when").index(i);
        if let Some(c) = collect(condition(item, &p, errors, warnings), errors) {
            when.push(c);
        }
    }
    Ok(AuthzRule {
        from: from.into(),
        to: to.into(),
        when: when.into(),
    })
}

type Parse<T> = fn(Obj<'_>) -> Result<T, InvalidConfig>;

/// `from: [{source: ..}]` or `to: [{operation: ..}]`.
fn items<T>(
    rule: &Obj<'_>,
    key: &str,
    inner: &str,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
    parse: Parse<T>,
) -> Result<Vec<T>, InvalidConfig> {
    if matches!(rule.get(key), Some(Value::Array(a)) if a.is_empty()) {
        return Err(InvalidConfig::new(
            rule.path.field(key),
            "must not be empty (omit it to match any)",
        ));
    }
    let mut out = Vec::new();
    for (i, item) in rule.list(key)?.iter().enumerate() {
        let path = rule.path.field(key).index(i);
        let Some(o) = collect(Obj::new(item, &path), errors) else {
            continue;
        };
        o.check_fields(
            &Fields {
                supported: &[inner],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let inner_path = path.field(inner);
        match o.obj(inner, &inner_path) {
            Ok(Some(v)) => {
                let before = errors.len();
                let (mut e, mut w) = (Vec::new(), Vec::new());
                v.check_fields(&fields_of(inner), &mut e, &mut w);
                errors.extend(e);
                warnings.extend(w);
                if let Some(t) = collect(parse(v), errors)
                    && errors.len() == before
                {
                    out.push(t);
                }
            }
            Ok(None) => errors.push(InvalidConfig::new(inner_path, "required")),
            Err(e) => errors.push(e),
        }
    }
    Ok(out)
}

const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

fn fields_of(inner: &str) -> Fields<'static> {
    Fields {
        supported: if inner == "source" {
            SOURCE_FIELDS
        } else {
            OPERATION_FIELDS
        },
        unsupported: &[],
        ignored: &[],
    }
}

/// A field and its `not*` twin, each value parsed by `parse`.
fn one_of<T>(
    obj: &Obj<'_>,
    key: &str,
    not_key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<OneOf<T>, InvalidConfig> {
    let read = |k: &str| -> Result<Vec<T>, InvalidConfig> {
        obj.str_list(k)?
            .into_iter()
            .enumerate()
            .map(|(i, s)| parse(s).map_err(|m| InvalidConfig::new(obj.path.field(k).index(i), m)))
            .collect()
    };
    Ok(OneOf::new(read(key)?, read(not_key)?))
}

fn pattern(s: &str) -> Result<StrPattern, String> {
    StrPattern::parse(s).map_err(|e| e.to_string())
}

fn ip_block(s: &str) -> Result<IpBlock, String> {
    IpBlock::from_str(s).map_err(|e| e.to_string())
}

fn port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("{s:?} is not a port (0 to 65535)"))
}

fn service_account(s: &str) -> Result<ServiceAccount, String> {
    match s.split_once('/') {
        Some((ns, name))
            if !ns.is_empty() && !name.is_empty() && !name.contains('/') && !s.contains('*') =>
        {
            Ok(ServiceAccount {
                namespace: ns.into(),
                name: name.into(),
            })
        }
        _ => Err(format!(
            "{s:?} is not a service account (expected <namespace>/<name>, no wildcards)"
        )),
    }
}

fn path_pattern(s: &str) -> Result<StrPattern, String> {
    if s.contains('{') || s.contains('}') {
        return Err(format!(
            "{s:?}: path templates ({{*}}, {{**}}) are not supported"
        ));
    }
    pattern(s)
}

fn source(obj: Obj<'_>) -> Result<Source, InvalidConfig> {
    let s = Source {
        principals: one_of(&obj, "principals", "notPrincipals", pattern)?,
        request_principals: one_of(&obj, "requestPrincipals", "notRequestPrincipals", pattern)?,
        namespaces: one_of(&obj, "namespaces", "notNamespaces", pattern)?,
        service_accounts: one_of(
            &obj,
            "serviceAccounts",
            "notServiceAccounts",
            service_account,
        )?,
        ip_blocks: one_of(&obj, "ipBlocks", "notIpBlocks", ip_block)?,
        remote_ip_blocks: one_of(&obj, "remoteIpBlocks", "notRemoteIpBlocks", ip_block)?,
    };
    if s.principals.is_unset()
        && s.request_principals.is_unset()
        && s.namespaces.is_unset()
        && s.service_accounts.is_unset()
        && s.ip_blocks.is_unset()
        && s.remote_ip_blocks.is_unset()
    {
        return Err(InvalidConfig::new(
            obj.path.clone(),
            "must set at least one field (an empty source would match every request)",
        ));
    }
    // Istio's validation: service accounts name the peer by themselves.
    let names_peer = !s.principals.is_unset() || !s.namespaces.is_unset();
    if !s.service_accounts.is_unset() && names_peer {
        return Err(InvalidConfig::new(
            obj.path.field("serviceAccounts"),
            "cannot be set together with principals or namespaces",
        ));
    }
    Ok(s)
}

fn operation(obj: Obj<'_>) -> Result<Operation, InvalidConfig> {
    let hosts = one_of(&obj, "hosts", "notHosts", |s| {
        pattern(s).map(|p| p.to_ascii_lowercase())
    })?;
    let ports = OneOf::new(port_list(&obj, "ports")?, port_list(&obj, "notPorts")?);
    let o = Operation {
        hosts,
        ports,
        methods: one_of(&obj, "methods", "notMethods", pattern)?,
        paths: one_of(&obj, "paths", "notPaths", path_pattern)?,
    };
    if o.hosts.is_unset() && o.ports.is_unset() && o.methods.is_unset() && o.paths.is_unset() {
        return Err(InvalidConfig::new(
            obj.path.clone(),
            "must set at least one field (an empty operation would match every request)",
        ));
    }
    Ok(o)
}

/// Ports are strings in Istio's API; plain integers are accepted too.
fn port_list(obj: &Obj<'_>, key: &str) -> Result<Vec<u16>, InvalidConfig> {
    obj.list(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let path = obj.path.field(key).index(i);
            match v {
                Value::String(s) => port(s).map_err(|m| InvalidConfig::new(path, m)),
                other => int_value(other, &path, 0, 65535).map(|n| n as u16),
            }
        })
        .collect()
}

/// The parsed `key` of a condition, and the kind of its values.
enum Kind {
    Strings,
    Ips,
    Ports,
}

fn condition_key(key: &str) -> Result<(ConditionKey, Kind), String> {
    let simple = match key {
        "source.ip" => Some((ConditionKey::SourceIp, Kind::Ips)),
        "remote.ip" => Some((ConditionKey::RemoteIp, Kind::Ips)),
        "destination.ip" => Some((ConditionKey::DestinationIp, Kind::Ips)),
        "destination.port" => Some((ConditionKey::DestinationPort, Kind::Ports)),
        "source.namespace" => Some((ConditionKey::SourceNamespace, Kind::Strings)),
        "source.principal" => Some((ConditionKey::SourcePrincipal, Kind::Strings)),
        "request.auth.principal" => Some((ConditionKey::AuthPrincipal, Kind::Strings)),
        "request.auth.audiences" => Some((ConditionKey::AuthAudiences, Kind::Strings)),
        "request.auth.presenter" => Some((ConditionKey::AuthPresenter, Kind::Strings)),
        _ => None,
    };
    if let Some(k) = simple {
        return Ok(k);
    }
    if let Some(rest) = key.strip_prefix("request.headers") {
        let name = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
            .ok_or_else(|| format!("{key:?}: expected request.headers[<name>]"))?;
        if name.starts_with(':') {
            return Err(format!(
                "{key:?}: pseudo-headers are not supported; use hosts, methods or paths"
            ));
        }
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{key:?}: invalid header name {name:?}"))?;
        return Ok((ConditionKey::RequestHeader(header), Kind::Strings));
    }
    if let Some(mut rest) = key.strip_prefix("request.auth.claims") {
        let mut path: Vec<Arc<str>> = Vec::new();
        while !rest.is_empty() {
            let (name, tail) = rest
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .filter(|(n, _)| !n.is_empty() && !n.contains('['))
                .ok_or_else(|| {
                    format!("{key:?}: expected request.auth.claims[<name>] or [<name>][<nested>]")
                })?;
            path.push(name.into());
            rest = tail;
        }
        if path.is_empty() {
            return Err(format!("{key:?}: expected request.auth.claims[<name>]"));
        }
        return Ok((ConditionKey::AuthClaim(path.into()), Kind::Strings));
    }
    if key == "connection.sni" || key.starts_with("experimental.envoy.filters.") {
        return Err(format!("{key:?} is not supported"));
    }
    Err(format!("unknown condition key {key:?}"))
}

fn condition(
    value: &Value,
    path: &FieldPath,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Condition, InvalidConfig> {
    let obj = Obj::new(value, path)?;
    obj.check_fields(
        &Fields {
            supported: &["key", "values", "notValues"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let key = obj.req_str("key")?;
    let (key, kind) = condition_key(key).map_err(|m| InvalidConfig::new(path.field("key"), m))?;
    if obj.list("values")?.is_empty() && obj.list("notValues")?.is_empty() {
        return Err(InvalidConfig::new(
            path.clone(),
            "at least one of values or notValues must be set",
        ));
    }
    let values = match kind {
        Kind::Strings => ConditionValues::Strings(one_of(&obj, "values", "notValues", pattern)?),
        Kind::Ips => ConditionValues::Ips(one_of(&obj, "values", "notValues", ip_block)?),
        Kind::Ports => ConditionValues::Ports(one_of(&obj, "values", "notValues", port)?),
    };
    Ok(Condition { key, values })
}
