//! Key sets: verifying a signature with `jsonwebtoken`, and keeping an issuer's set
//! current.
//!
//! A [`Jwks`] holds the decoded set behind an `ArcSwapOption`: a request
//! verifies with one atomic load and no lock. Inline sets never change.
//! Remote (`https://`, or found by OpenID discovery) and file sets are
//! loaded by a task the `Jwks` owns
//! (aborted when the last rule using the set is dropped):
//!
//! - the first load starts at once; requests that arrive before it ends
//!   wait for it (up to the rule's `timeout`), then fail if it failed:
//!   a set that never loaded accepts nothing;
//! - a loaded set is reloaded every [`AuthnOptions::with_refresh_interval`]
//!   (20 min by default, Istio's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`);
//! - a token whose `kid` is not in the set asks for a reload at once (the
//!   issuer rotated its keys), at most once per
//!   [`AuthnOptions::with_min_refetch_interval`] (30 s by default), so a
//!   stream of tokens with made-up `kid`s costs the issuer one fetch per
//!   interval, not one per request (checklist B.9.4); scheduled loads do
//!   not count against that limit;
//! - concurrent requests that need a reload wait for the same one;
//! - a failed load keeps the last good set and is retried after the
//!   minimum refetch interval (at least 1 s).
//!
//! [`AuthnOptions::with_refresh_interval`]: super::AuthnOptions::with_refresh_interval
//! [`AuthnOptions::with_min_refetch_interval`]: super::AuthnOptions::with_min_refetch_interval

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::{Algorithm, DecodingKey};
use mesh_core::model::security::{JwkKey, JwkSet, JwksSource, JwtAlgorithm};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::AuthnOptions;
use super::fetch::Fetcher;
use super::jwt::Reject;

// === impl KeySet ===

/// A loaded key set with every key's [`DecodingKey`] built once, when the
/// set is loaded, not per request.
pub(crate) struct KeySet {
    jwks: JwkSet,
    /// One entry per key of `jwks`, in order; `None` for a key the crate
    /// must never be handed (an RSA modulus outside 2048..=8192 bits, the
    /// bounds this verifier always had).
    decoding: Box<[Option<DecodingKey>]>,
}

impl KeySet {
    /// Builds the decoding keys of `jwks`.
    pub(crate) fn new(jwks: JwkSet) -> Self {
        let decoding = jwks.keys.iter().map(|k| decoding_key(&k.key)).collect();
        Self { jwks, decoding }
    }
}

/// The least and greatest RSA modulus accepted, in bits (NIST SP 800-131A
/// minimum; the upper bound keeps verification cost bounded).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

fn decoding_key(key: &JwkKey) -> Option<DecodingKey> {
    match key {
        JwkKey::Rsa { n, e } => {
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            RSA_BITS
                .contains(&bits)
                .then(|| DecodingKey::from_rsa_raw_components(n, e))
        }
        // The crate reads EC and Ed25519 key bytes as the SEC1 point and
        // the raw 32-byte key, which is what `JwkSet::parse` produced.
        JwkKey::Ec { point, .. } => Some(DecodingKey::from_ec_der(point)),
        JwkKey::Ed25519 { x } => Some(DecodingKey::from_ed_der(x)),
    }
}

/// The crate's name for an allow-listed algorithm.
fn crate_algorithm(alg: JwtAlgorithm) -> Algorithm {
    use JwtAlgorithm as A;
    match alg {
        A::Rs256 => Algorithm::RS256,
        A::Rs384 => Algorithm::RS384,
        A::Rs512 => Algorithm::RS512,
        A::Ps256 => Algorithm::PS256,
        A::Ps384 => Algorithm::PS384,
        A::Ps512 => Algorithm::PS512,
        A::Es256 => Algorithm::ES256,
        A::Es384 => Algorithm::ES384,
        A::EdDsa => Algorithm::EdDSA,
    }
}

