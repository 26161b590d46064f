//! Reading YAML documents into trees, and walking them with field paths.
//!
//! Documents are split on `---` here rather than by the YAML library so
//! that every document keeps its position in the file (an empty document
//! still counts) and errors can say "document 3" and the file's line
//! number.

use serde_json::{Map, Value};

use crate::error::{FieldPath, InvalidConfig};

/// One document of a multi-document file.
pub(crate) struct RawDocument<'a> {
    /// 1-based position in the file.
    pub(crate) index: usize,
    /// 1-based line of the document's first line in the file.
    pub(crate) first_line: usize,
    pub(crate) text: &'a str,
}

/// Splits a YAML stream at document markers (`---` at the start of a
/// line, optionally followed by content; `...` ends a document).
pub(crate) fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    let mut explicit_start = false;
    for (line_no, line) in (1..).zip(text.split_inclusive('\n')) {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "..." || bare.starts_with("... ");
        if is_start || is_end {
            // The text before the marker is a document unless it is the
            // (empty) preamble before a leading `---`.
            let before = &text[start..offset];
            if !(docs.is_empty() && !explicit_start && before.trim().is_empty() && is_start)
                || is_end
            {
                docs.push(RawDocument {
                    index: docs.len() + 1,
                    first_line,
                    text: before,
                });
            }
            explicit_start = true;
            // Content after `--- ` on the same line belongs to the new document.
            start = if is_start && bare.len() > 3 {
                offset + 4
            } else {
                offset + line.len()
            };
            first_line = if is_start && bare.len() > 3 {
                line_no
            } else {
                line_no + 1
            };
        }
        offset += line.len();
    }
    let rest = &text[start..];
    if !rest.trim().is_empty() || docs.is_empty() {
        docs.push(RawDocument {
            index: docs.len() + 1,
            first_line,
            text: rest,
        });
    }
    docs
}

/// Whether a document holds nothing but blanks and comments.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

/// Parses one document, returning a message with the file's line number on
/// a syntax error.
pub(crate) fn parse(doc: &RawDocument<'_>) -> Result<Value, String> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    serde_saphyr::from_str_with_options::<Value>(doc.text, options).map_err(|e| {
        let msg = e.to_string();
        // saphyr appends "at line L, column C" with document-relative lines;
        // rewrite it in file coordinates.
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        match e.location() {
            Some(loc) if loc.line() > 0 => format!(
                "invalid YAML at line {}, column {}: {}",
                doc.first_line as u64 + loc.line() - 1,
                loc.column(),
                msg.trim()
            ),
            _ => format!("invalid YAML: {}", msg.trim()),
        }
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A YAML mapping with the path that leads to it.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'v> {
    pub(crate) map: &'v Map<String, Value>,
    pub(crate) path: &'v FieldPath,
}

/// What a mapping's keys are, for [`Obj::check_fields`].
pub(crate) struct Fields<'a> {
    /// Keys this project applies.
    pub(crate) supported: &'a [&'a str],
    /// Keys Istio defines that this project does not apply yet: reported
    /// as warnings and ignored.
    pub(crate) unsupported: &'a [&'a str],
    /// Keys that are fine to ignore without a word (Kubernetes metadata).
    pub(crate) ignored: &'a [&'a str],
}

impl<'v> Obj<'v> {
    /// Views `value` at `path` as a mapping.
    pub(crate) fn new(value: &'v Value, path: &'v FieldPath) -> Result<Self, InvalidConfig> {
        match value {
            Value::Object(map) => Ok(Self { map, path }),
            other => Err(InvalidConfig::new(
                path.clone(),
                format!("expected a mapping, found {}", type_name(other)),
            )),
        }
    }

    /// Reports unknown keys as errors and known-but-unsupported keys as
    /// warnings (each as `(path, message)`).
    pub(crate) fn check_fields(
        &self,
        fields: &Fields<'_>,
        errors: &mut Vec<InvalidConfig>,
        warnings: &mut Vec<InvalidConfig>,
    ) {
        let mut keys: Vec<&String> = self.map.keys().collect();
        keys.sort();
        for key in keys {
            let k = key.as_str();
            if fields.supported.contains(&k) || fields.ignored.contains(&k) {
                continue;
            }
            let path = self.path.field(k);
            if fields.unsupported.contains(&k) {
                warnings.push(InvalidConfig::new(path, "not supported yet; ignored"));
            } else {
                let hint = fields
                    .supported
                    .iter()
                    .chain(fields.unsupported)
                    .find(|s| s.eq_ignore_ascii_case(k) || close(s, k))
                    .map(|s| format!(" (did you mean {s:?}?)"))
                    .unwrap_or_default();
                errors.push(InvalidConfig::new(path, format!("unknown field{hint}")));
            }
        }
    }

