//! The properties each fuzz target checks, as plain functions of the
//! input bytes. The libFuzzer targets (`fuzz_targets/`) call them, and so
//! does the workspace test `tests/tests/fuzz_corpus.rs`, which replays the
//! committed corpus on stable Rust (it includes this file by path). Each
//! function panics when a property fails; it must never panic otherwise.

use mesh_core::authz::{InvalidPath, PathNormalization, normalize_path, path_only};
use mesh_identity::SpiffeId;
use mesh_tower::serve::detect::{DECISION_BYTES, Detected, classify};

/// `SpiffeId::parse` on any string: never panics, and an accepted ID is
/// in canonical form (re-parses to itself, its parts rebuild it, it keeps
/// the spec's limits).
pub fn spiffe_id(data: &[u8]) {
    let input = String::from_utf8_lossy(data);
    let Ok(id) = SpiffeId::parse(&input) else {
        return;
    };
    let text = id.as_str();
    assert_eq!(
        SpiffeId::parse(text).as_ref(),
        Ok(&id),
        "{text:?} does not re-parse to itself"
    );
    assert!(text.len() <= 2048, "{text:?} is over 2048 bytes");
    assert_eq!(
        format!("spiffe://{}{}", id.trust_domain(), id.path()),
        text,
        "the parts do not rebuild the ID"
    );
    // Only the scheme's case is normalized.
    assert_eq!(&text[9..], &input[9..], "more than the scheme changed");
    let td = id.trust_domain();
    assert!(!td.is_empty() && td.len() <= 255, "trust domain {td:?}");
    assert!(
        td.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)),
        "trust domain {td:?}"
    );
    let path = id.path();
    assert_eq!(id.is_workload(), !path.is_empty());
    if !path.is_empty() {
        for segment in path[1..].split('/') {
            assert!(
                !matches!(segment, "" | "." | ".."),
                "segment {segment:?} in {text:?}"
            );
        }
    }
    if let Some((ns, sa)) = id.istio_namespace_and_account() {
        assert_eq!(SpiffeId::istio(td, ns, sa).as_ref(), Ok(&id));
    }
}

/// The PERMISSIVE sniffer on the first flight of a connection: never
/// panics, decides by [`DECISION_BYTES`] at the latest, never changes its
/// mind as bytes arrive, agrees with an independent statement of the rule,
/// and reaches the same decision however the first bytes are fragmented
/// (all 2^5 ways of cutting six bytes, replaying the loop `detect` runs).
pub fn client_hello(data: &[u8]) {
    // Monotonic: once decided, every longer prefix has the same decision.
    let mut decided: Option<Detected> = None;
    for k in 0..=data.len() {
        let now = classify(&data[..k]);
        if let Some(before) = decided {
            assert_eq!(now, Some(before), "changed its mind at byte {k}");
        } else if k >= DECISION_BYTES {
            assert!(now.is_some(), "undecided after {k} bytes");
        }
        decided = decided.or(now);
        if k > DECISION_BYTES + 2 {
            break;
        }
    }
    // The rule as RFC 8446 §5.1 and §4 state it: a handshake record of a
    // known TLS version whose first message is a ClientHello.
    let head = &data[..data.len().min(DECISION_BYTES)];
    let fits = |i: usize, ok: fn(u8) -> bool| head.get(i).is_none_or(|&b| ok(b));
    let possible_hello = fits(0, |b| b == 0x16)
        && fits(1, |b| b == 0x03)
        && fits(2, |b| b <= 0x04)
        && fits(5, |b| b == 0x01);
    let expected = match (possible_hello, head.len() == DECISION_BYTES) {
        (true, true) => Some(Detected::Tls),
        (true, false) => None,
        (false, _) => Some(Detected::Plaintext),
    };
    assert_eq!(classify(head), expected, "{head:02x?}");
    assert_eq!(classify(data), expected, "bytes past the decision matter");

    // Fragmented: bit i of `cuts` ends a read after byte i + 1.
    for cuts in 0u8..(1 << (DECISION_BYTES - 1)) {
        let mut buf = [0u8; DECISION_BYTES];
        let (mut len, mut pos) = (0, 0);
        let found = loop {
            if let Some(found) = classify(&buf[..len]) {
                break Some(found);
            }
            if pos == data.len() {
                break None; // the peer closed first
            }
            let mut end = len + 1;
            while end < DECISION_BYTES && cuts & (1 << (end - 1)) == 0 {
                end += 1;
            }
            let n = (end - len).min(data.len() - pos);
            buf[len..len + n].copy_from_slice(&data[pos..pos + n]);
            (len, pos) = (len + n, pos + n);
        };
        assert_eq!(found, expected, "cuts {cuts:05b}");
        assert_eq!(&buf[..len], &data[..len], "the replayed bytes");
    }
}

/// The authorization path normalizer under each of Istio's options, on
/// any request target: never panics; `NONE` only cuts the query and
/// fragment; otherwise an accepted path is absolute, has no `.`/`..`
/// segment, no query, fragment or escaped slash, no `//` when merging,
/// and normalizing it again changes nothing (so the path authorization
/// matched is the path the application is given).
pub fn path_normalize(data: &[u8]) {
    use PathNormalization::*;
    let target = String::from_utf8_lossy(data);
    let path = path_only(&target);
    assert_eq!(
        normalize_path(&target, None).as_deref(),
        Ok(path),
        "NONE keeps the path"
    );
    let escaped_slash = {
        let upper = path.to_ascii_uppercase();
        upper.contains("%2F") || upper.contains("%5C")
    };
    for mode in [Base, MergeSlashes, DecodeAndMergeSlashes] {
        let out = match normalize_path(&target, mode) {
            Ok(out) => out,
            Err(InvalidPath::NotAbsolute) => {
                assert!(!path.starts_with('/'), "{mode:?}: {target:?}");
                continue;
            }
            Err(InvalidPath::EscapedSlash) => {
                assert!(
                    escaped_slash && mode != DecodeAndMergeSlashes,
                    "{mode:?}: {target:?}"
                );
                continue;
            }
            Err(InvalidPath::BadEscape) => {
                assert!(path.contains('%'), "{mode:?}: {target:?}");
                continue;
            }
        };
        if out == "*" {
            assert_eq!(path, "*");
            continue;
        }
        assert!(
            mode == DecodeAndMergeSlashes || !escaped_slash,
            "{mode:?}: an escaped slash passed in {target:?}"
        );
        assert!(out.starts_with('/'), "{mode:?}: {target:?} -> {out:?}");
        assert!(!out.contains(['?', '#']), "{mode:?}: {target:?} -> {out:?}");
        assert!(
            out.split('/').all(|s| s != "." && s != ".."),
            "{mode:?}: a dot segment left in {target:?} -> {out:?}"
        );
        let upper = out.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C") && !out.contains('\\'),
            "{mode:?}: {target:?} -> {out:?}"
        );
        if mode != Base {
            assert!(!out.contains("//"), "{mode:?}: {target:?} -> {out:?}");
        }
        assert_eq!(
            normalize_path(&out, mode).as_deref(),
            Ok(&*out),
            "{mode:?}: not idempotent on {target:?}"
        );
    }
}
