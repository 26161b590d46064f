//! Maglev (Envoy `MAGLEV`, Istio `consistentHash.maglev`; Eisenbud et al.,
//! "Maglev: A Fast and Reliable Software Network Load Balancer", 2016).
//!
//! A lookup table of `table_size` (a prime; Istio's default 65537) slots,
//! filled by letting endpoints take turns claiming the next free slot of
//! their own permutation of the table (`offset + j × skip`), each turn
//! taken in proportion to the endpoint's weight (Envoy's weighted
//! Maglev). A lookup is one index; removing one of N endpoints moves
//! about 1/N of the keys.

use super::hash::{hash64, hash64_seeded};

/// A Maglev lookup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    table: Box<[u32]>,
}

impl Maglev {
    /// Istio's default table size.
    pub const DEFAULT_TABLE_SIZE: u64 = 65537;

    /// A table for endpoints named by `ids` with `weights`; `table_size`
    /// should be a prime larger than 100 × the endpoint count.
    pub fn new<S: AsRef<str>>(ids: &[S], weights: &[u32], table_size: u64) -> Self {
        let m = table_size.max(1);
        let n = ids.len();
        if n == 0 {
            return Self {
                table: Box::new([]),
            };
        }
        let perms: Vec<(u64, u64)> = ids
            .iter()
            .map(|id| {
                let b = id.as_ref().as_bytes();
                let offset = hash64(b) % m;
                let skip = if m > 1 {
                    hash64_seeded(b, 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1
                } else {
                    1
                };
                (offset, skip)
            })
            .collect();
        let max_w = f64::from(weights.iter().copied().max().unwrap_or(1).max(1));
        let share: Vec<f64> = weights
            .iter()
            .map(|&w| f64::from(w.max(1)) / max_w)
            .collect();
        let mut credit = vec![0.0f64; n];
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..n {
                credit[i] += share[i];
                while credit[i] >= 1.0 {
                    credit[i] -= 1.0;
                    let (offset, skip) = perms[i];
                    loop {
                        let slot = ((offset + next[i] % m * skip) % m) as usize;
                        next[i] += 1;
                        if table[slot] == u32::MAX {
                            table[slot] = i as u32;
                            filled += 1;
                            break;
                        }
                    }
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Self {
            table: table.into(),
        }
    }

    /// The endpoint for a request hash.
    pub fn pick(&self, hash: u64) -> usize {
        if self.table.is_empty() {
            return 0;
        }
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::super::ring_hash::tests::{ids, remapped};
    use super::*;

    #[test]
    fn removing_one_of_ten_endpoints_remaps_about_a_tenth_of_keys() {
        let ids10 = ids(10);
        let ids9: Vec<_> = ids10.iter().filter(|i| *i != &ids10[3]).cloned().collect();
        let m10 = Maglev::new(&ids10, &[1; 10], Maglev::DEFAULT_TABLE_SIZE);
        let m9 = Maglev::new(&ids9, &[1; 9], Maglev::DEFAULT_TABLE_SIZE);
        let moved = remapped(|h| m10.pick(h), |h| m9.pick(h));
        assert!((0.07..0.15).contains(&moved), "{moved}");
    }

    #[test]
    fn weights_set_the_share_of_the_table() {
        let m = Maglev::new(&ids(2), &[3, 1], 65537);
        let first = m.table.iter().filter(|&&e| e == 0).count();
        assert!((first as f64 / 65537.0 - 0.75).abs() < 0.01, "{first}");
        assert!(m.table.iter().all(|&e| e < 2), "every slot filled");
    }
}
