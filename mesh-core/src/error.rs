//! Validation errors that name the place of the bad value.

use std::fmt;

/// A path to a field inside a resource, such as `http[0].route[1].weight`.
///
/// Paths are built while validating so that an error can say exactly which
/// value is wrong. Rendering follows the notation of Istio's and
/// Kubernetes' own validation messages.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The empty path: the resource itself.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// The path of a field below this one.
    pub fn field(&self, name: &str) -> Self {
        let mut s = self.0.clone();
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(name);
        Self(s)
    }

    /// The path of a list element below this one.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The path of a map entry below this one, for keys that are not plain
    /// identifiers (header names, label keys).
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key:?}]", self.0))
    }

    /// Whether this is the root path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A value in a resource that does not pass validation.
///
/// Displays as `<path>: <message>`, for example
/// `routes[2].clusters: weights sum to 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidConfig {
    path: FieldPath,
    message: String,
}

impl InvalidConfig {
    /// An error at `path`.
    pub fn new(path: FieldPath, message: impl Into<String>) -> Self {
        Self {
            path,
            message: message.into(),
        }
    }

    /// Where the bad value is.
    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error, one level further down: `prefix` is prepended to the
    /// path. Used when a validated part is embedded in a larger resource.
    pub fn within(self, prefix: &FieldPath) -> Self {
        let path = if self.path.is_root() {
            prefix.clone()
        } else if prefix.is_root() {
            self.path
        } else if self.path.0.starts_with('[') {
            FieldPath(format!("{}{}", prefix.0, self.path.0))
        } else {
            FieldPath(format!("{}.{}", prefix.0, self.path.0))
        };
        Self { path, ..self }
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for InvalidConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_render_like_istio_messages() {
        let p = FieldPath::root()
            .field("http")
            .index(0)
            .field("route")
            .index(1)
            .field("weight");
        assert_eq!(p.to_string(), "http[0].route[1].weight");
        assert_eq!(
            FieldPath::root()
                .field("headers")
                .key("x-canary")
                .to_string(),
            "headers[\"x-canary\"]"
        );
    }

    #[test]
    fn within_prefixes_paths() {
        let e = InvalidConfig::new(FieldPath::root().field("weight"), "bad");
        let prefix = FieldPath::root().field("route").index(2);
        assert_eq!(e.within(&prefix).to_string(), "route[2].weight: bad");
        let e = InvalidConfig::new(FieldPath::root().index(3), "bad");
        assert_eq!(e.within(&prefix).to_string(), "route[2][3]: bad");
    }
}
