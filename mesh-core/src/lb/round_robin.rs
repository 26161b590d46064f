//! `ROUND_ROBIN`.

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
}
