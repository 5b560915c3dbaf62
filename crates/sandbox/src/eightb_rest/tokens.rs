//! Access and refresh tokens: opaque random strings with an expiry. Pure state, timed with
//! tokio's clock so that tests with a paused clock see tokens expire too.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Tokens expired longer ago than this are forgotten (a later use is then "unknown", still 401).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Issued by this sandbox, but past its expiry (or revoked by `expire_all_*`).
    Expired,
    /// Never issued here, consumed by a refresh, or long forgotten.
    Unknown,
}

/// A fresh pair, as authorize and refresh answer it.
pub(crate) struct Issued {
    pub access: String,
    pub refresh: String,
}

#[derive(Default)]
pub(crate) struct Tokens {
    access: HashMap<String, Instant>,
    refresh: HashMap<String, Instant>,
}

impl Tokens {
    /// A new access and refresh token, valid from `now` for the given lifetimes.
    pub(crate) fn issue(&mut self, now: Instant, access_life: Duration, refresh_life: Duration) -> Issued {
        let remembered = |expiry: &Instant| now.saturating_duration_since(*expiry) < FORGET_AFTER;
        self.access.retain(|_, expiry| remembered(expiry));
        self.refresh.retain(|_, expiry| remembered(expiry));
        let issued = Issued { access: random_token("at-"), refresh: random_token("rt-") };
        self.access.insert(issued.access.clone(), now + access_life);
        self.refresh.insert(issued.refresh.clone(), now + refresh_life);
        issued
    }

    pub(crate) fn check_access(&self, token: &str, now: Instant) -> Result<(), Refused> {
        check(&self.access, token, now)
    }

    /// Accepts a refresh token; with `rotate` it cannot be used again.
    pub(crate) fn use_refresh(&mut self, token: &str, now: Instant, rotate: bool) -> Result<(), Refused> {
        check(&self.refresh, token, now)?;
        if rotate {
            self.refresh.remove(token);
        }
        Ok(())
    }

    /// Every access token issued so far expires at `now`.
    pub(crate) fn expire_access(&mut self, now: Instant) {
        self.access.values_mut().for_each(|expiry| *expiry = (*expiry).min(now));
    }

    /// Every refresh token issued so far expires at `now`.
    pub(crate) fn expire_refresh(&mut self, now: Instant) {
        self.refresh.values_mut().for_each(|expiry| *expiry = (*expiry).min(now));
    }
}

fn check(tokens: &HashMap<String, Instant>, token: &str, now: Instant) -> Result<(), Refused> {
    match tokens.get(token) {
        None => Err(Refused::Unknown),
        Some(expiry) if now >= *expiry => Err(Refused::Expired),
        Some(_) => Ok(()),
    }
}

/// `prefix` and 128 random bits in hex: unguessable, and recognisable in a log.
pub(crate) fn random_token(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// `prefix` and 96 random bits in hex, for intent and disbursement ids.
pub(crate) fn random_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", rand::random::<u128>() >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn tokens_expire_and_unknown_ones_are_told_apart() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let pair = tokens.issue(t0, MIN, 10 * MIN);
        assert_eq!(tokens.check_access(&pair.access, t0 + MIN / 2), Ok(()));
        assert_eq!(tokens.check_access(&pair.access, t0 + MIN), Err(Refused::Expired));
        assert_eq!(tokens.check_access("at-nope", t0), Err(Refused::Unknown));
        // A refresh token is not an access token, nor the other way round.
        assert_eq!(tokens.check_access(&pair.refresh, t0), Err(Refused::Unknown));
        assert_eq!(tokens.use_refresh(&pair.access, t0, true), Err(Refused::Unknown));
    }

    #[test]
    fn rotation_consumes_the_refresh_token() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let kept = tokens.issue(t0, MIN, 10 * MIN);
        assert_eq!(tokens.use_refresh(&kept.refresh, t0, false), Ok(()));
        assert_eq!(tokens.use_refresh(&kept.refresh, t0, false), Ok(()));
        let rotated = tokens.issue(t0, MIN, 10 * MIN);
        assert_eq!(tokens.use_refresh(&rotated.refresh, t0, true), Ok(()));
        assert_eq!(tokens.use_refresh(&rotated.refresh, t0, true), Err(Refused::Unknown));
        assert_eq!(tokens.use_refresh(&kept.refresh, t0 + 10 * MIN, true), Err(Refused::Expired));
    }

    #[test]
    fn expiring_all_leaves_later_tokens_alone() {
        let mut tokens = Tokens::default();
        let t0 = Instant::now();
        let old = tokens.issue(t0, MIN, 10 * MIN);
        tokens.expire_access(t0);
        assert_eq!(tokens.check_access(&old.access, t0), Err(Refused::Expired));
        assert_eq!(tokens.use_refresh(&old.refresh, t0, false), Ok(()));
        tokens.expire_refresh(t0);
        assert_eq!(tokens.use_refresh(&old.refresh, t0, false), Err(Refused::Expired));
        let new = tokens.issue(t0, MIN, 10 * MIN);
        assert_eq!(tokens.check_access(&new.access, t0), Ok(()));
        assert_eq!(tokens.use_refresh(&new.refresh, t0, false), Ok(()));
    }

    #[test]
    fn ids_look_random() {
        let (a, b) = (random_id("d-"), random_id("d-"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 + 24);
        assert!(a[2..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(random_token("at-").len(), 3 + 32);
    }
}
