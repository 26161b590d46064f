//! Durations written as Istio writes them: Go's `time.ParseDuration`
//! syntax (`10s`, `1.5s`, `300ms`, `1m30s`), which Istio's CRDs validate
//! with CEL's `duration()`.

use std::time::Duration;

/// Parses a Go-style duration. Negative values and missing units (other
/// than a bare `0`) are errors.
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(
            "invalid duration \"\": expected a number with a unit such as 10s or 250ms".into(),
        );
    }
    let mut total: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a number with a unit such as 10s or 250ms")
        })?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (ns, us, ms, s, m, h)"
                ));
            }
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("invalid duration {s:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("100us").unwrap(), Duration::from_micros(100));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bad_durations_say_why() {
        assert_eq!(
            parse("-1s").unwrap_err(),
            "invalid duration \"-1s\": must not be negative"
        );
        assert_eq!(
            parse("10").unwrap_err(),
            "invalid duration \"10\": missing unit (ns, us, ms, s, m, h)"
        );
        assert_eq!(
            parse("10sec").unwrap_err(),
            "invalid duration \"10sec\": unknown unit \"sec\" (ns, us, ms, s, m, h)"
        );
        assert!(parse("abc").is_err());
    }
}
