//! Config from a local YAML file written in Istio's own kinds.
//!
//! A team without a cluster (or without istiod) writes the same
//! `ServiceEntry`, `VirtualService` and `DestinationRule` objects it would
//! `kubectl apply`, in one multi-document file, and the mesh reads them
//! here. [`FileSource::watch`] keeps following the file: every edit is
//! debounced, parsed, validated and published whole, and an invalid edit
//! leaves the last good config in place with the reason recorded, as
//! Envoy's file-based xDS subscriptions behave.
//!
//! What is supported is in the README's table. A field Istio defines that
//! is not supported yet is reported (a log line and the store's
//! [`SourceStatus`](crate::SourceStatus) warnings) and ignored; a match
//! condition or action that cannot be ignored without changing where
//! traffic goes is an error; a field Istio does not define is an error.
//!
//! ```
//! use mesh_core::file::FileSource;
//!
//! let yaml = r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: reviews }
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: { host: reviews, subset: v1 }
//!       weight: 90
//!     - destination: { host: reviews, subset: v2 }
//!       weight: 0
//! "#;
//! let err = FileSource::parse_str("mesh.yaml", yaml).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "mesh.yaml: document 1 (VirtualService reviews): http[0].route[1].weight: weights sum to 90, expected 100"
//! );
//! ```

mod duration;
mod envoyfilter;
mod istio;
mod linkerd;
mod retries;
mod security;
mod telemetry;
mod traffic;
mod traffic_policy;
mod watch;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use watch::{FileWatcher, ReloadEvent};

use crate::error::InvalidConfig;
use crate::snapshot::{Resources, Snapshot, Version};
use crate::store::{ConfigStore, SourceId};

/// A YAML file of Istio resources, as a config source.
#[derive(Clone, Debug)]
pub struct FileSource {
    path: PathBuf,
    name: String,
    namespace: String,
    domain_suffix: String,
    debounce: Duration,
}

impl FileSource {
    /// The default namespace for resources without `metadata.namespace`,
    /// and the namespace the client runs in (whose services may be named
    /// by their short names, as in Kubernetes).
    pub const DEFAULT_NAMESPACE: &'static str = "default";
    /// The cluster domain suffix of Kubernetes service names.
    pub const DEFAULT_DOMAIN_SUFFIX: &'static str = "cluster.local";
    /// How long the file must be quiet after a change before it is read.
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

    /// The file at `path`, with the default namespace `default` and domain
    /// suffix `cluster.local`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self {
            name: path.display().to_string(),
            path,
            namespace: Self::DEFAULT_NAMESPACE.into(),
            domain_suffix: Self::DEFAULT_DOMAIN_SUFFIX.into(),
            debounce: Self::DEFAULT_DEBOUNCE,
        }
    }

    /// Sets the namespace of resources that name none, which is also the
    /// client's own namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sets the cluster domain suffix (`cluster.local`).
    pub fn with_domain_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.domain_suffix = suffix.into();
        self
    }

    /// Sets how long the file must be quiet after a change before it is
    /// read again.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name this source publishes under: `file:<path>`.
    pub fn source_id(&self) -> SourceId {
        SourceId::new(format!("file:{}", self.name))
    }

    /// Parses `text` as if it were the content of a file called `name`,
    /// with the default options.
    pub fn parse_str(name: &str, text: &str) -> Result<Translation, FileError> {
        let mut source = Self::new(name);
        source.name = name.into();
        source.parse(text)
    }

    /// Parses and translates `text` with this source's options.
    pub fn parse(&self, text: &str) -> Result<Translation, FileError> {
        let mut t = istio::Translator::new(&self.namespace, &self.domain_suffix);
        for raw in yaml::split_documents(text) {
            t.read(&raw);
        }
        let mut warnings = std::mem::take(&mut t.warnings);
        istio::sort_problems(&mut warnings);
        let warnings: Vec<String> = warnings.iter().map(|p| render(&self.name, p)).collect();
        let resources = t.finish();
        match resources {
            Ok(mut resources) => {
                resources.warnings = warnings;
                Ok(Translation { resources })
            }
            Err(mut problems) => {
                istio::sort_problems(&mut problems);
                Err(FileError {
                    file: self.name.clone(),
                    kind: ErrorKind::Invalid(
                        problems.iter().map(|p| render(&self.name, p)).collect(),
                    ),
                })
            }
        }
    }

    /// Reads and translates the file.
    pub fn load(&self) -> Result<Translation, FileError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| FileError {
            file: self.name.clone(),
            kind: ErrorKind::Io(e.to_string()),
        })?;
        self.parse(&text)
    }

    /// Reads the file once and publishes it to `store`. A file that cannot
    /// be read or translated is recorded as a rejection in the store and
    /// returned as an error; the store keeps its config.
    pub fn publish(&self, store: &ConfigStore) -> Result<Version, FileError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| FileError {
            file: self.name.clone(),
            kind: ErrorKind::Io(e.to_string()),
        });
        self.publish_text(store, text)
    }

    fn publish_text(
        &self,
        store: &ConfigStore,
        text: Result<String, FileError>,
    ) -> Result<Version, FileError> {
        let result = text.and_then(|t| self.parse(&t));
        match result {
            Ok(translation) => {
                for w in translation.warnings() {
                    tracing::warn!(source = %self.source_id(), "{w}");
                }
                store
                    .publish(self.source_id(), translation.resources)
                    .map_err(|e| FileError {
                        file: self.name.clone(),
                        kind: ErrorKind::Rejected(e.reason().to_owned()),
                    })
            }
            Err(err) => {
                store.reject(self.source_id(), err.to_string());
                Err(err)
            }
        }
    }
}

/// The resources a file translates to, and what it could not apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Translation {
    /// The resources, with [`Resources::warnings`] listing ignored config.
    pub resources: Resources,
}

impl Translation {
    /// Config the file holds that is not applied, one line each, naming
    /// the file, document and field.
    pub fn warnings(&self) -> &[String] {
        &self.resources.warnings
    }

    /// The resources as a snapshot of their own (version 1), for offline
    /// checks such as [`check_route`](crate::check_route).
    pub fn snapshot(&self) -> Result<Snapshot, InvalidConfig> {
        Snapshot::build(Version(1), self.resources.clone())
    }
}

/// A file that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    file: String,
    kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ErrorKind {
    Io(String),
    Invalid(Vec<String>),
    Rejected(String),
}

impl FileError {
    /// Each problem on a line of its own, starting with the file name,
    /// the document index and the resource: `mesh.yaml: document 3
    /// (VirtualService reviews): http[0].route[1].weight: weights sum to
    /// 90, expected 100`.
    pub fn problems(&self) -> Vec<String> {
        match &self.kind {
            ErrorKind::Io(e) => vec![format!("{}: cannot read: {e}", self.file)],
            ErrorKind::Invalid(p) => p.clone(),
            ErrorKind::Rejected(r) => vec![format!("{}: {r}", self.file)],
        }
    }

    /// Whether the file could not be read at all.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, ErrorKind::Io(_))
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems().join("\n"))
    }
}

impl std::error::Error for FileError {}

fn render(file: &str, p: &istio::Problem) -> String {
    match &p.doc {
        None => format!("{file}: {}", p.error),
        Some(d) => match &d.resource {
            Some(r) => format!("{file}: document {} ({r}): {}", d.index, p.error),
            None => format!("{file}: document {}: {}", d.index, p.error),
        },
    }
}

#[cfg(test)]
mod tests;
