//! `DestinationRule.trafficPolicy` translated into cluster settings:
//! `connectionPool`, `outlierDetection`, `loadBalancer` and `tls`, at the
//! top level, per subset and in `portLevelSettings`.
//!
//! Each setting is taken whole from the most specific place that sets it,
//! in Istio's order: the subset's port-level settings, the subset, the
//! rule's port-level settings, the rule (istio.io DestinationRule
//! reference: "subset-level policies override the top-level ones";
//! `portLevelSettings` "override the destination-level settings").
//! Istio's protobuf defaults apply where a field is absent or 0, and each
//! default is cited on the model type it lives on.

use std::collections::BTreeMap;
use std::time::Duration;

use super::duration;
use super::yaml::{Fields, Obj};
use std::sync::Arc;

use crate::error::{FieldPath, InvalidConfig};
use serde_json::Value;

use crate::model::{
    Cluster, ConnectionLimits, HashKey, IstioMutualTls, LbPolicy, LocalityLbSetting,
    OutlierDetection, PemFile, ServerVerification, SlowStart, TlsOrigination, UpstreamTls,
};

/// The settings of one `trafficPolicy` (or one of its port-level
/// entries); `None` where it says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PolicySettings {
    pub(crate) lb: Option<LbPolicy>,
    pub(crate) slow_start: Option<SlowStart>,
    pub(crate) locality: Option<LocalityLbSetting>,
    pub(crate) pool: Option<PoolSettings>,
    pub(crate) outlier: Option<OutlierDetection>,
    /// `tls`: `Some(None)` is `mode: DISABLE`.
    pub(crate) tls: Option<Option<UpstreamTls>>,
}

/// `connectionPool`: the limits and the connect timeout.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PoolSettings {
    pub(crate) limits: ConnectionLimits,
    pub(crate) connect_timeout: Duration,
    // Where `maxRequestsPerConnection` was set, for the HTTP/1.1 check.
    pub(crate) per_connection_path: Option<FieldPath>,
}

/// A `trafficPolicy` with its `portLevelSettings`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TrafficPolicy {
    pub(crate) top: PolicySettings,
    pub(crate) per_port: BTreeMap<u16, PolicySettings>,
}

impl TrafficPolicy {
    fn get<T: Clone>(&self, port: u16, f: impl Fn(&PolicySettings) -> Option<&T>) -> Option<T> {
        self.per_port
            .get(&port)
            .and_then(&f)
            .or_else(|| f(&self.top))
            .cloned()
    }
}

/// Applies the policies that cover `port` to `cluster`: the subset's
/// first, then the rule's. Fails for `maxRequestsPerConnection` above 1 on
/// an HTTP/1.1 port, which the HTTP/1.1 pool (hyper-util's) cannot count.
pub(crate) fn apply(
    cluster: &mut Cluster,
    subset: Option<&TrafficPolicy>,
    rule: Option<&TrafficPolicy>,
    port: u16,
) -> Result<(), InvalidConfig> {
    fn most_specific<T: Clone>(
        subset: Option<&TrafficPolicy>,
        rule: Option<&TrafficPolicy>,
        port: u16,
        f: impl Fn(&PolicySettings) -> Option<&T> + Copy,
    ) -> Option<T> {
        subset
            .and_then(|s| s.get(port, f))
            .or_else(|| rule.and_then(|r| r.get(port, f)))
    }
    if let Some(lb) = most_specific(subset, rule, port, |s| s.lb.as_ref()) {
        cluster.lb_policy = lb;
    }
    cluster.slow_start = most_specific(subset, rule, port, |s| s.slow_start.as_ref());
    cluster.locality_lb = most_specific(subset, rule, port, |s| s.locality.as_ref());
    if let Some(pool) = most_specific(subset, rule, port, |s| s.pool.as_ref()) {
        if let (Some(n @ 2..), Some(path), crate::model::Protocol::Http1) = (
            pool.limits.max_requests_per_connection,
            &pool.per_connection_path,
            cluster.protocol,
        ) {
            return Err(InvalidConfig::new(
                path.clone(),
                format!(
                    "{n} is not supported on HTTP/1.1 ports: only 0 (unlimited) and 1 (no keep-alive) are"
                ),
            ));
        }
        cluster.limits = pool.limits;
        cluster.connect_timeout = pool.connect_timeout;
    }
    cluster.outlier_detection = most_specific(subset, rule, port, |s| s.outlier.as_ref());
    cluster.tls = most_specific(subset, rule, port, |s| s.tls.as_ref()).flatten();
    Ok(())
}