/// Verifies the base64url `signature` over `message` with the keys of
/// `set` that fit `alg` and `kid`, through `jsonwebtoken`'s RustCrypto
/// verifiers. A key without `kid` fits any token `kid`, as in Envoy's
/// `jwt_verify_lib`; a token without `kid` tries every key that fits the
/// algorithm. `alg` is already allow-listed ([`super::jwt::Token::parse`]),
/// and a key is only used for an algorithm of its own type, so a public key
/// never reaches an HMAC verifier.
pub(crate) fn verify(
    set: &KeySet,
    alg: JwtAlgorithm,
    kid: Option<&str>,
    message: &[u8],
    signature: &str,
) -> Result<(), Reject> {
    let mut kid_known = kid.is_none();
    for (key, decoding) in set.jwks.keys.iter().zip(set.decoding.iter()) {
        match (kid, key.kid.as_deref()) {
            (Some(want), Some(have)) if want != have => continue,
            (Some(_), Some(_)) => kid_known = true,
            _ => {}
        }
        if key.alg.is_some_and(|a| a != alg) || !alg.fits(&key.key) {
            continue;
        }
        let Some(decoding) = decoding else { continue };
        if matches!(
            jsonwebtoken::crypto::verify(signature, message, decoding, crate_algorithm(alg)),
            Ok(true)
        ) {
            return Ok(());
        }
    }
    Err(if kid_known {
        Reject::Signature
    } else {
        Reject::UnknownKid
    })
}

// === impl Jwks ===

/// The key set of one `jwks` / `jwksUri`, kept current.
pub(crate) struct Jwks {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    keys: ArcSwapOption<KeySet>,
    /// Bumped after every load attempt, successful or not.
    attempts: watch::Sender<u64>,
    wake: Notify,
    in_flight: AtomicBool,
    /// Milliseconds after `base` before which no refetch may start.
    next_refetch_ms: AtomicU64,
    base: Instant,
    timeout: Duration,
    what: String,
}

impl Drop for Jwks {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.shared.what)
            .field("loaded", &self.shared.keys.load().is_some())
            .finish()
    }
}

/// What [`Jwks::keys`] found.
pub(crate) enum Keys {
    /// The current set.
    Set(Arc<KeySet>),
    /// Nothing loaded yet, or the loads failed.
    None,
}

impl Jwks {
    /// The set of `source`; remote and file sets start loading now.
    ///
    /// # Panics
    ///
    /// For a remote or file source, outside a Tokio runtime.
    pub(crate) fn new(source: &JwksSource, timeout: Duration, options: &AuthnOptions) -> Self {
        let (fetcher, what) = match source {
            JwksSource::Inline(set) => {
                let (attempts, _) = watch::channel(1);
                return Self {
                    shared: Arc::new(Shared {
                        keys: ArcSwapOption::from_pointee(KeySet::new(set.clone())),
                        attempts,
                        wake: Notify::new(),
                        in_flight: AtomicBool::new(false),
                        next_refetch_ms: AtomicU64::new(u64::MAX),
                        base: Instant::now(),
                        timeout,
                        what: "inline".into(),
                    }),
                    task: None,
                };
            }
            JwksSource::Remote(uri) => (
                Fetcher::https(uri, false, options.tls_config(), options.max_jwks_bytes),
                uri.to_string(),
            ),
            JwksSource::Discovery(uri) => (
                Fetcher::https(uri, true, options.tls_config(), options.max_jwks_bytes),
                uri.to_string(),
            ),
            JwksSource::File(path) => (
                Fetcher::File {
                    path: PathBuf::from(path),
                    max_bytes: options.max_jwks_bytes,
                },
                format!("file://{}", path.display()),
            ),
        };
        let (attempts, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            keys: ArcSwapOption::empty(),
            attempts,
            wake: Notify::new(),
            in_flight: AtomicBool::new(true),
            next_refetch_ms: AtomicU64::new(0),
            base: Instant::now(),
            timeout,
            what,
        });
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            fetcher,
            options.refresh_interval,
            options.min_refetch_interval,
        ));
        Self {
            shared,
            task: Some(task),
        }
    }

    /// Whether the loading task still holds the set (test probe for task
    /// ownership).
    #[cfg(test)]
    pub(crate) fn liveness(&self) -> impl Fn() -> bool + use<> {
        let weak = Arc::downgrade(&self.shared);
        move || weak.strong_count() > 0
    }

    /// The current keys: one atomic load.
    pub(crate) fn keys(&self) -> Keys {
        match self.shared.keys.load_full() {
            Some(set) => Keys::Set(set),
            None => Keys::None,
        }
    }

    /// Whether a request that found no usable key may wait for a load: a
    /// load is running, or one may start now (the rate limit allows it).
    pub(crate) fn can_refetch(&self) -> bool {
        self.task.is_some()
            && (self.shared.in_flight.load(Ordering::Acquire) || self.refetch_allowed())
    }

    fn refetch_allowed(&self) -> bool {
        let now = self.shared.base.elapsed().as_millis() as u64;
        now >= self.shared.next_refetch_ms.load(Ordering::Acquire)
    }

    /// Waits for the running load, or starts one if the rate limit allows,
    /// and waits for it, at most the rule's `timeout`.
    pub(crate) async fn refetch(&self) {
        let mut attempts = self.shared.attempts.subscribe();
        let seen = *attempts.borrow_and_update();
        if !self.shared.in_flight.load(Ordering::Acquire) {
            if !self.refetch_allowed() {
                return;
            }
            self.shared.wake.notify_one();
        }
        let _ = tokio::time::timeout(self.shared.timeout, attempts.wait_for(|n| *n > seen)).await;
    }
}

