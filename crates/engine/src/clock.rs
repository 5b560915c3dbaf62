//! The worker's wall clock, kept behind a type so that tests can run a worker whose clock is
//! wrong. Due times never come from here: they are computed on the database's clock, so a
//! worker whose clock runs ahead cannot poll the provider early (DESIGN rule 7).

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    skew: chrono::Duration,
}

impl Clock {
    /// The machine's clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that runs `skew` ahead of the machine's (behind, if negative).
    pub fn skewed(skew: chrono::Duration) -> Self {
        Self { skew }
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.skew
    }
}
