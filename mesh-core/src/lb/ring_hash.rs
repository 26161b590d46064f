//! Ring hash (Envoy `RING_HASH`, Istio `consistentHash.ringHash`).
//!
//! Each endpoint gets points on a 64-bit ring in proportion to its weight;
//! a request goes to the first point at or after its hash. Removing one of
//! N endpoints moves only the keys that hashed to its points, about 1/N.
//!
//! Sizing: the ring has at least `minimum_ring_size` and at most
//! `maximum_ring_size` points, each endpoint `weight × k` of them.
//! **Deviation from Envoy**, which sizes the ring so that it is just above
//! the minimum for the current endpoint set: there, removing one of ten
//! endpoints also gives each of the nine others about 10% more points,
//! which take keys from one another, and about 17% of keys move instead of
//! 10%. Here `k` is rounded up to a power of two, so it stays the same
//! across most membership changes (the ring is at most twice the minimum)
//! and only the removed endpoint's keys move.

use super::hash::hash64;

/// A ring built from the endpoints' identities and weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingHash {
    // (point, endpoint), sorted by point.
    ring: Box<[(u64, u32)]>,
}

impl RingHash {
    /// A ring for endpoints named by `ids` (their addresses) with
    /// `weights`.
    pub fn new<S: AsRef<str>>(ids: &[S], weights: &[u32], min_size: u64, max_size: u64) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
        if ids.is_empty() {
            return Self { ring: Box::new([]) };
        }
        let mut k = min_size.div_ceil(total).max(1).next_power_of_two();
        if k.saturating_mul(total) > max_size {
            k = (max_size / total).max(1);
        }
        let mut ring = Vec::with_capacity((k * total) as usize);
        let mut key = String::new();
        for (i, (id, &w)) in ids.iter().zip(weights).enumerate() {
            let points = u64::from(w.max(1)) * k;
            for p in 0..points {
                key.clear();
                key.push_str(id.as_ref());
                key.push('_');
                key.push_str(&p.to_string());
                ring.push((hash64(key.as_bytes()), i as u32));
            }
        }
        ring.sort_unstable();
        Self { ring: ring.into() }
    }

    /// The endpoint for a request hash.
    pub fn pick(&self, hash: u64) -> usize {
        if self.ring.is_empty() {
            return 0;
        }
        let i = self.ring.partition_point(|&(p, _)| p < hash);
        self.ring[if i == self.ring.len() { 0 } else { i }].1 as usize
    }

    /// Points on the ring.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    /// The share of `keys` keys whose endpoint changed when endpoint 3 of
    /// 10 was removed, counting only keys whose endpoint stayed.
    pub(crate) fn remapped(pick10: impl Fn(u64) -> usize, pick9: impl Fn(u64) -> usize) -> f64 {
        let ids10 = ids(10);
        let ids9: Vec<_> = ids10.iter().filter(|i| *i != &ids10[3]).cloned().collect();
        let keys = 10_000u64;
        let moved = (0..keys)
            .map(|k| hash64(format!("user-{k}").as_bytes()))
            .filter(|&h| ids10[pick10(h)] != ids9[pick9(h)])
            .count();
        moved as f64 / keys as f64
    }

    #[test]
    fn removing_one_of_ten_endpoints_remaps_about_a_tenth_of_keys() {
        let ids10 = ids(10);
        let ids9: Vec<_> = ids10.iter().filter(|i| *i != &ids10[3]).cloned().collect();
        let r10 = RingHash::new(&ids10, &[1; 10], 1024, 8 << 20);
        let r9 = RingHash::new(&ids9, &[1; 9], 1024, 8 << 20);
        let moved = remapped(|h| r10.pick(h), |h| r9.pick(h));
        assert!((0.07..0.13).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_set_the_share_and_min_size_the_ring() {
        let r = RingHash::new(&ids(2), &[3, 1], 1024, 8 << 20);
        assert!(r.len() >= 1024, "{}", r.len());
        let first = (0..10_000u64)
            .filter(|k| r.pick(hash64(&k.to_le_bytes())) == 0)
            .count();
        assert!((7000..8000).contains(&first), "{first}");
        assert_eq!(
            RingHash::new(&ids(3), &[1; 3], 1 << 20, 100).len(),
            99,
            "capped by the maximum"
        );
        assert_eq!(RingHash::new(&ids(10), &[1; 10], 1024, 8 << 20).len(), 1280);
        assert_eq!(RingHash::new(&ids(9), &[1; 9], 1024, 8 << 20).len(), 1152);
    }
}
