//! Istio `VirtualService.http[].retries` (`HTTPRetry`) and the retry
//! policy Istio applies to routes without it.

use std::sync::Arc;

use super::duration;
use super::yaml::{Fields, Obj};
use crate::error::{FieldPath, InvalidConfig};
use crate::model::{RetryConditions, RetryPolicy};

/// The retry policy of an HTTP route: `retries` translated, or Istio's
/// default policy when the route has none (istio.io VirtualService
/// reference, `HTTPRetry`: "Default retry policy ... attempts 2,
/// retryOn connect-failure,refused-stream,unavailable,cancelled,
/// retriable-status-codes (503)"; `pilot/pkg/networking/core/route/retry`
/// `DefaultPolicy`). `attempts: 0` disables retries.
///
/// `retryRemoteLocalities: true` is an error: retries here pick among all
/// of the cluster's endpoints, so the flag could not be honoured as
/// written, and silently ignoring it would hide that.
pub(crate) fn http_retry(
    route: &Obj<'_>,
    path: &FieldPath,
    errors: &mut Vec<InvalidConfig>,
    warnings: &mut Vec<InvalidConfig>,
) -> Result<Option<RetryPolicy>, InvalidConfig> {
    let rpath = path.field("retries");
    let Some(r) = route.obj("retries", &rpath)? else {
        return Ok(Some(RetryPolicy::istio_default()));
    };
    r.check_fields(
        &Fields {
            supported: &[
                "attempts",
                "perTryTimeout",
                "retryOn",
                "retryRemoteLocalities",
                "retryIgnorePreviousHosts",
            ],
            unsupported: &[],
            ignored: &[],
        },
        errors,
        warnings,
    );
    let mut policy = RetryPolicy::istio_default();
    if let Some(n) = r.int("attempts", 0, i64::from(i32::MAX))? {
        if n == 0 {
            return Ok(None);
        }
        policy.num_retries = n as u32;
    }
    if let Some(t) = r.str("perTryTimeout")? {
        let tpath = rpath.field("perTryTimeout");
        let d = duration::parse(t).map_err(|m| InvalidConfig::new(tpath.clone(), m))?;
        // Istio's validation: "perTryTimeout must be >= 1ms".
        if d < std::time::Duration::from_millis(1) {
            return Err(InvalidConfig::new(
                tpath,
                format!("{t:?} is below the minimum of 1ms"),
            ));
        }
        policy.per_try_timeout = Some(d);
    }
    if let Some(on) = r.str("retryOn")? {
        let opath = rpath.field("retryOn");
        let mut conditions = RetryConditions::empty();
        let mut codes = Vec::new();
        for item in on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(code) = item.parse::<u16>() {
                if !(100..=599).contains(&code) {
                    return Err(InvalidConfig::new(
                        opath,
                        format!("status {code} is not an HTTP status (100 to 599)"),
                    ));
                }
                codes.push(code);
                // Istio adds `retriable-status-codes` when codes are listed.
                conditions = conditions.union(RetryConditions::RETRIABLE_STATUS_CODES);
            } else if let Some(c) = RetryConditions::from_name(item) {
                conditions = conditions.union(c);
            } else {
                return Err(InvalidConfig::new(
                    opath,
                    format!("unsupported retry condition {item:?}"),
                ));
            }
        }
        if conditions.is_empty() {
            return Err(InvalidConfig::new(opath, "no retry condition"));
        }
        policy.retry_on.conditions = conditions;
        policy.retry_on.status_codes = Arc::from(codes);
    }
    if r.bool("retryRemoteLocalities")? == Some(true) {
        return Err(InvalidConfig::new(
            rpath.field("retryRemoteLocalities"),
            "not supported: retries already pick among every locality's endpoints",
        ));
    }
    if let Some(b) = r.bool("retryIgnorePreviousHosts")? {
        policy.ignore_previous_hosts = b;
    }
    Ok(Some(policy))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{HeaderMap, Method, Uri};

    use super::*;
    use crate::file::FileSource;
    use crate::model::{Backoff, RouteAction};
    use crate::request::RouteRequest;

    const SERVICE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: reviews }
spec:
  hosts: [reviews]
  ports: [{ number: 9080, name: http, protocol: HTTP }]
  resolution: STATIC
  endpoints: [{ address: 10.0.0.1 }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews } }]
