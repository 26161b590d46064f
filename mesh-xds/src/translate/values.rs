//! Small conversions the cluster, endpoint and secret translators share:
//! protobuf durations, percentages, wrapped integers and data sources, each
//! checked with an error that names the field.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf;

use crate::resource::DecodeError;

/// The resource being translated: its name (for errors) and the fields it
/// sets that are not applied (for [`crate::Decoded::ignored`]).
pub(super) struct Doc<'a> {
    pub(super) name: &'a str,
    pub(super) ignored: Vec<String>,
}

impl<'a> Doc<'a> {
    pub(super) fn new(name: &'a str) -> Self {
        Self {
            name,
            ignored: Vec::new(),
        }
    }

    /// An error at `path`.
    pub(super) fn err(&self, path: &str, msg: impl std::fmt::Display) -> DecodeError {
        DecodeError::new(Some(self.name), format!("{path}: {msg}"))
    }

    /// Records `path` as set but not applied, with why.
    pub(super) fn ignore(&mut self, path: impl Into<String>) {
        self.ignored.push(path.into());
    }

    /// Records `path` as ignored when `set`.
    pub(super) fn ignore_if(&mut self, set: bool, path: &str) {
        if set {
            self.ignore(path);
        }
    }

    /// Fails at `path` when `set`: a field that cannot be honoured and must
    /// not be ignored (rules A2.7).
    pub(super) fn reject_if(&self, set: bool, path: &str, why: &str) -> Result<(), DecodeError> {
        if set {
            Err(self.err(path, why))
        } else {
            Ok(())
        }
    }
}

/// Joins a field path.
pub(super) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// A `google.protobuf.Duration`, which must be non-negative and well
/// formed (gRFC A50 "Validation": durations must be non-negative; the
/// protobuf spec bounds `nanos` to `0..1e9` for non-negative values).
pub(super) fn duration(
    doc: &Doc<'_>,
    path: &str,
    d: &protobuf::Duration,
) -> Result<Duration, DecodeError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(doc.err(
            path,
            format!(
                "invalid duration {}s {}ns: must be non-negative with nanos below 1e9",
                d.seconds, d.nanos
            ),
        ));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration, `default` when unset.
pub(super) fn duration_or(
    doc: &Doc<'_>,
    path: &str,
    d: Option<&protobuf::Duration>,
    default: Duration,
) -> Result<Duration, DecodeError> {
    d.map_or(Ok(default), |d| duration(doc, path, d))
}

/// A `UInt32Value` holding a percentage, at most 100 (gRFC A50).
pub(super) fn percent_u32(
    doc: &Doc<'_>,
    path: &str,
    v: Option<&protobuf::UInt32Value>,
    default: u32,
) -> Result<u32, DecodeError> {
    match v {
        None => Ok(default),
        Some(v) if v.value <= 100 => Ok(v.value),
        Some(v) => Err(doc.err(path, format!("{} is above 100 percent", v.value))),
    }
}

/// An `envoy.type.v3.Percent` (a double in `0..=100`), rounded to whole
/// percent.
pub(super) fn percent(doc: &Doc<'_>, path: &str, p: &Percent) -> Result<u32, DecodeError> {
    if !(0.0..=100.0).contains(&p.value) {
        return Err(doc.err(path, format!("{} is out of range (0 to 100)", p.value)));
    }
    Ok(p.value.round() as u32)
}

/// A wrapped `u32`, `default` when unset.
pub(super) fn u32_or(v: Option<&protobuf::UInt32Value>, default: u32) -> u32 {
    v.map_or(default, |v| v.value)
}

/// The text of an inline data source (`inline_bytes` or `inline_string`).
///
/// `filename` and `environment_variable` are rejected: a control plane
/// must not make the process read its local files or environment (gRPC
/// moved file access into the bootstrap's certificate providers for the
/// same reason, gRFC A29); the bootstrap's `file_watcher` provider is the
/// way to use files.
pub(super) fn inline_text(
    doc: &Doc<'_>,
    path: &str,
    ds: &DataSource,
) -> Result<String, DecodeError> {
    doc.reject_if(
        ds.watched_directory.is_some(),
        &join(path, "watched_directory"),
        "not supported (use a file_watcher certificate provider in the bootstrap)",
    )?;
    match &ds.specifier {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| doc.err(&join(path, "inline_bytes"), "not UTF-8 PEM text")),
        Some(Specifier::InlineString(s)) => Ok(s.clone()),
        Some(Specifier::Filename(f)) => Err(doc.err(
            &join(path, "filename"),
            format!(
                "{f:?}: file data sources are not read from xDS (use a file_watcher certificate provider in the bootstrap)"
            ),
        )),
        Some(Specifier::EnvironmentVariable(v)) => Err(doc.err(
            &join(path, "environment_variable"),
            format!("{v:?}: environment data sources are not read from xDS"),
        )),
        None => Err(doc.err(path, "no data")),
    }
}

/// Checks that `pem` holds at least one PEM block labelled `label`.
pub(super) fn require_pem(
    doc: &Doc<'_>,
    path: &str,
    pem: &str,
    label: &str,
) -> Result<(), DecodeError> {
    let found = pem
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if found {
        Ok(())
    } else {
        Err(doc.err(path, format!("no PEM block ending in {label:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_non_negative_and_well_formed() {
        let doc = Doc::new("c");
        let ok = protobuf::Duration {
            seconds: 1,
            nanos: 500_000_000,
        };
        assert_eq!(
            duration(&doc, "x", &ok).unwrap(),
            Duration::from_millis(1500)
        );
        let neg = protobuf::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(
            duration(&doc, "outlier_detection.interval", &neg)
                .unwrap_err()
                .to_string(),
            "c: outlier_detection.interval: invalid duration -1s 0ns: must be non-negative with nanos below 1e9"
        );
    }

    #[test]
    fn data_sources_are_inline_only() {
        let doc = Doc::new("s");
        let file = DataSource {
            specifier: Some(Specifier::Filename("/etc/key.pem".into())),
            watched_directory: None,
        };
        assert_eq!(
            inline_text(&doc, "tls_certificate.private_key", &file)
                .unwrap_err()
                .to_string(),
            "s: tls_certificate.private_key.filename: \"/etc/key.pem\": file data sources are not read from xDS (use a file_watcher certificate provider in the bootstrap)"
        );
        let inline = DataSource {
            specifier: Some(Specifier::InlineBytes(b"pem".to_vec())),
            watched_directory: None,
        };
        assert_eq!(inline_text(&doc, "x", &inline).unwrap(), "pem");
    }
}
