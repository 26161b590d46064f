//! Local rate limiting: a token bucket shared by every request of a
//! cluster (client side) or of a server listener (server side).
//!
//! The semantics are those of Envoy's local rate limit filter
//! (`envoy.filters.http.local_ratelimit`, whose `token_bucket` is an
//! `envoy.type.v3.TokenBucket`): the bucket starts full with `max_tokens`;
//! every `fill_interval`, `tokens_per_fill` tokens are added, up to
//! `max_tokens`; each request takes one token, and a request that finds
//! the bucket empty is limited. Envoy's documentation: "Local rate limit
//! filter", and `TokenBucket` in `envoy/type/v3/token_bucket.proto`
//! (`tokens_per_fill` "if not specified, defaults to a single token").
//!
//! The state is one `AtomicU64` (the fill epoch in the high half, the
//! tokens in the low half) updated by compare-and-swap: no lock, no
//! allocation, no timer task. Fills are computed lazily from the time of
//! each request, so an idle bucket costs nothing. Time is
//! `tokio::time::Instant`, so tests run on paused time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::TokenBucket;

/// The smallest `fill_interval` Envoy's local rate limit filter accepts
/// ("fill_interval must be >= 50ms").
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Checks a bucket as Envoy validates it: `max_tokens` and
/// `tokens_per_fill` at least 1, `fill_interval` at least 50 ms. The error
/// names the field.
pub fn validate(bucket: &TokenBucket) -> Result<(), (&'static str, String)> {
    if bucket.max_tokens == 0 {
        return Err(("max_tokens", "must be at least 1".into()));
    }
    if bucket.tokens_per_fill == 0 {
        return Err(("tokens_per_fill", "must be at least 1".into()));
    }
    if bucket.fill_interval < MIN_FILL_INTERVAL {
        return Err((
            "fill_interval",
            format!(
                "{:?} is below Envoy's minimum of 50ms",
                bucket.fill_interval
            ),
        ));
    }
    Ok(())
}

/// What the bucket answered one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u32,
    /// Time until the next fill.
    pub reset: Duration,
}

/// The runtime state of one [`TokenBucket`]; see the module docs.
#[derive(Debug)]
pub struct TokenBucketState {
    config: TokenBucket,
    start: Instant,
    interval_nanos: u64,
    // (fill epoch: u32) << 32 | tokens: u32
    state: AtomicU64,
}

fn pack(epoch: u32, tokens: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(tokens)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

impl TokenBucketState {
    /// A full bucket for `config`, its fill clock starting now. A zero
    /// `fill_interval` is taken as 1 ns (translation rejects it; see
    /// [`validate`]).
    pub fn new(config: TokenBucket) -> Self {
        Self {
            config,
            start: Instant::now(),
            interval_nanos: (config.fill_interval.as_nanos() as u64).max(1),
            state: AtomicU64::new(pack(0, config.max_tokens)),
        }
    }

    /// The bucket's config.
    pub fn config(&self) -> &TokenBucket {
        &self.config
    }

    /// Takes a token for one request now.
    pub fn try_acquire(&self) -> Admission {
        self.try_acquire_at(Instant::now())
    }

    /// Takes a token for one request at `now`.
    pub fn try_acquire_at(&self, now: Instant) -> Admission {
        let since = now.saturating_duration_since(self.start).as_nanos() as u64;
        let epoch_now = since / self.interval_nanos;
        // The epoch wraps after 2^32 intervals (over six years at 50 ms);
        // only differences are used.
        let epoch_now32 = epoch_now as u32;
        // `since` is below the end of its interval (floor division).
        let reset = Duration::from_nanos((epoch_now + 1) * self.interval_nanos - since);
        let max = u64::from(self.config.max_tokens);
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let (epoch, tokens) = unpack(current);
            let elapsed = epoch_now32.wrapping_sub(epoch);
            // A caller with an older `now` than the last update (a race)
            // sees a "negative" elapsed: no fill, the epoch stays.
            let (epoch, mut available) = if elapsed == 0 || elapsed > u32::MAX / 2 {
                (epoch, u64::from(tokens))
            } else {
                let filled = u64::from(elapsed) * u64::from(self.config.tokens_per_fill);
                (epoch_now32, (u64::from(tokens) + filled).min(max))
            };
            let allowed = available > 0;
            if allowed {
                available -= 1;
            }
            let next = pack(epoch, available as u32);
            if next == current {
                return Admission {
                    allowed,
                    remaining: available as u32,
                    reset,
                };
            }
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Admission {
                        allowed,
                        remaining: available as u32,
                        reset,
                    };
                }
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(max: u32, per_fill: u32, ms: u64) -> TokenBucketState {
        TokenBucketState::new(TokenBucket {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(ms),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn starts_full_and_limits_when_empty() {
        let b = bucket(3, 1, 1000);
        let got: Vec<(bool, u32)> = (0..4)
            .map(|_| {
                let a = b.try_acquire();
                (a.allowed, a.remaining)
            })
            .collect();
        assert_eq!(got, [(true, 2), (true, 1), (true, 0), (false, 0)]);
        assert_eq!(b.try_acquire().reset, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn fills_tokens_per_fill_each_interval_up_to_max() {
        let b = bucket(5, 2, 100);
        for _ in 0..5 {
            assert!(b.try_acquire().allowed);
        }
        assert!(!b.try_acquire().allowed);
        tokio::time::advance(Duration::from_millis(150)).await;
        // One fill: 2 tokens; the reset is the rest of the interval.
        let a = b.try_acquire();
        assert_eq!((a.allowed, a.remaining), (true, 1));
        assert_eq!(a.reset, Duration::from_millis(50));
        assert!(b.try_acquire().allowed);
        assert!(!b.try_acquire().allowed);
        // Many intervals later the bucket is full again, never fuller.
        tokio::time::advance(Duration::from_secs(60)).await;
        let a = b.try_acquire();
        assert_eq!((a.allowed, a.remaining), (true, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acquires_take_exactly_the_tokens() {
        let b = std::sync::Arc::new(bucket(1000, 1, 60_000));
        let allowed = std::sync::Arc::new(AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (b, allowed) = (std::sync::Arc::clone(&b), std::sync::Arc::clone(&allowed));
                s.spawn(move || {
                    let now = b.start;
                    for _ in 0..500 {
                        if b.try_acquire_at(now).allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn validation_follows_envoy() {
        let ok = TokenBucket {
            max_tokens: 1,
            tokens_per_fill: 1,
            fill_interval: Duration::from_millis(50),
        };
        assert_eq!(validate(&ok), Ok(()));
        let short = TokenBucket {
            fill_interval: Duration::from_millis(10),
            ..ok
        };
        assert_eq!(
            validate(&short),
            Err((
                "fill_interval",
                "10ms is below Envoy's minimum of 50ms".into()
            ))
        );
        assert_eq!(
            validate(&TokenBucket {
                max_tokens: 0,
                ..ok
            })
            .unwrap_err()
            .0,
            "max_tokens"
        );
    }
}
