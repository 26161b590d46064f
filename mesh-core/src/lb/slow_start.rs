//! Slow start: a new endpoint's share ramps up over a window (Envoy
//! `SlowStartConfig`, Istio `warmup`).

use std::time::Duration;

use crate::model::SlowStart;

/// The fraction of its weight an endpoint added `age` ago gets:
/// `max(min_weight_percent / 100, (age / window) ^ (1 / aggression))`,
/// Envoy's formula; 1.0 once the window has passed.
pub fn slow_start_factor(config: &SlowStart, age: Duration) -> f64 {
    if age >= config.window || config.window.is_zero() {
        return 1.0;
    }
    let time = age.as_secs_f64().max(0.001) / config.window.as_secs_f64();
    let aggression = if config.aggression > 0.0 {
        config.aggression
    } else {
        1.0
    };
    time.powf(1.0 / aggression)
        .max(f64::from(config.min_weight_percent) / 100.0)
        .min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramps_linearly_from_the_minimum_to_full_weight() {
        let c = SlowStart {
            window: Duration::from_secs(100),
            min_weight_percent: 10,
            aggression: 1.0,
        };
        assert_eq!(slow_start_factor(&c, Duration::ZERO), 0.1);
        assert!((slow_start_factor(&c, Duration::from_secs(50)) - 0.5).abs() < 1e-9);
        assert_eq!(slow_start_factor(&c, Duration::from_secs(100)), 1.0);
        let steep = SlowStart {
            aggression: 2.0,
            ..c
        };
        assert!((slow_start_factor(&steep, Duration::from_secs(25)) - 0.5).abs() < 1e-9);
    }
}
