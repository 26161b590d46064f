//! `LEAST_REQUEST`.

use super::WeightedRandom;

/// Power of N choices on requests in flight (Envoy `LEAST_REQUEST`).
///
/// Draws `choice_count` candidates and keeps the one with the lowest
/// `in_flight / weight`. With equal weights the candidates are distinct and
/// uniform, which is Envoy's algorithm exactly. With unequal weights the
/// candidates are drawn by weight and compared by load per unit of weight;
/// Envoy instead runs an EDF schedule on `weight / (active + 1)^bias`. Both
/// favour heavier and less loaded endpoints; this form needs no lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeastRequest {
    choice_count: u32,
    weights: Box<[u32]>,
    draw: WeightedRandom,
}

impl LeastRequest {
    /// A picker for endpoints with `weights`, comparing `choice_count`
    /// candidates (at least 2).
    pub fn new(weights: &[u32], choice_count: u32) -> Self {
        Self {
            choice_count: choice_count.max(2),
            weights: weights.into(),
            draw: WeightedRandom::new(weights),
        }
    }

    /// Picks using `in_flight(i)`, the requests in flight at endpoint `i`.
    pub fn pick(&self, in_flight: impl Fn(usize) -> u64) -> usize {
        let n = self.weights.len();
        if n <= 1 {
            return 0;
        }
        let mut best = self.draw.pick();
        for k in 1..self.choice_count {
            let candidate = if self.draw.is_uniform() && (k as usize) < n {
                // Distinct from `best` for the common two-choice case.
                (best + 1 + fastrand::usize(..n - 1)) % n
            } else {
                self.draw.pick()
            };
            // a/wa < b/wb  <=>  a*wb < b*wa, in integers.
            let lhs = u128::from(in_flight(candidate)) * u128::from(self.weights[best]);
            let rhs = u128::from(in_flight(best)) * u128::from(self.weights[candidate]);
            if lhs < rhs {
                best = candidate;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn least_request_prefers_the_less_loaded_candidate() {
        let lr = LeastRequest::new(&[1, 1], 2);
        // With two endpoints and distinct candidates, the idle one always wins.
        for _ in 0..100 {
            assert_eq!(lr.pick(|i| if i == 0 { 10 } else { 0 }), 1);
        }
    }

    #[test]
    fn least_request_scales_load_by_weight() {
        // Endpoint 0 has 3 in flight for weight 4 (0.75 per unit), endpoint 1
        // has 1 for weight 1 (1.0 per unit): 0 wins every comparison, so 1 is
        // picked only when both weighted draws land on it (p = 0.2^2 = 4%).
        let lr = LeastRequest::new(&[4, 1], 2);
        let zero = (0..1000)
            .filter(|_| lr.pick(|i| if i == 0 { 3 } else { 1 }) == 0)
            .count();
        assert!(zero > 900, "endpoint 0 picked {zero} times of 1000");
    }

    #[test]
    fn least_request_with_more_choices_finds_the_idle_endpoint() {
        let lr = LeastRequest::new(&[1, 1, 1], 3);
        let mut hits = [0; 3];
        for _ in 0..300 {
            hits[lr.pick(|i| [5, 0, 5][i])] += 1;
        }
        assert!(hits[1] > 200, "{hits:?}");
    }
}