";

    fn yaml(retries: &str) -> String {
        if retries.is_empty() {
            SERVICE.to_owned()
        } else {
            format!("{SERVICE}    retries: {retries}\n")
        }
    }

    fn policy(retries: &str) -> Option<RetryPolicy> {
        let t = FileSource::parse_str("mesh.yaml", &yaml(retries))
            .unwrap_or_else(|e| panic!("unexpected error:\n{e}"));
        let snap = t.snapshot().unwrap();
        let uri: Uri = "http://reviews:9080/".parse().unwrap();
        let headers = HeaderMap::new();
        let rr = RouteRequest::from_parts(&Method::GET, &uri, &headers).unwrap();
        let hit = snap.route(&rr).unwrap();
        match &hit.route().action {
            RouteAction::Forward(f) => f.retry.clone(),
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn error(retries: &str) -> String {
        FileSource::parse_str("mesh.yaml", &yaml(retries))
            .expect_err("expected an error")
            .to_string()
    }

    fn conditions(names: &[&str]) -> RetryConditions {
        names.iter().fold(RetryConditions::empty(), |c, n| {
            c.union(RetryConditions::from_name(n).unwrap())
        })
    }

    #[test]
    fn routes_without_retries_get_istios_default_policy() {
        // istio.io VirtualService reference (HTTPRetry) and
        // pilot/pkg/networking/core/route/retry DefaultPolicy: 2 attempts
        // on connect-failure,refused-stream,unavailable,cancelled,
        // retriable-status-codes with 503, previous hosts avoided, Envoy's
        // 25 ms / 250 ms backoff, no per-try timeout.
        let p = policy("").expect("default policy");
        assert_eq!(p.num_retries, 2);
        assert_eq!(
            p.retry_on.conditions,
            conditions(&[
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes"
            ])
        );
        assert_eq!(&*p.retry_on.status_codes, &[503]);
        assert!(p.ignore_previous_hosts);
        assert!(!p.retry_non_idempotent);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(
            p.backoff,
            Backoff {
                base: Duration::from_millis(25),
                max: Duration::from_millis(250)
            }
        );
    }

    #[test]
    fn retries_translate_attempts_per_try_timeout_and_conditions() {
        let p = policy(
            "{ attempts: 3, perTryTimeout: 250ms, retryOn: \"5xx,reset,409,429,deadline-exceeded\", retryIgnorePreviousHosts: false }",
        )
        .unwrap();
        assert_eq!(p.num_retries, 3);
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            p.retry_on.conditions,
            conditions(&[
                "5xx",
                "reset",
                "retriable-status-codes",
                "deadline-exceeded"
            ])
        );
        assert_eq!(&*p.retry_on.status_codes, &[409, 429]);
        assert!(!p.ignore_previous_hosts);

        // Only attempts: Istio keeps the default conditions.
        let p = policy("{ attempts: 5 }").unwrap();
        assert_eq!(p.num_retries, 5);
        assert_eq!(p.retry_on, RetryPolicy::istio_default().retry_on);
        // retryRemoteLocalities: false is what retries do anyway.
        assert!(policy("{ attempts: 1, retryRemoteLocalities: false }").is_some());
    }

    #[test]
    fn zero_attempts_disables_retries() {
        // Istio: "attempts ... 0 disables retries".
        assert_eq!(policy("{ attempts: 0 }"), None);
    }

    #[test]
    fn bad_retries_name_the_field_and_value() {
        let at = "mesh.yaml: document 2 (VirtualService reviews): http[0].retries";
        assert_eq!(
            error("{ retryOn: \"5xx,teapot\" }"),
            format!("{at}.retryOn: unsupported retry condition \"teapot\"")
        );
        assert_eq!(
            error("{ retryOn: \"5xx,700\" }"),
            format!("{at}.retryOn: status 700 is not an HTTP status (100 to 599)")
        );
        assert_eq!(
            error("{ retryOn: \",\" }"),
            format!("{at}.retryOn: no retry condition")
        );
        assert_eq!(
            error("{ attempts: -1 }"),
            format!("{at}.attempts: -1 is out of range (0 to 2147483647)")
        );
        assert_eq!(
            error("{ perTryTimeout: 0s }"),
            format!("{at}.perTryTimeout: \"0s\" is below the minimum of 1ms")
        );
        assert_eq!(
            error("{ perTryTimeout: soon }"),
            format!(
                "{at}.perTryTimeout: invalid duration \"soon\": expected a number with a unit such as 10s or 250ms"
            )
        );
        assert_eq!(
            error("{ retryRemoteLocalities: true }"),
            format!(
                "{at}.retryRemoteLocalities: not supported: retries already pick among every locality's endpoints"
            )
        );
        assert_eq!(
            error("{ atempts: 3 }"),
            format!("{at}.atempts: unknown field (did you mean \"attempts\"?)")
        );
    }
}