/// The least time between a failed load and its retry, whatever the
/// refetch interval (a zero interval must not turn a dead server into a
/// busy loop).
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The loading task of a remote or file set.
async fn run(shared: Arc<Shared>, fetcher: Fetcher, refresh: Duration, min_refetch: Duration) {
    // Whether this load was asked for by a request (unknown `kid`): only
    // those count against the refetch rate limit, so a rotation right
    // after start-up or a scheduled reload is picked up at once.
    let mut requested = false;
    loop {
        shared.in_flight.store(true, Ordering::Release);
        if requested {
            let next = shared.base.elapsed() + min_refetch;
            shared
                .next_refetch_ms
                .store(next.as_millis() as u64, Ordering::Release);
        }
        let result = match tokio::time::timeout(shared.timeout, fetcher.fetch()).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_owned()),
        };
        let next = match result.and_then(|body| JwkSet::parse(&body)) {
            Ok((set, notes)) => {
                for note in notes {
                    tracing::debug!(jwks = %shared.what, %note, "jwks key skipped");
                }
                tracing::debug!(jwks = %shared.what, keys = set.keys.len(), "jwks loaded");
                shared.keys.store(Some(Arc::new(KeySet::new(set))));
                refresh
            }
            Err(error) => {
                let kept = shared.keys.load().is_some();
                tracing::warn!(jwks = %shared.what, %error, kept_last_good = kept, "jwks load failed");
                min_refetch.max(MIN_RETRY)
            }
        };
        shared.in_flight.store(false, Ordering::Release);
        shared.attempts.send_modify(|n| *n += 1);
        requested = tokio::select! {
            () = tokio::time::sleep(next) => false,
            () = shared.wake.notified() => {
                // A refetch request: honour the rate limit.
                let at = shared.base + Duration::from_millis(shared.next_refetch_ms.load(Ordering::Acquire));
                tokio::time::sleep_until(at).await;
                true
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use mesh_core::model::security::Jwk;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    #[test]
    fn keys_are_chosen_by_kid_and_algorithm() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let other =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
                .unwrap();
        let jwk = |kid: Option<&str>, p: &Ed25519KeyPair| Jwk {
            kid: kid.map(Arc::from),
            alg: None,
            key: JwkKey::Ed25519 {
                x: Arc::from(p.public_key().as_ref()),
            },
        };
        let set = KeySet::new(JwkSet {
            keys: Arc::from([jwk(Some("a"), &other), jwk(Some("b"), &pair)]),
        });
        let msg = b"header.payload";
        let sig = URL_SAFE_NO_PAD.encode(pair.sign(msg));
        let sig = sig.as_str();
        assert_eq!(
            verify(&set, JwtAlgorithm::EdDsa, Some("b"), msg, sig),
            Ok(())
        );
        assert_eq!(verify(&set, JwtAlgorithm::EdDsa, None, msg, sig), Ok(()));
        assert_eq!(
            verify(&set, JwtAlgorithm::EdDsa, Some("a"), msg, sig),
            Err(Reject::Signature)
        );
        assert_eq!(
            verify(&set, JwtAlgorithm::EdDsa, Some("c"), msg, sig),
            Err(Reject::UnknownKid)
        );
        assert_eq!(
            verify(&set, JwtAlgorithm::Es256, Some("b"), msg, sig),
            Err(Reject::Signature),
            "the key does not fit the algorithm"
        );
        let kidless = KeySet::new(JwkSet {
            keys: Arc::from([jwk(None, &pair)]),
        });
        assert_eq!(
            verify(&kidless, JwtAlgorithm::EdDsa, Some("z"), msg, sig),
            Ok(())
        );
    }
}
