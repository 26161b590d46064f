//! Endpoint pickers: the pure part of load balancing.
//!
//! Each picker is built once per endpoint-set change from the endpoints'
//! weights, then answers picks from a counter or a random number and a
//! load reading, with no allocation and no lock. The runtime in
//! `mesh-tower` owns the counters and the in-flight gauges these read.

/// Weighted round robin as a precomputed schedule.
///
/// The schedule is the sequence that nginx's smooth weighted round robin
/// produces: endpoints with weights 5, 1, 1 are visited `a a b a c a a`
/// rather than `a a a a a b c`, so a heavier endpoint's turns are spread
/// out. Picking is `schedule[ticket % len]`, with the ticket taken from a
/// shared atomic counter. Equal weights need no schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundRobin {
    len: usize,
    // Empty when all weights are equal.
    schedule: Box<[u32]>,
}

impl RoundRobin {
    /// Longest schedule kept; longer ones have their weights scaled down,
    /// which keeps proportions to within 1/`MAX_SCHEDULE`.
    pub const MAX_SCHEDULE: usize = 1 << 14;

    /// A schedule for endpoints with `weights` (each at least 1).
    pub fn new(weights: &[u32]) -> Self {
        let len = weights.len();
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self {
                len,
                schedule: Box::new([]),
            };
        }
        let g = weights.iter().copied().fold(0, gcd).max(1);
        let mut reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w / g)).collect();
        let total: u64 = reduced.iter().sum();
        if total > Self::MAX_SCHEDULE as u64 {
            for w in &mut reduced {
                *w = (*w * Self::MAX_SCHEDULE as u64 / total).max(1);
            }
        }
        let total: i64 = reduced.iter().map(|&w| w as i64).sum();
        let mut current = vec![0i64; len];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in reduced.iter().enumerate() {
                current[i] += *w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            schedule.push(best as u32);
        }
        Self {
            len,
            schedule: schedule.into(),
        }
    }

    /// The endpoint for `ticket` (any counter value).
    pub fn pick(&self, ticket: usize) -> usize {
        if self.schedule.is_empty() {
            ticket % self.len.max(1)
        } else {
            self.schedule[ticket % self.schedule.len()] as usize
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

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
    fn round_robin_with_equal_weights_cycles() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|t| rr.pick(t)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_schedule_is_smooth_and_proportional() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|t| rr.pick(t)).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[30, 10]);
        let picks: Vec<_> = (0..4).map(|t| rr.pick(t)).collect();
        assert_eq!(picks, vec![0, 0, 1, 0], "weights are reduced by their gcd");
    }

    #[test]
    fn round_robin_caps_huge_schedules() {
        let rr = RoundRobin::new(&[1_000_000, 1]);
        assert!(rr.schedule.len() <= RoundRobin::MAX_SCHEDULE + 1);
        assert!(
            (0..rr.schedule.len()).any(|t| rr.pick(t) == 1),
            "every endpoint keeps a turn"
        );
    }

    #[test]
    fn weighted_random_follows_weights() {
        let w = WeightedRandom::new(&[3, 1]);
        assert_eq!(w.pick_with(0), 0);
        assert_eq!(w.pick_with(2), 0);
        assert_eq!(w.pick_with(3), 1);
        assert_eq!(w.pick_with(7), 1);
    }

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
