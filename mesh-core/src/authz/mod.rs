//! Authorization: Istio's `AuthorizationPolicy` evaluated in-process.
//!
//! Pure logic, no I/O: `mesh-tower`'s authorization layer fills an
//! [`AuthzRequest`] from the request and its connection, asks a
//! [`PolicySet`] (the policies that select the workload) for a
//! [`Decision`], and answers 403 or calls the application.
//!
//! # Evaluation order (istio.io, "Authorization Policy")
//!
//! 1. `CUSTOM` policies: not supported (rejected when the config is read).
//! 2. If any `DENY` policy matches, the request is denied.
//! 3. If the workload has no `ALLOW` policy, the request is allowed.
//! 4. If any `ALLOW` policy matches, the request is allowed; otherwise it
//!    is denied. An `ALLOW` policy without rules (`spec: {}`) matches
//!    nothing, so it denies every request; a rule `{}` matches every
//!    request.
//!
//! `AUDIT` policies never change the decision: a match only marks the
//! request. Policies annotated `istio.io/dry-run: "true"` never change it
//! either; the decision they *would* give (computed as if they were
//! enforced next to the enforced ones) is reported as
//! [`Decision::dry_run`] for logging.
//!
//! # Cost
//!
//! Everything a policy matches against is compiled when the config is
//! read (see [`crate::model::security`]); [`PolicySet::evaluate`] borrows
//! the request and allocates nothing, except to join the values of a
//! header that a `when` condition reads and that the request repeats.

mod engine;
pub mod path;

pub use engine::{AuthzRequest, Decision, PolicySet, Verdict, istio_namespace_and_account};
pub use path::{InvalidPath, PathNormalization, normalize_path, path_only};
