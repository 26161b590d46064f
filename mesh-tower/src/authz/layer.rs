//! [`AuthorizationLayer`] and where its policies come from.

use std::sync::Arc;

use arc_swap::ArcSwap;
use mesh_core::Version;
use mesh_core::authz::{PathNormalization, PolicySet};
use mesh_core::model::{AuthorizationPolicy, Workload};

use super::{Authorization, AuthzStats};
use crate::mesh::Mesh;

/// Applies [`Authorization`] to a service (an axum router or a tonic
/// server); see the [module docs](super).
#[derive(Clone, Debug)]
pub struct AuthorizationLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    source: Source,
    pub(super) normalization: PathNormalization,
    pub(super) dry_run: bool,
    pub(super) stats: Arc<AuthzStats>,
}

enum Source {
    Static(Arc<PolicySet>),
    Mesh {
        mesh: Mesh,
        workload: Workload,
        // The workload's policies as of one snapshot version; replaced
        // (compare-and-swap, no lock) when the mesh applies a newer one.
        cache: ArcSwap<Cached>,
    },
}

struct Cached {
    version: Option<Version>,
    set: Arc<PolicySet>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(set) => f.debug_tuple("Static").field(set).finish(),
            Self::Mesh { workload, .. } => f
                .debug_struct("Mesh")
                .field("workload", workload)
                .finish_non_exhaustive(),
        }
    }
}

impl AuthorizationLayer {
    /// Enforces these policies (code config), whatever their scope: every
    /// one applies.
    pub fn new(policies: impl IntoIterator<Item = AuthorizationPolicy>) -> Self {
        Self::with_source(Source::Static(Arc::new(PolicySet::new(policies))))
    }

    /// Enforces, live, the policies of `mesh`'s config that select
    /// `workload` (its namespace, the root namespace, and selectors that
    /// match its labels). A config change applies from the next request.
    pub fn for_workload(mesh: Mesh, workload: Workload) -> Self {
        Self::with_source(Source::Mesh {
            mesh,
            workload,
            cache: ArcSwap::from_pointee(Cached {
                version: None,
                set: Arc::default(),
            }),
        })
    }

    fn with_source(source: Source) -> Self {
        Self {
            shared: Arc::new(Shared {
                source,
                normalization: PathNormalization::default(),
                dry_run: false,
                stats: Arc::default(),
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        // A layer is configured before it is cloned into services; if it
        // was cloned already, the clone keeps the old options.
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => f(shared),
            None => {
                let old = &*self.shared;
                let mut shared = Shared {
                    source: match &old.source {
                        Source::Static(set) => Source::Static(Arc::clone(set)),
                        Source::Mesh { mesh, workload, .. } => Source::Mesh {
                            mesh: mesh.clone(),
                            workload: workload.clone(),
                            cache: ArcSwap::from_pointee(Cached {
                                version: None,
                                set: Arc::default(),
                            }),
                        },
                    },
                    normalization: old.normalization,
                    dry_run: old.dry_run,
                    stats: Arc::clone(&old.stats),
                };
                f(&mut shared);
                self.shared = Arc::new(shared);
            }
        }
        self
    }

    /// Sets how paths are normalized before matching (Istio's
    /// `meshConfig.pathNormalization`; default `BASE`).
    pub fn with_path_normalization(self, normalization: PathNormalization) -> Self {
        self.edit(|s| s.normalization = normalization)
    }

    /// Dry run: evaluate and log what would be denied (counted in
    /// [`AuthzStats::dry_run_denied`]), but let every request through.
    pub fn with_dry_run(self, dry_run: bool) -> Self {
        self.edit(|s| s.dry_run = dry_run)
    }

    /// The counters of every service this layer makes.
    pub fn stats(&self) -> &Arc<AuthzStats> {
        &self.shared.stats
    }
}

impl Shared {
    /// The policies for this request: one load of the mesh runtime and
    /// one of the cache; the set is rebuilt only when the version moved.
    pub(super) fn policies(&self) -> Arc<PolicySet> {
        match &self.source {
            Source::Static(set) => Arc::clone(set),
            Source::Mesh {
                mesh,
                workload,
                cache,
            } => {
                let runtime = mesh.runtime().load();
                let version = runtime.snapshot.version();
                let cached = cache.load();
                if cached.version == Some(version) {
                    return Arc::clone(&cached.set);
                }
                let set = Arc::new(PolicySet::for_workload(
                    runtime.snapshot.security(),
                    workload,
                ));
                // Only move forward: a request that loaded an older
                // runtime does not replace a newer set.
                if cached.version.is_none_or(|v| v < version) {
                    let next = Arc::new(Cached {
                        version: Some(version),
                        set: Arc::clone(&set),
                    });
                    let _ = cache.compare_and_swap(&*cached, next);
                }
                set
            }
        }
    }
}

impl<S> tower::Layer<S> for AuthorizationLayer {
    type Service = Authorization<S>;

    fn layer(&self, inner: S) -> Authorization<S> {
        Authorization {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}