    /// Fails with the first unknown key when the object may hold only
    /// `supported` keys (no unsupported or ignored ones).
    pub(crate) fn only_fields(&self, supported: &[&str]) -> Result<(), InvalidConfig> {
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        self.check_fields(
            &Fields {
                supported,
                unsupported: &[],
                ignored: &[],
            },
            &mut errors,
            &mut warnings,
        );
        errors.into_iter().next().map_or(Ok(()), Err)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'v Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'v str>, InvalidConfig> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(InvalidConfig::new(
                self.path.field(key),
                format!("expected a string, found {}", type_name(other)),
            )),
        }
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&'v str, InvalidConfig> {
        self.str(key)?
            .ok_or_else(|| InvalidConfig::new(self.path.field(key), "required"))
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, InvalidConfig> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(InvalidConfig::new(
                self.path.field(key),
                format!("expected a boolean, found {}", type_name(other)),
            )),
        }
    }

    /// An integer in `min..=max`.
    pub(crate) fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, InvalidConfig> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => int_value(v, &self.path.field(key), min, max).map(Some),
        }
    }

    pub(crate) fn obj(
        &self,
        key: &str,
        path: &'v FieldPath,
    ) -> Result<Option<Obj<'v>>, InvalidConfig> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Obj::new(v, path).map(Some),
        }
    }

    pub(crate) fn list(&self, key: &str) -> Result<&'v [Value], InvalidConfig> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(InvalidConfig::new(
                self.path.field(key),
                format!("expected a list, found {}", type_name(other)),
            )),
        }
    }

    /// A list of strings.
    pub(crate) fn str_list(&self, key: &str) -> Result<Vec<&'v str>, InvalidConfig> {
        self.list(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                other => Err(InvalidConfig::new(
                    self.path.field(key).index(i),
                    format!("expected a string, found {}", type_name(other)),
                )),
            })
            .collect()
    }

    /// A mapping of strings to strings (labels).
    pub(crate) fn str_map(&self, key: &str) -> Result<Vec<(&'v str, &'v str)>, InvalidConfig> {
        let path = self.path.field(key);
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.as_str(), s.as_str())),
                    other => Err(InvalidConfig::new(
                        path.key(k),
                        format!("expected a string, found {}", type_name(other)),
                    )),
                })
                .collect(),
            Some(other) => Err(InvalidConfig::new(
                path,
                format!("expected a mapping, found {}", type_name(other)),
            )),
        }
    }
}

/// An integer value in `min..=max`.
pub(crate) fn int_value(
    v: &Value,
    path: &FieldPath,
    min: i64,
    max: i64,
) -> Result<i64, InvalidConfig> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(InvalidConfig::new(
            path.clone(),
            format!("{n} is out of range ({min} to {max})"),
        )),
        None => Err(InvalidConfig::new(
            path.clone(),
            format!("expected an integer, found {}", type_name(v)),
        )),
    }
}

// One edit or one transposition apart, for "did you mean" hints.
fn close(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    if a.len() == b.len() {
        let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        if let [i, j] = diff[..]
            && j == i + 1
            && a[i] == b[j]
            && a[j] == b[i]
        {
            return true;
        }
    }
    let (mut i, mut j, mut edits) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        edits += 1;
        if edits > 1 {
            return false;
        }
        match a.len().cmp(&b.len()) {
            std::cmp::Ordering::Greater => i += 1,
            std::cmp::Ordering::Less => j += 1,
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    edits + (a.len() - i) + (b.len() - j) <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_position_and_line() {
        let text = "a: 1\n---\n---\nb: 2\n--- c: 3\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 4);
        assert_eq!(
            (docs[0].index, docs[0].first_line, docs[0].text),
            (1, 1, "a: 1\n")
        );
        assert!(is_blank(docs[1].text), "an empty document still counts");
        assert_eq!(
            (docs[2].index, docs[2].first_line, docs[2].text),
            (3, 4, "b: 2\n")
        );
        assert_eq!(
            (docs[3].index, docs[3].first_line, docs[3].text),
            (4, 5, "c: 3\n")
        );
    }

    #[test]
    fn a_leading_marker_does_not_make_an_empty_document() {
        let docs = split_documents("---\na: 1\n---\nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].first_line, 2);
        assert_eq!(docs[1].first_line, 4);
    }

    #[test]
    fn syntax_errors_use_file_lines() {
        let text = "a: 1\n---\nb: [1, 2\nc: 3\n";
        let docs = split_documents(text);
        let err = parse(&docs[1]).unwrap_err();
        assert!(err.starts_with("invalid YAML at line "), "{err}");
        let line: usize = err["invalid YAML at line ".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(line >= 3, "{err}");
    }

    #[test]
    fn near_misses_get_a_hint() {
        assert!(close("weight", "wieght"), "transposition");
        assert!(close("weight", "weigt"), "deletion");
        assert!(close("weight", "weightt"), "insertion");
        assert!(close("weight", "weighx"), "substitution");
        assert!(!close("weight", "route"));
    }
}
