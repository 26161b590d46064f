//! Fuzz targets for the mesh (cargo-fuzz layout; see `run.sh`). The
//! properties live in [`checks`], shared with the corpus replay test of
//! the workspace.

pub mod checks;
