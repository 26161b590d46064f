//! `PeerAuthentication` (security.istio.io/v1): `mtls.mode` and
//! `portLevelMtls`, validated as istioctl does
//! (`ValidatePeerAuthentication`: port-level modes need a selector, at
//! least one entry, ports 1 to 65535) plus the mode names. See
//! [`crate::model::security::PeerAuthentication`] for the semantics.

use serde_json::Value;

use crate::error::{FieldPath, InvalidConfig};
use crate::file::yaml::{Fields, Obj};
use crate::model::security::MtlsMode;
use crate::model::{PeerAuthentication, PolicyScope};

/// Translates the spec of a `PeerAuthentication`. `earlier` holds the
/// policies translated before this one, for the conflict warning (Istio
/// takes the oldest of two policies at one level; a file takes the first).
pub(crate) fn translate(
    scope: PolicyScope,
    spec: Obj<'_>,
    earlier: &[PeerAuthentication],
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<PeerAuthentication, InvalidConfig> {
    spec.check_fields(
        &Fields {
            supported: &["selector", "mtls", "portLevelMtls"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mtls_path = spec.path.field("mtls");
    let mode = match spec.obj("mtls", &mtls_path)? {
        Some(mtls) => mode_of(mtls, errors, warnings)?,
        None => MtlsMode::Unset,
    };
    let has_selector = scope.selector.as_ref().is_some_and(|s| !s.is_empty());
    let ports_path = spec.path.field("portLevelMtls");
    let mut port_level = Vec::new();
    match spec.map.get("portLevelMtls") {
        None | Some(Value::Null) => {}
        Some(Value::Object(ports)) => {
            if ports.is_empty() {
                return Err(InvalidConfig::new(
                    ports_path,
                    "port level mTLS, if defined, must have at least one element",
                ));
            }
            if !has_selector {
                return Err(InvalidConfig::new(
                    ports_path,
                    "a mesh-wide or namespace-wide PeerAuthentication (no selector) cannot have \
                     port level mTLS",
                ));
            }
            for (key, value) in ports {
                let path = ports_path.key(key);
                let port = key
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| (1..=65535).contains(p))
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| {
                        InvalidConfig::new(path.clone(), "port must be in range 1..65535")
                    })?;
                let entry = Obj::new(value, &path)?;
                port_level.push((port, mode_of(entry, errors, warnings)?));
            }
        }
        Some(_) => {
            return Err(InvalidConfig::new(
                ports_path,
                "expected a mapping of port to {mode: ...}",
            ));
        }
    }
    if let Some(first) = earlier.iter().find(|p| same_level(&p.scope, &scope)) {
        let level = if has_selector {
            "has the same selector as"
        } else {
            "is also namespace-wide (or mesh-wide) like"
        };
        warnings.push(InvalidConfig::new(
            FieldPath::root(),
            format!(
                "PeerAuthentication {:?} {level} {:?} in namespace {:?}; the first in the \
                 file applies (Istio takes the oldest), this one is ignored where both apply",
                &*scope.name, &*first.scope.name, &*scope.namespace
            ),
        ));
    }
    Ok(PeerAuthentication::new(scope, mode).with_port_level(port_level))
}

/// `{mode: ...}` of `mtls` or of a `portLevelMtls` entry.
fn mode_of(
    mtls: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<MtlsMode, InvalidConfig> {
    mtls.check_fields(
        &Fields {
            supported: &["mode"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let Some(name) = mtls.str("mode")? else {
        return Ok(MtlsMode::Unset);
    };
    MtlsMode::from_name(name).ok_or_else(|| {
        InvalidConfig::new(
            mtls.path.field("mode"),
            format!("unknown mode {name:?} (expected UNSET, DISABLE, PERMISSIVE or STRICT)"),
        )
    })
}

/// Whether two scopes are the same level for every workload: one
/// namespace, and both without a selector or both with the same one.
fn same_level(a: &PolicyScope, b: &PolicyScope) -> bool {
    let selector = |s: &PolicyScope| s.selector.clone().filter(|l| !l.is_empty());
    a.namespace == b.namespace && selector(a) == selector(b)
}

#[cfg(test)]
mod tests {
    use crate::Resources;
    use crate::file::FileSource;
    use crate::model::security::MtlsMode;

    fn translate_yaml(yaml: &str) -> Result<(Resources, Vec<String>), String> {
        let t = FileSource::parse_str("mesh.yaml", yaml).map_err(|e| e.to_string())?;
        let warnings = t.warnings().to_vec();
        Ok((t.resources, warnings))
    }

    fn one(spec: &str) -> Result<crate::model::PeerAuthentication, String> {
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: p\n  \
             namespace: shop\nspec:\n{spec}"
        );
        translate_yaml(&yaml).map(|(r, _)| r.security.peer_authentications[0].clone())
    }

    #[test]
    fn reads_mode_and_port_level_modes() {
        let p = one(
            "  selector:\n    matchLabels:\n      app: cart\n  mtls:\n    mode: STRICT\n  \
             portLevelMtls:\n    8080:\n      mode: DISABLE\n    \"9090\":\n      mode: UNSET\n",
        )
        .unwrap();
        assert_eq!(p.mode, MtlsMode::Strict);
        assert_eq!(
            &*p.port_level,
            &[(8080, MtlsMode::Disable), (9090, MtlsMode::Unset)]
        );
    }

    #[test]
    fn no_mtls_is_unset() {
        assert_eq!(one("  {}\n").unwrap().mode, MtlsMode::Unset);
        assert_eq!(one("  mtls: {}\n").unwrap().mode, MtlsMode::Unset);
    }

    #[test]
    fn rejects_bad_values_with_their_place() {
        for (spec, expect) in [
            (
                "  mtls:\n    mode: strict\n",
                "mtls.mode: unknown mode \"strict\"",
            ),
            ("  mtls:\n    mod: STRICT\n", "mtls.mod: unknown field"),
            (
                "  portLevelMtls:\n    8080:\n      mode: STRICT\n",
                "portLevelMtls: a mesh-wide or namespace-wide",
            ),
            (
                "  selector:\n    matchLabels:\n      app: a\n  portLevelMtls:\n    0:\n      \
                 mode: STRICT\n",
                "portLevelMtls[\"0\"]: port must be in range 1..65535",
            ),
            (
                "  selector:\n    matchLabels:\n      app: a\n  portLevelMtls:\n    70000:\n      \
                 mode: STRICT\n",
                "port must be in range",
            ),
            (
                "  selector:\n    matchLabels:\n      app: a\n  portLevelMtls: {}\n",
                "must have at least one element",
            ),
            (
                "  targetRef:\n    kind: Service\n",
                "targetRef: unknown field",
            ),
        ] {
            let err = one(spec).unwrap_err();
            assert!(err.contains(expect), "{spec}: {err}");
            assert!(err.contains("PeerAuthentication p"), "{err}");
        }
    }

    #[test]
    fn warns_when_two_policies_share_a_level() {
        let doc = |name: &str| {
            format!(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: \
                 {name}\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n"
            )
        };
        let yaml = format!("{}---\n{}", doc("first"), doc("second"));
        let (resources, warnings) = translate_yaml(&yaml).unwrap();
        assert_eq!(resources.security.peer_authentications.len(), 2);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("\"second\"") && w.contains("\"first\"")),
            "{warnings:?}"
        );
    }
}
