//! Retry policy: exponential backoff with full jitter. The engine stores the result as the
//! payout's next_run_at, so a schedule survives restarts (it never lives only in memory).

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    #[serde(with = "millis")]
    pub base: Duration,
    /// Upper bound of any delay.
    #[serde(with = "millis")]
    pub max_delay: Duration,
    /// Attempts of one step before the engine gives up on it (what "giving up" means depends
    /// on the step: never a failure once money may have moved).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { base: Duration::from_secs(2), max_delay: Duration::from_secs(300), max_attempts: 10 }
    }
}

impl RetryPolicy {
    /// True when `attempt` (1-based, the one that just failed) was the last allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }

    /// The delay before retry number `attempt` (1-based): a uniformly random value in
    /// `[cap/2, cap]` where `cap = min(max_delay, base * 2^(attempt-1))`. Half of the cap is kept
    /// so that retries never bunch up at zero; the random half spreads workers apart.
    /// A provider's Retry-After is a lower bound.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let cap = self.base.saturating_mul(1u32 << exp).min(self.max_delay).max(Duration::from_millis(1));
        let half = cap / 2;
        let jitter_ms = rng.random_range(0..=(cap - half).as_millis() as u64);
        let delay = half + Duration::from_millis(jitter_ms);
        match retry_after {
            Some(ra) if ra > delay => ra,
            _ => delay,
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy() -> RetryPolicy {
        RetryPolicy { base: Duration::from_secs(1), max_delay: Duration::from_secs(60), max_attempts: 5 }
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let cap = Duration::from_secs(1u64 << (attempt - 1)).min(Duration::from_secs(60));
            for _ in 0..100 {
                let d = policy().delay(attempt, None, &mut rng);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "attempt {attempt}: {d:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: std::collections::HashSet<_> =
            (0..50).map(|_| policy().delay(4, None, &mut rng)).collect();
        assert!(delays.len() > 10, "jitter should produce varied delays, got {}", delays.len());
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let mut rng = StdRng::seed_from_u64(3);
        let d = policy().delay(1, Some(Duration::from_secs(30)), &mut rng);
        assert_eq!(d, Duration::from_secs(30));
        let d = policy().delay(10, Some(Duration::from_millis(1)), &mut rng);
        assert!(d >= Duration::from_secs(30));
    }

    #[test]
    fn exhaustion() {
        assert!(!policy().exhausted(4));
        assert!(policy().exhausted(5));
    }
}
