//! `RANDOM`.

/// Weighted random choice over running sums of the weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedRandom {
    // Empty when all weights are equal.
    cumulative: Box<[u64]>,
    len: usize,
}

impl WeightedRandom {
    /// A picker for endpoints with `weights` (each at least 1).
    pub fn new(weights: &[u32]) -> Self {
        let len = weights.len();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self {
                cumulative: Box::new([]),
                len,
            };
        }
        let mut sum = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                sum += u64::from(w);
                sum
            })
            .collect();
        Self { cumulative, len }
    }

    /// Picks an endpoint with probability proportional to its weight.
    pub fn pick(&self) -> usize {
        self.pick_with(fastrand::u64(..))
    }

    /// The endpoint for a uniformly random `r`.
    pub fn pick_with(&self, r: u64) -> usize {
        match self.cumulative.last() {
            None => (r % self.len.max(1) as u64) as usize,
            Some(&total) => {
                let t = r % total;
                self.cumulative.partition_point(|&c| c <= t)
            }
        }
    }

    /// Whether all endpoints weigh the same.
    pub fn is_uniform(&self) -> bool {
        self.cumulative.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn weighted_random_follows_weights() {
        let w = WeightedRandom::new(&[3, 1]);
        assert_eq!(w.pick_with(0), 0);
        assert_eq!(w.pick_with(2), 0);
        assert_eq!(w.pick_with(3), 1);
        assert_eq!(w.pick_with(7), 1);
    }
}
