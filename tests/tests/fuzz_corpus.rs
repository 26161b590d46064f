//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same property checks the cargo-fuzz targets run
//! (`fuzz/src/checks.rs`), so CI covers every seed and every input a
//! fuzzing run saved, on stable Rust and without libFuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

#[path = "../../fuzz/src/checks.rs"]
#[allow(unreachable_pub, dead_code)]
mod checks;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; the inputs.
fn replay(target: &str, check: fn(&[u8])) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let data = std::fs::read(file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", file.display());
            data
        })
        .collect()
}

#[test]
fn spiffe_id_corpus_holds_its_properties() {
    let inputs = replay("spiffe_id", checks::spiffe_id);
    // The seeds cover both sides of the parser.
    let accepted = inputs
        .iter()
        .filter(|d| mesh_identity::SpiffeId::parse(&String::from_utf8_lossy(d)).is_ok())
        .count();
    assert!(accepted >= 3, "{accepted} accepted");
    assert!(
        inputs.len() - accepted >= 10,
        "{} rejected",
        inputs.len() - accepted
    );
}

#[test]
fn client_hello_corpus_holds_its_properties() {
    use mesh_tower::serve::detect::{Detected, classify};
    let inputs = replay("client_hello", checks::client_hello);
    let count = |d: Option<Detected>| inputs.iter().filter(|i| classify(i) == d).count();
    assert!(count(Some(Detected::Tls)) >= 3, "real ClientHellos");
    assert!(count(Some(Detected::Plaintext)) >= 5, "other first flights");
    assert!(count(None) >= 1, "cut short before deciding");
}

#[test]
fn path_normalize_corpus_holds_its_properties() {
    use mesh_core::authz::{PathNormalization, normalize_path};
    let inputs = replay("path_normalize", checks::path_normalize);
    let rejected = inputs
        .iter()
        .filter(|d| normalize_path(&String::from_utf8_lossy(d), PathNormalization::Base).is_err())
        .count();
    assert!(rejected >= 3, "{rejected} rejected");
    assert!(
        inputs.len() - rejected >= 10,
        "{} accepted",
        inputs.len() - rejected
    );
}