/// Reads a `trafficPolicy` object.
pub(crate) fn traffic_policy(
    policy: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<TrafficPolicy, InvalidConfig> {
    policy.check_fields(
        &Fields {
            supported: &[
                "loadBalancer",
                "connectionPool",
                "outlierDetection",
                "portLevelSettings",
                "tls",
            ],
            unsupported: &["proxyProtocol", "tunnel", "retryBudget"],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut out = TrafficPolicy {
        top: settings(&policy, errors, warnings)?,
        per_port: BTreeMap::new(),
    };
    for (i, v) in policy.list("portLevelSettings")?.iter().enumerate() {
        let path = policy.path.field("portLevelSettings").index(i);
        let pls = Obj::new(v, &path)?;
        pls.check_fields(
            &Fields {
                supported: &[
                    "port",
                    "loadBalancer",
                    "connectionPool",
                    "outlierDetection",
                    "tls",
                ],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let port_path = path.field("port");
        let port = pls
            .obj("port", &port_path)?
            .ok_or_else(|| InvalidConfig::new(port_path.clone(), "required"))?;
        let number = port
            .int("number", 1, 65535)?
            .ok_or_else(|| InvalidConfig::new(port_path.field("number"), "required"))?
            as u16;
        if out.per_port.contains_key(&number) {
            return Err(InvalidConfig::new(
                port_path.field("number"),
                format!("duplicate port {number}"),
            ));
        }
        out.per_port
            .insert(number, settings(&pls, errors, warnings)?);
    }
    Ok(out)
}

fn settings(
    obj: &Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<PolicySettings, InvalidConfig> {
    let mut out = PolicySettings::default();
    let lb_path = obj.path.field("loadBalancer");
    if let Some(lb) = obj.obj("loadBalancer", &lb_path)? {
        (out.lb, out.slow_start, out.locality) = load_balancer(lb, errors, warnings)?;
    }
    let cp_path = obj.path.field("connectionPool");
    if let Some(cp) = obj.obj("connectionPool", &cp_path)? {
        out.pool = Some(connection_pool(cp, errors, warnings)?);
    }
    let od_path = obj.path.field("outlierDetection");
    if let Some(od) = obj.obj("outlierDetection", &od_path)? {
        out.outlier = Some(outlier_detection(od, errors, warnings)?);
    }
    let tls_path = obj.path.field("tls");
    if let Some(t) = obj.obj("tls", &tls_path)? {
        out.tls = Some(tls(t, errors, warnings)?);
    }
    Ok(out)
}

/// `tls` (Istio `ClientTLSSettings`): `None` for `DISABLE`.
///
/// Certificate files are read now, so that an unreadable or malformed
/// file is a config error naming the field and the file rather than a
/// failed request later. What cannot be honoured (`credentialName`, a
/// Kubernetes secret) is an error, never ignored: ignoring a security
/// setting would weaken it silently. `SIMPLE` and `MUTUAL` need
/// `caCertificates`, since the client has no system root store, unless
/// `insecureSkipVerify: true` says not to verify at all.
pub(crate) fn tls(
    t: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Option<UpstreamTls>, InvalidConfig> {
    t.check_fields(
        &Fields {
            supported: &[
                "mode",
                "clientCertificate",
                "privateKey",
                "caCertificates",
                "subjectAltNames",
                "sni",
                "insecureSkipVerify",
                "caCrl",
            ],
            unsupported: &[],
            // An error below: it cannot be honoured.
            ignored: &["credentialName"],
        },
        errors,
        warnings,
    );
    if t.get("credentialName").is_some() {
        return Err(InvalidConfig::new(
            t.path.field("credentialName"),
            "not supported: the mesh client cannot read Kubernetes secrets; set clientCertificate, privateKey and caCertificates to files",
        ));
    }
    let mode = t.str("mode")?.unwrap_or("DISABLE");
    let sni = match t.str("sni")? {
        None => None,
        Some(s) => {
            if s.is_empty() || rustls_pki_types::ServerName::try_from(s).is_err() {
                return Err(InvalidConfig::new(
                    t.path.field("sni"),
                    format!("invalid server name {s:?}"),
                ));
            }
            Some(Arc::<str>::from(s))
        }
    };
    let sans = t.str_list("subjectAltNames")?;
    for (i, san) in sans.iter().enumerate() {
        if san.is_empty() {
            return Err(InvalidConfig::new(
                t.path.field("subjectAltNames").index(i),
                "empty subject alt name",
            ));
        }
    }
    let sans: Arc<[Arc<str>]> = sans.into_iter().map(Arc::from).collect();
    let skip = t.bool("insecureSkipVerify")?.unwrap_or(false);
    let set = |key: &str| t.get(key).is_some();
    match mode {
        "DISABLE" => {
            for key in [
                "clientCertificate",
                "privateKey",
                "caCertificates",
                "subjectAltNames",
                "sni",
                "insecureSkipVerify",
            ] {
                if set(key) {
                    warnings.push(InvalidConfig::new(
                        t.path.field(key),
                        "ignored with mode DISABLE (plaintext)",
                    ));
                }
            }
            Ok(None)
        }
        "SIMPLE" | "MUTUAL" => {
            let verify = if skip {
                for key in ["caCertificates", "subjectAltNames", "caCrl"] {
                    if set(key) {
                        return Err(InvalidConfig::new(
                            t.path.field(key),
                            "set either insecureSkipVerify: true or caCertificates, subjectAltNames and caCrl, not both",
                        ));
                    }
                }
                warnings.push(InvalidConfig::new(
                    t.path.field("insecureSkipVerify"),
                    "the server's certificate is not verified",
                ));
                ServerVerification::InsecureSkipVerify
            } else {
                let ca = t.str("caCertificates")?.ok_or_else(|| {
                    InvalidConfig::new(
                        t.path.field("caCertificates"),
                        format!(
                            "required for {mode}: the mesh client has no system root store (set insecureSkipVerify: true to skip verification)"
                        ),
                    )
                })?;
                ServerVerification::Verify {
                    ca_certificates: pem_file(&t, "caCertificates", ca, Pem::Certificates)?,
                    subject_alt_names: sans,
                    ca_crl: match t.str("caCrl")? {
                        Some(path) => Some(pem_file(&t, "caCrl", path, Pem::Crls)?),
                        None => None,
                    },
                }
            };
            let origination = TlsOrigination { verify, sni };
            if mode == "SIMPLE" {
                for key in ["clientCertificate", "privateKey"] {
                    if set(key) {
                        warnings.push(InvalidConfig::new(
                            t.path.field(key),
                            "ignored with mode SIMPLE (no client certificate is sent; MUTUAL sends one)",
                        ));
                    }
                }
                return Ok(Some(UpstreamTls::Simple(origination)));
            }
            let file = |key: &str, kind: Pem| -> Result<PemFile, InvalidConfig> {
                let path = t
                    .str(key)?
                    .ok_or_else(|| InvalidConfig::new(t.path.field(key), "required for MUTUAL"))?;
                pem_file(&t, key, path, kind)
            };
            Ok(Some(UpstreamTls::Mutual {
                certificate: file("clientCertificate", Pem::Certificates)?,
                private_key: file("privateKey", Pem::PrivateKey)?,
                origination,
            }))
        }
        "ISTIO_MUTUAL" => {
            for key in [
                "clientCertificate",
                "privateKey",
                "caCertificates",
                "insecureSkipVerify",
                "caCrl",
            ] {
                if set(key) {
                    return Err(InvalidConfig::new(
                        t.path.field(key),
                        "not allowed with ISTIO_MUTUAL, which uses the workload's own certificate and the mesh's trust bundle",
                    ));
                }
            }
            for (i, san) in sans.iter().enumerate() {
                if !san.starts_with("spiffe://") {
                    return Err(InvalidConfig::new(
                        t.path.field("subjectAltNames").index(i),
                        format!(
                            "{san:?} is not a SPIFFE ID (spiffe://<trust domain>/<path>): an ISTIO_MUTUAL server is identified by its SVID"
                        ),
                    ));
                }
            }
            Ok(Some(UpstreamTls::IstioMutual(IstioMutualTls {
                sni,
                subject_alt_names: sans,
                service_subject_alt_names: Arc::from([]),
                service_accounts: Arc::from([]),
            })))
        }
        other => Err(InvalidConfig::new(
            t.path.field("mode"),
            format!("unknown mode {other:?} (expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)"),
        )),
    }
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
    Crls,
}

/// Reads the PEM file `path` named by `key` and checks it holds what
/// `kind` says.
fn pem_file(t: &Obj<'_>, key: &str, path: &str, kind: Pem) -> Result<PemFile, InvalidConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

    let field = t.path.field(key);
    if path.is_empty() {
        return Err(InvalidConfig::new(field, "empty file path"));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| InvalidConfig::new(field.clone(), format!("cannot read {path:?}: {e}")))?;
    match kind {
        Pem::Certificates => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    InvalidConfig::new(field.clone(), format!("{path:?} is not valid PEM: {e}"))
                })?;
            if certs.is_empty() {
                return Err(InvalidConfig::new(
                    field,
                    format!("{path:?} holds no PEM certificate"),
                ));
            }
        }
        Pem::Crls => {
            let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    InvalidConfig::new(field.clone(), format!("{path:?} is not valid PEM: {e}"))
                })?;
            if crls.is_empty() {
                return Err(InvalidConfig::new(
                    field,
                    format!("{path:?} holds no PEM certificate revocation list (X509 CRL)"),
                ));
            }
        }
        Pem::PrivateKey => {
            // Never quote the file: it is a secret.
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                InvalidConfig::new(field, format!("{path:?} holds no usable private key: {e}"))
            })?;
        }
    }
    Ok(PemFile::new(path, bytes))
}

/// Envoy's default `maximum_ring_size`, 8M (`RingHashLbConfig`).
const MAX_RING_SIZE: u64 = 8 << 20;
/// Istio's default `minimumRingSize`, 1024 (`ConsistentHashLB.RingHash`).
const MIN_RING_SIZE: u64 = 1024;

/// What a `loadBalancer` sets: the policy, slow start and locality
/// balancing.
type LoadBalancer = (
    Option<LbPolicy>,
    Option<SlowStart>,
    Option<LocalityLbSetting>,
);

