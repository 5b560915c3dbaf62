//! The random source behind the fault rates: seeded, so a failing run can be replayed.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub(crate) struct Dice(Mutex<StdRng>);

impl Dice {
    pub(crate) fn new(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    /// True with probability `rate`. 0 (or NaN, or below) never fires, 1 or above always does,
    /// and neither consumes randomness, so switching one fault on leaves the others' draws alone.
    pub(crate) fn roll(&self, rate: f64) -> bool {
        if rate.is_nan() || rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        self.0.lock().unwrap_or_else(PoisonError::into_inner).random::<f64>() < rate
    }

    /// A uniformly random duration in `[0, max]`.
    pub(crate) fn up_to(&self, max: Duration) -> Duration {
        let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if max_nanos == 0 {
            return Duration::ZERO;
        }
        let nanos = self.0.lock().unwrap_or_else(PoisonError::into_inner).random_range(0..=max_nanos);
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_exact() {
        let dice = Dice::new(1);
        assert!((0..1000).all(|_| !dice.roll(0.0)));
        assert!((0..1000).all(|_| !dice.roll(-1.0)));
        assert!((0..1000).all(|_| !dice.roll(f64::NAN)));
        assert!((0..1000).all(|_| dice.roll(1.0)));
        assert!((0..1000).all(|_| dice.roll(7.0)));
    }

    #[test]
    fn a_half_rate_fires_about_half_the_time() {
        let dice = Dice::new(42);
        let hits = (0..10_000).filter(|_| dice.roll(0.5)).count();
        assert!((4_500..5_500).contains(&hits), "{hits}");
    }

    #[test]
    fn same_seed_same_draws() {
        let (a, b) = (Dice::new(7), Dice::new(7));
        let draws = |d: &Dice| (0..100).map(|_| d.roll(0.3)).collect::<Vec<_>>();
        assert_eq!(draws(&a), draws(&b));
    }

    #[test]
    fn latency_stays_in_range() {
        let dice = Dice::new(3);
        assert_eq!(dice.up_to(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(5);
        assert!((0..1000).all(|_| dice.up_to(max) <= max));
    }
}
