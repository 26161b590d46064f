//! Endpoint pickers: the pure part of load balancing.
//!
//! Each picker is built once per endpoint-set change from the endpoints'
//! weights, then answers picks from a counter or a random number and a
//! load reading, with no allocation and no lock. The runtime in
//! `mesh-tower` owns the counters and the in-flight gauges these read.
//!
//! One file per policy: [`RoundRobin`], [`WeightedRandom`],
//! [`LeastRequest`], [`PeakEwma`], [`RingHash`], [`Maglev`]; the request
//! hash for the consistent-hash policies comes from [`hash`].

pub mod hash;
mod least_request;
pub mod locality;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;
mod slow_start;

pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::{EwmaState, PeakEwma};
pub use random::WeightedRandom;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use slow_start::slow_start_factor;