/// `loadBalancer`: the policy, the slow start and locality balancing.
pub(crate) fn load_balancer(
    lb: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<LoadBalancer, InvalidConfig> {
    lb.check_fields(
        &Fields {
            supported: &[
                "simple",
                "consistentHash",
                "warmupDurationSecs",
                "warmup",
                "localityLbSetting",
            ],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let simple = match lb.str("simple")? {
        None | Some("UNSPECIFIED") => None,
        Some("ROUND_ROBIN") => Some(LbPolicy::RoundRobin),
        Some("RANDOM") => Some(LbPolicy::Random),
        // LEAST_CONN is Istio's deprecated alias of LEAST_REQUEST.
        Some("LEAST_REQUEST") | Some("LEAST_CONN") => {
            Some(LbPolicy::LeastRequest { choice_count: 2 })
        }
        Some("PASSTHROUGH") => {
            return Err(InvalidConfig::new(
                lb.path.field("simple"),
                "PASSTHROUGH is not supported: the mesh client always picks an endpoint",
            ));
        }
        Some(other) => {
            return Err(InvalidConfig::new(
                lb.path.field("simple"),
                format!("unknown policy {other:?} (expected ROUND_ROBIN, LEAST_REQUEST or RANDOM)"),
            ));
        }
    };
    let ch_path = lb.path.field("consistentHash");
    let hash = match lb.obj("consistentHash", &ch_path)? {
        None => None,
        Some(_) if simple.is_some() => {
            return Err(InvalidConfig::new(
                ch_path,
                "set either simple or consistentHash, not both",
            ));
        }
        Some(ch) => Some(consistent_hash(ch, errors, warnings)?),
    };
    let policy = hash.or(simple);

    let warmup_path = lb.path.field("warmup");
    let slow_start = match (
        lb.obj("warmup", &warmup_path)?,
        lb.str("warmupDurationSecs")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(InvalidConfig::new(
                lb.path.field("warmupDurationSecs"),
                "set either warmup or the deprecated warmupDurationSecs, not both",
            ));
        }
        (None, None) => None,
        (None, Some(_)) => positive_duration(&lb, "warmupDurationSecs")?.map(|window| SlowStart {
            window,
            min_weight_percent: 10,
            aggression: 1.0,
        }),
        (Some(w), None) => Some(warmup(w, errors, warnings)?),
    };
    if slow_start.is_some()
        && !matches!(
            policy,
            None | Some(LbPolicy::RoundRobin | LbPolicy::LeastRequest { .. })
        )
    {
        return Err(InvalidConfig::new(
            lb.path.clone(),
            "warmup applies only to ROUND_ROBIN and LEAST_REQUEST",
        ));
    }
    let loc_path = lb.path.field("localityLbSetting");
    let locality = match lb.obj("localityLbSetting", &loc_path)? {
        Some(l) => Some(locality_lb(l, errors, warnings)?),
        None => None,
    };
    Ok((policy, slow_start, locality))
}

/// Istio `LocalityLoadBalancerSetting`.
fn locality_lb(
    l: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<LocalityLbSetting, InvalidConfig> {
    l.check_fields(
        &Fields {
            supported: &["enabled", "distribute", "failover", "failoverPriority"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut out = LocalityLbSetting {
        enabled: l.bool("enabled")?.unwrap_or(true),
        ..LocalityLbSetting::default()
    };
    let check_locality = |s: &str, path: FieldPath| -> Result<Arc<str>, InvalidConfig> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = s.is_empty()
            || parts.len() > 3
            || parts.iter().any(|p| p.is_empty())
            || parts
                .iter()
                .enumerate()
                .any(|(i, p)| p.contains('*') && (*p != "*" || i + 1 != parts.len()));
        if bad {
            return Err(InvalidConfig::new(
                path,
                format!(
                    "invalid locality {s:?} (expected region/zone/subzone, ending in * to match any)"
                ),
            ));
        }
        Ok(s.into())
    };
    let mut distribute = Vec::new();
    for (i, v) in l.list("distribute")?.iter().enumerate() {
        let path = l.path.field("distribute").index(i);
        let d = Obj::new(v, &path)?;
        d.check_fields(
            &Fields {
                supported: &["from", "to"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let from = check_locality(d.req_str("from")?, path.field("from"))?;
        let to_path = path.field("to");
        let mut to = Vec::new();
        let mut sum = 0i64;
        match d.get("to") {
            Some(Value::Object(m)) if !m.is_empty() => {
                for (k, v) in m {
                    let loc = check_locality(k, to_path.key(k))?;
                    let w = super::yaml::int_value(v, &to_path.key(k), 1, 100)?;
                    sum += w;
                    to.push((loc, w as u32));
                }
            }
            _ => {
                return Err(InvalidConfig::new(
                    to_path,
                    "required: a mapping of localities to weights",
                ));
            }
        }
        if sum != 100 {
            return Err(InvalidConfig::new(
                to_path,
                format!("weights sum to {sum}, expected 100"),
            ));
        }
        distribute.push((from, Arc::from(to)));
    }
    let mut failover = Vec::new();
    for (i, v) in l.list("failover")?.iter().enumerate() {
        let path = l.path.field("failover").index(i);
        let f = Obj::new(v, &path)?;
        f.check_fields(
            &Fields {
                supported: &["from", "to"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        let from = f.req_str("from")?;
        let to = f.req_str("to")?;
        for (key, r) in [("from", from), ("to", to)] {
            if r.is_empty() || r.contains('/') || r.contains('*') {
                return Err(InvalidConfig::new(
                    path.field(key),
                    format!("invalid region {r:?} (failover is between regions)"),
                ));
            }
        }
        if from == to {
            return Err(InvalidConfig::new(
                path.field("to"),
                format!("failover from {from:?} to itself"),
            ));
        }
        failover.push((Arc::from(from), Arc::from(to)));
    }
    if !distribute.is_empty() && !failover.is_empty() {
        return Err(InvalidConfig::new(
            l.path.field("failover"),
            "set either distribute or failover, not both",
        ));
    }
    out.distribute = distribute.into();
    out.failover = failover.into();
    out.failover_priority = l
        .str_list("failoverPriority")?
        .into_iter()
        .map(Arc::from)
        .collect();
    Ok(out)
}

/// Istio `WarmupConfiguration`: `duration` (required), `minimumPercent`
/// (default 10), `aggression` (default 1.0).
fn warmup(
    w: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<SlowStart, InvalidConfig> {
    w.check_fields(
        &Fields {
            supported: &["duration", "minimumPercent", "aggression"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let window = positive_duration(&w, "duration")?
        .ok_or_else(|| InvalidConfig::new(w.path.field("duration"), "required"))?;
    let number = |key: &str, min: f64, max: f64| -> Result<Option<f64>, InvalidConfig> {
        match w.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ if max == f64::MAX => Err(InvalidConfig::new(
                    w.path.field(key),
                    format!("{n} is less than {min}"),
                )),
                _ => Err(InvalidConfig::new(
                    w.path.field(key),
                    format!("{n} is out of range ({min} to {max})"),
                )),
            },
            Some(_) => Err(InvalidConfig::new(w.path.field(key), "expected a number")),
        }
    };
    Ok(SlowStart {
        window,
        min_weight_percent: number("minimumPercent", 0.0, 100.0)?
            .unwrap_or(10.0)
            .round() as u32,
        aggression: number("aggression", 1.0, f64::MAX)?.unwrap_or(1.0),
    })
}

/// Istio `ConsistentHashLB`: one hash key, over a ring (default) or
/// Maglev.
fn consistent_hash(
    ch: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<LbPolicy, InvalidConfig> {
    ch.check_fields(
        &Fields {
            supported: &[
                "httpHeaderName",
                "httpCookie",
                "useSourceIp",
                "httpQueryParameterName",
                "ringHash",
                "maglev",
                "minimumRingSize",
            ],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut keys = Vec::new();
    if let Some(h) = ch.str("httpHeaderName")? {
        let name = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            InvalidConfig::new(
                ch.path.field("httpHeaderName"),
                format!("invalid header name {h:?}"),
            )
        })?;
        keys.push(HashKey::Header(name));
    }
    let cookie_path = ch.path.field("httpCookie");
    if let Some(c) = ch.obj("httpCookie", &cookie_path)? {
        c.check_fields(
            &Fields {
                supported: &["name", "path", "ttl", "attributes"],
                unsupported: &[],
                ignored: &[],
            },
            errors,
            warnings,
        );
        if c.get("attributes").is_some() {
            return Err(InvalidConfig::new(
                cookie_path.field("attributes"),
                "not supported",
            ));
        }
        let name = c.req_str("name")?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
        {
            return Err(InvalidConfig::new(
                cookie_path.field("name"),
                format!("invalid cookie name {name:?}"),
            ));
        }
        let ttl = match c.str("ttl")? {
            None => None,
            Some(t) => Some(
                duration::parse(t).map_err(|m| InvalidConfig::new(cookie_path.field("ttl"), m))?,
            ),
        };
        keys.push(HashKey::Cookie {
            name: name.into(),
            path: c.str("path")?.map(Into::into),
            ttl,
        });
    }
    if ch.bool("useSourceIp")? == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(q) = ch.str("httpQueryParameterName")? {
        if q.is_empty() {
            return Err(InvalidConfig::new(
                ch.path.field("httpQueryParameterName"),
                "empty name",
            ));
        }
        keys.push(HashKey::QueryParameter(q.into()));
    }
    let key = match keys.len() {
        1 => keys.remove(0),
        0 => {
            return Err(InvalidConfig::new(
                ch.path.clone(),
                "set one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            ));
        }
        _ => {
            return Err(InvalidConfig::new(
                ch.path.clone(),
                "set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            ));
        }
    };
    let ring_path = ch.path.field("ringHash");
    let maglev_path = ch.path.field("maglev");
    let ring = ch.obj("ringHash", &ring_path)?;
    let maglev = ch.obj("maglev", &maglev_path)?;
    let deprecated_min = ch.int("minimumRingSize", 0, i64::from(u32::MAX))?;
    let ring_min = |obj: Option<&Obj<'_>>| -> Result<u64, InvalidConfig> {
        let v = match obj {
            Some(o) => o.int("minimumRingSize", 0, MAX_RING_SIZE as i64)?,
            None => deprecated_min,
        };
        Ok(match v {
            None | Some(0) => MIN_RING_SIZE,
            Some(n) => n as u64,
        })
    };
    Ok(match (ring, maglev) {
        (Some(_), Some(_)) => {
            return Err(InvalidConfig::new(
                maglev_path,
                "set either ringHash or maglev, not both",
            ));
        }
        (None, Some(m)) => {
            m.check_fields(
                &Fields {
                    supported: &["tableSize"],
                    unsupported: &[],
                    ignored: &[],
                },
                errors,
                warnings,
            );
            let table_size = match m.int("tableSize", 0, 5_000_011)? {
                None | Some(0) => mesh_maglev_default(),
                Some(n) if is_prime(n as u64) => n as u64,
                Some(n) => {
                    return Err(InvalidConfig::new(
                        maglev_path.field("tableSize"),
                        format!("{n} is not a prime number"),
                    ));
                }
            };
            LbPolicy::Maglev { key, table_size }
        }
        (ring, None) => {
            if let Some(r) = &ring {
                r.check_fields(
                    &Fields {
                        supported: &["minimumRingSize"],
                        unsupported: &[],
                        ignored: &[],
                    },
                    errors,
                    warnings,
                );
            }
            LbPolicy::RingHash {
                key,
                minimum_ring_size: ring_min(ring.as_ref())?,
                maximum_ring_size: MAX_RING_SIZE,
            }
        }
    })
}

/// Istio's default Maglev `tableSize`, 65537.
fn mesh_maglev_default() -> u64 {
    crate::lb::Maglev::DEFAULT_TABLE_SIZE
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// The largest value of Istio's `int32` fields.
const INT32_MAX: i64 = i32::MAX as i64;

/// An `int32` limit where 0 (or absent) means Istio's default, 2^32-1.
fn limit(obj: &Obj<'_>, key: &str) -> Result<u32, InvalidConfig> {
    Ok(match obj.int(key, 0, INT32_MAX)? {
        None | Some(0) => u32::MAX,
        Some(n) => n as u32,
    })
}

/// A positive duration.
fn positive_duration(obj: &Obj<'_>, key: &str) -> Result<Option<Duration>, InvalidConfig> {
    let Some(s) = obj.str(key)? else {
        return Ok(None);
    };
    let path = obj.path.field(key);
    let d = duration::parse(s).map_err(|m| InvalidConfig::new(path.clone(), m))?;
    if d.is_zero() {
        return Err(InvalidConfig::new(
            path,
            format!("invalid duration {s:?}: must be positive"),
        ));
    }
    Ok(Some(d))
}

fn connection_pool(
    cp: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<PoolSettings, InvalidConfig> {
    cp.check_fields(
        &Fields {
            supported: &["tcp", "http"],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut out = PoolSettings {
        limits: ConnectionLimits::default(),
        connect_timeout: Cluster::DEFAULT_CONNECT_TIMEOUT,
        per_connection_path: None,
    };
    let tcp_path = cp.path.field("tcp");
    if let Some(tcp) = cp.obj("tcp", &tcp_path)? {
        tcp.check_fields(
            &Fields {
                supported: &["maxConnections", "connectTimeout"],
                unsupported: &["tcpKeepalive", "maxConnectionDuration", "idleTimeout"],
                ignored: &[],
            },
            errors,
            warnings,
        );
        out.limits.max_connections = limit(&tcp, "maxConnections")?;
        if let Some(t) = positive_duration(&tcp, "connectTimeout")? {
            out.connect_timeout = t;
        }
    }
    let http_path = cp.path.field("http");
    if let Some(http) = cp.obj("http", &http_path)? {
        http.check_fields(
            &Fields {
                supported: &[
                    "http1MaxPendingRequests",
                    "http2MaxRequests",
                    "maxRequestsPerConnection",
                    "maxRetries",
                    "idleTimeout",
                ],
                unsupported: &[
                    "h2UpgradePolicy",
                    "useClientProtocol",
                    "maxConcurrentStreams",
                ],
                ignored: &[],
            },
            errors,
            warnings,
        );
        out.limits.max_pending_requests = limit(&http, "http1MaxPendingRequests")?;
        out.limits.max_requests = limit(&http, "http2MaxRequests")?;
        out.limits.max_retries = limit(&http, "maxRetries")?;
        // 0 is unlimited; above 1 only HTTP/2 ports can enforce it (see
        // `apply`).
        out.limits.max_requests_per_connection =
            match http.int("maxRequestsPerConnection", 0, INT32_MAX)? {
                None | Some(0) => None,
                Some(n) => {
                    out.per_connection_path = Some(http.path.field("maxRequestsPerConnection"));
                    Some(n as u32)
                }
            };
        out.limits.max_concurrent_streams = match http.int("maxConcurrentStreams", 0, INT32_MAX)? {
            None | Some(0) => None,
            Some(n) => Some(n as u32),
        };
        if let Some(t) = positive_duration(&http, "idleTimeout")? {
            out.limits.idle_timeout = t;
        }
    }
    Ok(out)
}

fn percent(obj: &Obj<'_>, key: &str) -> Result<Option<u32>, InvalidConfig> {
    Ok(obj.int(key, 0, 100)?.map(|n| n as u32))
}

fn outlier_detection(
    od: Obj<'_>,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<OutlierDetection, InvalidConfig> {
    od.check_fields(
        &Fields {
            supported: &[
                "consecutive5xxErrors",
                "consecutiveGatewayErrors",
                "consecutiveLocalOriginFailures",
                "splitExternalLocalOriginErrors",
                "interval",
                "baseEjectionTime",
                "maxEjectionPercent",
                "minHealthPercent",
            ],
            unsupported: &["consecutiveErrors"],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut out = OutlierDetection::default();
    // UInt32Value fields: 0 disables the check (istio.io DestinationRule
    // reference, `OutlierDetection.consecutive5xxErrors`).
    let count = |key: &str, default: Option<u32>| -> Result<Option<u32>, InvalidConfig> {
        Ok(match od.int(key, 0, i64::from(u32::MAX))? {
            None => default,
            Some(0) => None,
            Some(n) => Some(n as u32),
        })
    };
    out.consecutive_5xx = count("consecutive5xxErrors", out.consecutive_5xx)?;
    out.consecutive_gateway_errors =
        count("consecutiveGatewayErrors", out.consecutive_gateway_errors)?;
    out.consecutive_local_origin_failures = count(
        "consecutiveLocalOriginFailures",
        out.consecutive_local_origin_failures,
    )?;
    if let Some(b) = od.bool("splitExternalLocalOriginErrors")? {
        out.split_external_local_origin_errors = b;
    }
    if let Some(d) = positive_duration(&od, "interval")? {
        out.interval = d;
    }
    if let Some(d) = positive_duration(&od, "baseEjectionTime")? {
        out.base_ejection_time = d;
    }
    if let Some(p) = percent(&od, "maxEjectionPercent")? {
        out.max_ejection_percent = p;
    }
    if let Some(p) = percent(&od, "minHealthPercent")? {
        out.min_health_percent = p;
    }
    // Envoy: the longest ejection is max(base, max_ejection_time).
    out.max_ejection_time = out.max_ejection_time.max(out.base_ejection_time);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::file::FileSource;
    use crate::model::{Cluster, ConnectionLimits, HashKey, LbPolicy, OutlierDetection, SlowStart};

    const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews, namespace: default }
spec:
  hosts: [reviews]
  ports:
  - { number: 9080, name: http, protocol: HTTP }
  - { number: 9090, name: http-admin, protocol: HTTP }
  resolution: STATIC
  endpoints:
  - { address: 10.0.0.1, labels: { version: v1 } }
  - { address: 10.0.0.2, labels: { version: v2 } }
"#;

    fn rule(spec: &str) -> String {
        format!(
            "{SERVICE}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews }}\nspec:\n  host: reviews\n{spec}"
        )
    }

    fn cluster(text: &str, port: u16, subset: &str) -> Cluster {
        let t = match FileSource::parse_str("mesh.yaml", text) {
            Ok(t) => t,
            Err(e) => panic!("unexpected error:\n{e}"),
        };
        let name = format!("outbound|{port}|{subset}|reviews.default.svc.cluster.local");
        t.snapshot()
            .unwrap()
            .cluster(&name)
            .unwrap()
            .as_ref()
            .clone()
    }

    fn error(text: &str) -> String {
        FileSource::parse_str("mesh.yaml", text)
            .expect_err("expected an error")
            .to_string()
    }

    const DOC: &str = "mesh.yaml: document 2 (DestinationRule reviews)";

    #[test]
    fn connection_pool_sets_limits_and_connect_timeout() {
        let c = cluster(
            &rule(
                "  trafficPolicy:\n    connectionPool:\n      tcp: { maxConnections: 100, connectTimeout: 250ms }\n      http: { http1MaxPendingRequests: 7, http2MaxRequests: 10, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s }\n",
            ),
            9080,
            "",
        );
        assert_eq!(
            c.limits,
            ConnectionLimits {
                max_connections: 100,
                max_pending_requests: 7,
                max_requests: 10,
                max_retries: 3,
                max_requests_per_connection: Some(1),
                idle_timeout: Duration::from_secs(30),
                max_concurrent_streams: None,
            }
        );
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        let text = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews }}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool: {{ http: {{ maxConcurrentStreams: 50, maxRequestsPerConnection: 100 }} }}\n",
            SERVICE.replace("protocol: HTTP }", "protocol: HTTP2 }")
        );
        let c = cluster(&text, 9080, "");
        assert_eq!(c.limits.max_concurrent_streams, Some(50));
        assert_eq!(
            c.limits.max_requests_per_connection,
            Some(100),
            "HTTP/2 ports take any maxRequestsPerConnection"
        );
    }

    #[test]
    fn connection_pool_defaults_are_istios() {
        // istio.io DestinationRule reference, ConnectionPoolSettings:
        // maxConnections, http1MaxPendingRequests, http2MaxRequests and
        // maxRetries default to 2^32-1; maxRequestsPerConnection 0 means
        // unlimited; idleTimeout 1h; connectTimeout 10s.
        let c = cluster(
            &rule("  trafficPolicy:\n    connectionPool: {}\n"),
            9080,
            "",
        );
        assert_eq!(c.limits.max_connections, u32::MAX);
        assert_eq!(c.limits.max_pending_requests, u32::MAX);
        assert_eq!(c.limits.max_requests, u32::MAX);
        assert_eq!(c.limits.max_retries, u32::MAX);
        assert_eq!(c.limits.max_requests_per_connection, None);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        // 0 means "use the default" for every limit.
        let zero = cluster(
            &rule(
                "  trafficPolicy:\n    connectionPool:\n      tcp: { maxConnections: 0 }\n      http: { http2MaxRequests: 0, maxRequestsPerConnection: 0 }\n",
            ),
            9080,
            "",
        );
        assert_eq!(zero.limits, ConnectionLimits::default());
    }

    #[test]
    fn outlier_detection_defaults_are_istios() {
        // istio.io DestinationRule reference, OutlierDetection:
        // consecutive5xxErrors 5, consecutiveGatewayErrors 0 (off),
        // interval 10s, baseEjectionTime 30s, maxEjectionPercent 10,
        // minHealthPercent 0; consecutiveLocalOriginFailures 5;
        // splitExternalLocalOriginErrors false. Envoy
        // cluster.OutlierDetection.max_ejection_time: 300s.
        let c = cluster(
            &rule("  trafficPolicy:\n    outlierDetection: {}\n"),
            9080,
            "",
        );
        let od = c.outlier_detection.unwrap();
        assert_eq!(od, OutlierDetection::default());
        assert_eq!(od.consecutive_5xx, Some(5));
        assert_eq!(od.consecutive_gateway_errors, None);
        assert_eq!(od.consecutive_local_origin_failures, Some(5));
        assert!(!od.split_external_local_origin_errors);
        assert_eq!(od.interval, Duration::from_secs(10));
        assert_eq!(od.base_ejection_time, Duration::from_secs(30));
        assert_eq!(od.max_ejection_time, Duration::from_secs(300));
        assert_eq!(od.max_ejection_percent, 10);
        assert_eq!(od.min_health_percent, 0);
        assert_eq!((od.success_rate, od.failure_percentage), (None, None));
        // Without outlierDetection there is none.
        assert_eq!(cluster(&rule(""), 9080, "").outlier_detection, None);
    }

    #[test]
    fn outlier_detection_fields_translate() {
        let c = cluster(
            &rule(
                "  trafficPolicy:\n    outlierDetection:\n      consecutive5xxErrors: 0\n      consecutiveGatewayErrors: 3\n      consecutiveLocalOriginFailures: 2\n      splitExternalLocalOriginErrors: true\n      interval: 1s\n      baseEjectionTime: 400s\n      maxEjectionPercent: 50\n      minHealthPercent: 30\n",
            ),
            9080,
            "",
        );
        let od = c.outlier_detection.unwrap();
        assert_eq!(od.consecutive_5xx, None, "0 disables");
        assert_eq!(od.consecutive_gateway_errors, Some(3));
        assert_eq!(od.consecutive_local_origin_failures, Some(2));
        assert!(od.split_external_local_origin_errors);
        assert_eq!(od.interval, Duration::from_secs(1));
        assert_eq!(od.base_ejection_time, Duration::from_secs(400));
        assert_eq!(
            od.max_ejection_time,
            Duration::from_secs(400),
            "Envoy: max(base, max_ejection_time)"
        );
        assert_eq!((od.max_ejection_percent, od.min_health_percent), (50, 30));
    }

    #[test]
    fn the_most_specific_place_wins_per_setting() {
        let text = rule(
            "  trafficPolicy:\n    loadBalancer: { simple: ROUND_ROBIN }\n    connectionPool: { http: { http2MaxRequests: 1 } }\n    portLevelSettings:\n    - port: { number: 9090 }\n      connectionPool: { http: { http2MaxRequests: 2 } }\n  subsets:\n  - name: v1\n    labels: { version: v1 }\n    trafficPolicy:\n      outlierDetection: { interval: 1s }\n      portLevelSettings:\n      - port: { number: 9090 }\n        connectionPool: { http: { http2MaxRequests: 3 } }\n",
        );
        assert_eq!(cluster(&text, 9080, "").limits.max_requests, 1);
        assert_eq!(cluster(&text, 9090, "").limits.max_requests, 2);
        let v1 = cluster(&text, 9080, "v1");
        assert_eq!(v1.limits.max_requests, 1, "inherited from the rule");
        assert_eq!(
            v1.lb_policy,
            LbPolicy::RoundRobin,
            "inherited from the rule"
        );
        assert_eq!(
            v1.outlier_detection.unwrap().interval,
            Duration::from_secs(1)
        );
        assert_eq!(cluster(&text, 9090, "v1").limits.max_requests, 3);
        assert_eq!(cluster(&text, 9080, "").outlier_detection, None);
    }

    #[test]
    fn consistent_hash_keys_over_ring_and_maglev() {
        let lb = |body: &str| {
            cluster(
                &rule(&format!(
                    "  trafficPolicy:\n    loadBalancer:\n      consistentHash:\n{body}"
                )),
                9080,
                "",
            )
            .lb_policy
        };
        // Istio ConsistentHashLB: ringHash is the default with
        // minimumRingSize 1024; Maglev's tableSize defaults to 65537.
        assert_eq!(
            lb("        httpHeaderName: x-user\n"),
            LbPolicy::RingHash {
                key: HashKey::Header("x-user".parse().unwrap()),
                minimum_ring_size: 1024,
                maximum_ring_size: 8 << 20,
            }
        );
        assert_eq!(
            lb(
                "        httpQueryParameterName: user\n        ringHash: { minimumRingSize: 4096 }\n"
            ),
            LbPolicy::RingHash {
                key: HashKey::QueryParameter("user".into()),
                minimum_ring_size: 4096,
                maximum_ring_size: 8 << 20,
            }
        );
        assert_eq!(
            lb("        useSourceIp: true\n        maglev: {}\n"),
            LbPolicy::Maglev {
                key: HashKey::SourceIp,
                table_size: 65537,
            }
        );
        assert_eq!(
            lb(
                "        httpCookie: { name: session, path: /, ttl: 3600s }\n        maglev: { tableSize: 251 }\n"
            ),
            LbPolicy::Maglev {
                key: HashKey::Cookie {
                    name: "session".into(),
                    path: Some("/".into()),
                    ttl: Some(Duration::from_secs(3600)),
                },
                table_size: 251,
            }
        );
    }

    #[test]
    fn warmup_sets_slow_start_with_istios_defaults() {
        // Istio WarmupConfiguration: minimumPercent 10, aggression 1.0.
        let c = cluster(
            &rule(
                "  trafficPolicy:\n    loadBalancer: { simple: ROUND_ROBIN, warmup: { duration: 60s } }\n",
            ),
            9080,
            "",
        );
        assert_eq!(
            c.slow_start,
            Some(SlowStart {
                window: Duration::from_secs(60),
                min_weight_percent: 10,
                aggression: 1.0,
            })
        );
        let c = cluster(
            &rule("  trafficPolicy:\n    loadBalancer: { warmupDurationSecs: 30s }\n"),
            9080,
            "",
        );
        assert_eq!(c.slow_start.unwrap().window, Duration::from_secs(30));
        let c = cluster(
            &rule(
                "  trafficPolicy:\n    loadBalancer: { warmup: { duration: 10s, minimumPercent: 25, aggression: 2 } }\n",
            ),
            9080,
            "",
        );
        let ss = c.slow_start.unwrap();
        assert_eq!((ss.min_weight_percent, ss.aggression), (25, 2.0));
    }

    #[test]
    fn locality_lb_setting_translates() {
        let c = cluster(
            &rule(
                "  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: us-west/zone1/*\n          to: { \"us-west/zone1/*\": 80, \"us-west/zone2/*\": 20 }\n        failoverPriority: [topology.kubernetes.io/region, network]\n",
            ),
            9080,
            "",
        );
        let l = c.locality_lb.unwrap();
        assert!(l.enabled, "Istio: enabled unless set to false");
        assert_eq!(&*l.distribute[0].0, "us-west/zone1/*");
        assert_eq!(
            l.distribute[0]
                .1
                .iter()
                .map(|(k, w)| (&**k, *w))
                .collect::<Vec<_>>(),
            [("us-west/zone1/*", 80), ("us-west/zone2/*", 20)]
        );
        assert_eq!(l.failover_priority.len(), 2);
        let c = cluster(
            &rule(
                "  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: { enabled: false, failover: [{ from: us-west, to: eu-west }] }\n",
            ),
            9080,
            "",
        );
        let l = c.locality_lb.unwrap();
        assert!(!l.enabled);
        assert_eq!(
            (&*l.failover[0].0, &*l.failover[0].1),
            ("us-west", "eu-west")
        );
    }

    #[test]
    fn service_entry_endpoints_carry_their_locality() {
        let text = SERVICE.replace(
            "labels: { version: v1 } }",
            "labels: { version: v1 }, locality: us-west/zone1/a }",
        );
        let t = FileSource::parse_str("mesh.yaml", &text).unwrap();
        let snap = t.snapshot().unwrap();
        let eps = snap
            .endpoints("outbound|9080||reviews.default.svc.cluster.local")
            .unwrap();
        assert_eq!(
            eps.endpoints()[0].locality,
            crate::model::Locality::parse("us-west/zone1/a")
        );
        assert!(eps.endpoints()[1].locality.is_empty());
    }

    #[test]
    fn linkerd_peak_ewma_defaults() {
        // linkerd2-proxy: default RTT 30 ms, decay 10 s.
        assert_eq!(
            LbPolicy::linkerd_peak_ewma(),
            LbPolicy::PeakEwma {
                default_rtt: Duration::from_millis(30),
                decay: Duration::from_secs(10),
            }
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_field() {
        let lb = |body: &str| {
            error(&rule(&format!(
                "  trafficPolicy:\n    loadBalancer:\n{body}"
            )))
        };
        assert_eq!(
            lb("      simple: ROUND_ROBIN\n      consistentHash: { httpHeaderName: x }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.consistentHash: set either simple or consistentHash, not both"
            )
        );
        assert_eq!(
            lb("      consistentHash: { httpHeaderName: x, useSourceIp: true }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.consistentHash: set only one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
            )
        );
        assert_eq!(
            lb("      consistentHash: { ringHash: {} }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.consistentHash: set one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
            )
        );
        assert_eq!(
            lb("      consistentHash: { httpHeaderName: x, maglev: { tableSize: 1000 } }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number"
            )
        );
        assert_eq!(
            lb("      consistentHash: { httpHeaderName: x, maglev: {}, ringHash: {} }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.consistentHash.maglev: set either ringHash or maglev, not both"
            )
        );
        assert_eq!(
            lb("      consistentHash: { httpHeaderName: \"bad header\" }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.consistentHash.httpHeaderName: invalid header name \"bad header\""
            )
        );
        assert_eq!(
            lb("      consistentHash: { httpCookie: { ttl: 1s } }\n"),
            format!("{DOC}: trafficPolicy.loadBalancer.consistentHash.httpCookie.name: required")
        );
        assert_eq!(
            lb("      simple: RANDOM\n      warmup: { duration: 10s }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer: warmup applies only to ROUND_ROBIN and LEAST_REQUEST"
            )
        );
        assert_eq!(
            lb(
                "      localityLbSetting: { distribute: [{ from: \"us-west/*\", to: { \"us-west/zone1/*\": 70 } }] }\n"
            ),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: weights sum to 70, expected 100"
            )
        );
        assert_eq!(
            lb(
                "      localityLbSetting: { distribute: [{ from: \"us-west/*/a\", to: { \"us-west/zone1/*\": 100 } }] }\n"
            ),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from: invalid locality \"us-west/*/a\" (expected region/zone/subzone, ending in * to match any)"
            )
        );
        assert_eq!(
            lb("      localityLbSetting: { failover: [{ from: us-west, to: us-west }] }\n"),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.localityLbSetting.failover[0].to: failover from \"us-west\" to itself"
            )
        );
        assert_eq!(
            lb(
                "      localityLbSetting:\n        failover: [{ from: us-west, to: eu }]\n        distribute: [{ from: \"us-west/*\", to: { \"us-west/*\": 100 } }]\n"
            ),
            format!(
                "{DOC}: trafficPolicy.loadBalancer.localityLbSetting.failover: set either distribute or failover, not both"
            )
        );
        assert_eq!(
            lb("      warmup: { minimumPercent: 5 }\n"),
            format!("{DOC}: trafficPolicy.loadBalancer.warmup.duration: required")
        );
        assert_eq!(
            lb("      warmup: { duration: 1s, aggression: 0.5 }\n"),
            format!("{DOC}: trafficPolicy.loadBalancer.warmup.aggression: 0.5 is less than 1")
        );
        assert_eq!(
            error(&rule(
                "  trafficPolicy:\n    connectionPool: { tcp: { maxConnections: -1 } }\n"
            )),
            format!(
                "{DOC}: trafficPolicy.connectionPool.tcp.maxConnections: -1 is out of range (0 to 2147483647)"
            )
        );
        assert_eq!(
            error(&rule(
                "  trafficPolicy:\n    connectionPool: { tcp: { connectTimeout: 0s } }\n"
            )),
            format!(
                "{DOC}: trafficPolicy.connectionPool.tcp.connectTimeout: invalid duration \"0s\": must be positive"
            )
        );
        assert_eq!(
            error(&rule(
                "  trafficPolicy:\n    connectionPool: { http: { maxRequestsPerConnection: 5 } }\n"
            )),
            format!(
                "{DOC}: trafficPolicy.connectionPool.http.maxRequestsPerConnection: 5 is not supported on HTTP/1.1 ports: only 0 (unlimited) and 1 (no keep-alive) are"
            )
        );
        assert_eq!(
            error(&rule(
                "  trafficPolicy:\n    connectionPool: { http: { http2MaxRequest: 5 } }\n"
            )),
            format!(
                "{DOC}: trafficPolicy.connectionPool.http.http2MaxRequest: unknown field (did you mean \"http2MaxRequests\"?)"
            )
        );
        assert_eq!(
            error(&rule(
                "  trafficPolicy:\n    outlierDetection: { maxEjectionPercent: 101 }\n"
            )),
            format!(
                "{DOC}: trafficPolicy.outlierDetection.maxEjectionPercent: 101 is out of range (0 to 100)"
            )
        );
        assert_eq!(
            error(&rule(
                "  trafficPolicy:\n    outlierDetection: { interval: soon }\n"
            )),
            format!(
                "{DOC}: trafficPolicy.outlierDetection.interval: invalid duration \"soon\": expected a number with a unit such as 10s or 250ms"
            )
        );
        assert_eq!(
            error(&rule(
                "  subsets:\n  - name: v1\n    labels: { version: v1 }\n    trafficPolicy:\n      portLevelSettings:\n      - port: { number: 9080 }\n        outlierDetection: { consecutive5xxErrors: -2 }\n"
            )),
            format!(
                "{DOC}: subsets[0].trafficPolicy.portLevelSettings[0].outlierDetection.consecutive5xxErrors: -2 is out of range (0 to 4294967295)"
            )
        );
    }

    // --- tls ---

    use crate::model::{IstioMutualTls, ServerVerification, ServiceAccount, UpstreamTls};

    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const CRL_PEM: &str = "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    /// A directory with `ca.pem`, `cert.pem`, `key.pem` and `empty.pem`.
    fn pem_dir() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), CERT_PEM).unwrap();
        std::fs::write(dir.path().join("cert.pem"), CERT_PEM).unwrap();
        std::fs::write(dir.path().join("key.pem"), KEY_PEM).unwrap();
        std::fs::write(dir.path().join("crl.pem"), CRL_PEM).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "# nothing\n").unwrap();
        let path = dir.path().display().to_string();
        (dir, path)
    }

    fn tls_rule(tls: &str) -> String {
        rule(&format!("  trafficPolicy:\n    tls: {tls}\n"))
    }

    #[test]
    fn tls_modes_translate_with_their_files_and_names() {
        let (_dir, d) = pem_dir();
        assert_eq!(cluster(&rule(""), 9080, "").tls, None);
        assert_eq!(cluster(&tls_rule("{ mode: DISABLE }"), 9080, "").tls, None);
        let c = cluster(
            &tls_rule(&format!(
                "{{ mode: SIMPLE, caCertificates: {d}/ca.pem, caCrl: {d}/crl.pem, sni: api.example.com, subjectAltNames: [api.example.com, \"spiffe://example.com/api\"] }}"
            )),
            9080,
            "",
        );
        let Some(UpstreamTls::Simple(o)) = c.tls else {
            panic!("expected SIMPLE: {:?}", c.tls)
        };
        assert_eq!(o.sni.as_deref(), Some("api.example.com"));
        let ServerVerification::Verify {
            ca_certificates,
            subject_alt_names,
            ca_crl,
        } = o.verify
        else {
            panic!("expected verification")
        };
        assert_eq!(ca_certificates.path(), format!("{d}/ca.pem"));
        assert_eq!(ca_certificates.pem(), CERT_PEM.as_bytes());
        assert_eq!(ca_crl.unwrap().pem(), CRL_PEM.as_bytes());
        assert_eq!(
            subject_alt_names.iter().map(|s| &**s).collect::<Vec<_>>(),
            ["api.example.com", "spiffe://example.com/api"]
        );

        let c = cluster(
            &tls_rule(&format!(
                "{{ mode: MUTUAL, caCertificates: {d}/ca.pem, clientCertificate: {d}/cert.pem, privateKey: {d}/key.pem }}"
            )),
            9080,
            "",
        );
        let Some(UpstreamTls::Mutual {
            certificate,
            private_key,
            origination,
        }) = c.tls
        else {
            panic!("expected MUTUAL")
        };
        assert_eq!(certificate.path(), format!("{d}/cert.pem"));
        assert_eq!(private_key.pem(), KEY_PEM.as_bytes());
        assert_eq!(origination.sni, None);
        // The key never shows in debug output.
        assert!(!format!("{private_key:?}").contains("MIIB"));

        let c = cluster(
            &tls_rule("{ mode: SIMPLE, insecureSkipVerify: true }"),
            9080,
            "",
        );
        assert!(matches!(
            c.tls,
            Some(UpstreamTls::Simple(ref o)) if o.verify == ServerVerification::InsecureSkipVerify
        ));
    }

    #[test]
    fn istio_mutual_expects_the_service_accounts_of_the_endpoints() {
        let text = format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: reviews }}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {{ mode: ISTIO_MUTUAL }}\n",
            SERVICE
                .replace(
                    "version: v1 } }",
                    "version: v1 }, serviceAccount: reviews-v1 }"
                )
                .replace(
                    "version: v2 } }",
                    "version: v2 }, serviceAccount: reviews }"
                )
                .replace(
                    "  resolution: STATIC",
                    "  subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/external\"]\n  resolution: STATIC"
                )
        );
        let c = cluster(&text, 9080, "");
        let sa = |n: &str| ServiceAccount {
            namespace: "default".into(),
            name: n.into(),
        };
        assert_eq!(
            c.tls,
            Some(UpstreamTls::IstioMutual(IstioMutualTls {
                sni: None,
                subject_alt_names: [].into(),
                service_subject_alt_names: ["spiffe://cluster.local/ns/default/sa/external".into()]
                    .into(),
                service_accounts: [sa("reviews"), sa("reviews-v1")].into(),
            }))
        );
        let c = cluster(
            &tls_rule(
                "{ mode: ISTIO_MUTUAL, sni: reviews.internal, subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/reviews\"] }",
            ),
            9080,
            "",
        );
        assert_eq!(
            c.tls,
            Some(UpstreamTls::IstioMutual(IstioMutualTls {
                sni: Some("reviews.internal".into()),
                subject_alt_names: ["spiffe://cluster.local/ns/default/sa/reviews".into()].into(),
                service_subject_alt_names: [].into(),
                service_accounts: [].into(),
            }))
        );
    }

    #[test]
    fn tls_is_taken_whole_from_the_most_specific_place() {
        let (_dir, d) = pem_dir();
        let text = rule(&format!(
            "  trafficPolicy:\n    tls: {{ mode: ISTIO_MUTUAL }}\n    portLevelSettings:\n    - port: {{ number: 9090 }}\n      tls: {{ mode: SIMPLE, caCertificates: {d}/ca.pem }}\n  subsets:\n  - name: v1\n    labels: {{ version: v1 }}\n    trafficPolicy:\n      tls: {{ mode: DISABLE }}\n  - name: v2\n    labels: {{ version: v2 }}\n"
        ));
        assert!(matches!(
            cluster(&text, 9080, "").tls,
            Some(UpstreamTls::IstioMutual(_))
        ));
        assert!(matches!(
            cluster(&text, 9090, "").tls,
            Some(UpstreamTls::Simple(_))
        ));
        assert_eq!(cluster(&text, 9080, "v1").tls, None);
        assert_eq!(cluster(&text, 9090, "v1").tls, None);
        assert!(matches!(
            cluster(&text, 9090, "v2").tls,
            Some(UpstreamTls::Simple(_))
        ));
    }

    #[test]
    fn tls_settings_that_cannot_be_honoured_are_errors() {
        let (_dir, d) = pem_dir();
        let cases = [
            (
                "{ mode: SIMPLE }".to_owned(),
                "trafficPolicy.tls.caCertificates: required for SIMPLE: the mesh client has no system root store (set insecureSkipVerify: true to skip verification)".to_owned(),
            ),
            (
                format!("{{ mode: MUTUAL, caCertificates: {d}/ca.pem, privateKey: {d}/key.pem }}"),
                "trafficPolicy.tls.clientCertificate: required for MUTUAL".to_owned(),
            ),
            (
                "{ mode: MUTUAL, credentialName: reviews-cert }".to_owned(),
                "trafficPolicy.tls.credentialName: not supported: the mesh client cannot read Kubernetes secrets; set clientCertificate, privateKey and caCertificates to files".to_owned(),
            ),
            (
                format!("{{ mode: SIMPLE, caCertificates: {d}/ca.pem, caCrl: {d}/ca.pem }}"),
                format!("trafficPolicy.tls.caCrl: \"{d}/ca.pem\" holds no PEM certificate revocation list (X509 CRL)"),
            ),
            (
                format!("{{ mode: ISTIO_MUTUAL, caCrl: {d}/crl.pem }}"),
                "trafficPolicy.tls.caCrl: not allowed with ISTIO_MUTUAL, which uses the workload's own certificate and the mesh's trust bundle".to_owned(),
            ),
            (
                format!("{{ mode: SIMPLE, caCertificates: {d}/missing.pem }}"),
                format!("trafficPolicy.tls.caCertificates: cannot read \"{d}/missing.pem\": No such file or directory (os error 2)"),
            ),
            (
                format!("{{ mode: SIMPLE, caCertificates: {d}/empty.pem }}"),
                format!("trafficPolicy.tls.caCertificates: \"{d}/empty.pem\" holds no PEM certificate"),
            ),
            (
                format!("{{ mode: MUTUAL, caCertificates: {d}/ca.pem, clientCertificate: {d}/cert.pem, privateKey: {d}/cert.pem }}"),
                format!("trafficPolicy.tls.privateKey: \"{d}/cert.pem\" holds no usable private key: no items found"),
            ),
            (
                format!("{{ mode: SIMPLE, insecureSkipVerify: true, caCertificates: {d}/ca.pem }}"),
                "trafficPolicy.tls.caCertificates: set either insecureSkipVerify: true or caCertificates, subjectAltNames and caCrl, not both".to_owned(),
            ),
            (
                format!("{{ mode: ISTIO_MUTUAL, caCertificates: {d}/ca.pem }}"),
                "trafficPolicy.tls.caCertificates: not allowed with ISTIO_MUTUAL, which uses the workload's own certificate and the mesh's trust bundle".to_owned(),
            ),
            (
                "{ mode: ISTIO_MUTUAL, subjectAltNames: [reviews.default.svc] }".to_owned(),
                "trafficPolicy.tls.subjectAltNames[0]: \"reviews.default.svc\" is not a SPIFFE ID (spiffe://<trust domain>/<path>): an ISTIO_MUTUAL server is identified by its SVID".to_owned(),
            ),
            (
                "{ mode: ISTIO_MUTUAL, sni: \"bad name!\" }".to_owned(),
                "trafficPolicy.tls.sni: invalid server name \"bad name!\"".to_owned(),
            ),
            (
                "{ mode: STRICT }".to_owned(),
                "trafficPolicy.tls.mode: unknown mode \"STRICT\" (expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)".to_owned(),
            ),
            (
                format!("{{ mode: SIMPLE, caCertificates: {d}/ca.pem, insecureSkipVerfy: true }}"),
                "trafficPolicy.tls.insecureSkipVerfy: unknown field (did you mean \"insecureSkipVerify\"?)".to_owned(),
            ),
        ];
        for (tls, want) in cases {
            assert_eq!(error(&tls_rule(&tls)), format!("{DOC}: {want}"), "{tls}");
        }
        // In a subset's port-level settings the path says so.
        assert_eq!(
            error(&rule(
                "  subsets:\n  - name: v1\n    labels: { version: v1 }\n    trafficPolicy:\n      portLevelSettings:\n      - port: { number: 9080 }\n        tls: { mode: SIMPLE }\n"
            )),
            format!(
                "{DOC}: subsets[0].trafficPolicy.portLevelSettings[0].tls.caCertificates: required for SIMPLE: the mesh client has no system root store (set insecureSkipVerify: true to skip verification)"
            )
        );
    }

    #[test]
    fn tls_warnings_name_what_is_not_used() {
        let (_dir, d) = pem_dir();
        let t = FileSource::parse_str(
            "mesh.yaml",
            &tls_rule(&format!("{{ mode: DISABLE, caCertificates: {d}/ca.pem }}")),
        )
        .unwrap();
        assert_eq!(
            t.warnings(),
            [format!(
                "{DOC}: trafficPolicy.tls.caCertificates: ignored with mode DISABLE (plaintext)"
            )]
        );
        let t = FileSource::parse_str(
            "mesh.yaml",
            &tls_rule("{ mode: SIMPLE, insecureSkipVerify: true }"),
        )
        .unwrap();
        assert_eq!(
            t.warnings(),
            [format!(
                "{DOC}: trafficPolicy.tls.insecureSkipVerify: the server's certificate is not verified"
            )]
        );
    }
}
