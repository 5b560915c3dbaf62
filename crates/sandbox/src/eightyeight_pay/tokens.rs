//! Access tokens and their sessions, as strict as the guide reads: a token "is valid for 60
//! seconds and must be used immediately to initiate a transaction". So a token is accepted
//! only with the session it was issued with, only until it expires, and for one cashout call
//! at most; balance calls may reuse a live token. Pure state: the handlers lock it and let go.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How long an expired token is remembered, so it is refused as expired rather than unknown
/// (both are 401s; only the counters differ). Bounds the memory of a long load run.
const REMEMBER_EXPIRED: Duration = Duration::from_secs(600);

/// A freshly issued token and its session.
pub(crate) struct Issued {
    pub token: String,
    pub session_id: String,
}

/// What a call wants to do with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// May reuse a live token any number of times.
    Balance,
    /// Consumes the token: the first cashout call that presents it with its session uses it
    /// up, whatever that call's outcome (400, 422, forced 401 or executed), as a one-time
    /// token would be.
    Cashout,
}

/// Why a call was answered 401. Nothing is executed after any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No `Authorization: Bearer` header, or a token never issued (or long forgotten).
    UnknownToken,
    /// The `x-session-id` is missing or is not the session issued with the token.
    BadSession,
    /// Past its lifetime, or expired by [`Tokens::expire_all`].
    Expired,
    /// Already used for a cashout, presented for another.
    Reused,
    /// Valid, but refused by the forced-401 fault.
    Forced,
}

impl Refused {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::UnknownToken => "Unauthorized: invalid or missing access token",
            Self::BadSession => "Unauthorized: session does not match the access token",
            Self::Expired => "Unauthorized: access token expired",
            Self::Reused => "Unauthorized: access token already used for a transaction",
            Self::Forced => "Unauthorized: access token rejected",
        }
    }
}

struct Record {
    session_id: String,
    expires_at: Instant,
    /// The [`Tokens::epoch`] it was issued in; an older epoch means expired.
    epoch: u64,
    used_for_cashout: bool,
}

pub(crate) struct Tokens {
    lifetime: Duration,
    records: HashMap<String, Record>,
    /// Tokens in issue order (which is expiry order, the lifetime being fixed), for forgetting.
    order: VecDeque<(Instant, String)>,
    /// Bumped by [`Tokens::expire_all`]: every token issued before is expired at once.
    epoch: u64,
}

impl Tokens {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self { lifetime, records: HashMap::new(), order: VecDeque::new(), epoch: 0 }
    }

    pub(crate) fn issue(&mut self, now: Instant) -> Issued {
        self.forget_old(now);
        let token = format!("88p_{}", random_hex());
        let session_id = format!("sess_{}", uuid_ish());
        let expires_at = now + self.lifetime;
        self.records.insert(
            token.clone(),
            Record { session_id: session_id.clone(), expires_at, epoch: self.epoch, used_for_cashout: false },
        );
        self.order.push_back((expires_at, token.clone()));
        Issued { token, session_id }
    }

    /// Checks a call's token and session, in this order: known token, its session, not
    /// expired, not used for a cashout (cashouts only), then `forced` (asked only of an
    /// otherwise valid token). A cashout call that got as far as its session consumes the token.
    pub(crate) fn authorize(
        &mut self,
        token: Option<&str>,
        session: Option<&str>,
        purpose: Purpose,
        now: Instant,
        forced: impl FnOnce() -> bool,
    ) -> Result<(), Refused> {
        let record = token.and_then(|t| self.records.get_mut(t)).ok_or(Refused::UnknownToken)?;
        if session != Some(record.session_id.as_str()) {
            return Err(Refused::BadSession);
        }
        let consume = purpose == Purpose::Cashout;
        let was_used = record.used_for_cashout;
        record.used_for_cashout |= consume;
        if now >= record.expires_at || record.epoch != self.epoch {
            return Err(Refused::Expired);
        }
        if consume && was_used {
            return Err(Refused::Reused);
        }
        if forced() {
            return Err(Refused::Forced);
        }
        Ok(())
    }

    /// Expires every token issued so far; later ones are unaffected.
    pub(crate) fn expire_all(&mut self) {
        self.epoch += 1;
    }

    /// Drops tokens that expired more than [`REMEMBER_EXPIRED`] ago.
    fn forget_old(&mut self, now: Instant) {
        while let Some((expires_at, _)) = self.order.front() {
            if *expires_at + REMEMBER_EXPIRED > now {
                break;
            }
            if let Some((_, token)) = self.order.pop_front() {
                self.records.remove(&token);
            }
        }
    }
}

/// 128 random bits as 32 lowercase hex digits. Fresh randomness, not the seeded dice: tokens
/// must not repeat across runs.
pub(crate) fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// 128 random bits written like a UUID (8-4-4-4-12), as the guide's session ids look.
fn uuid_ish() -> String {
    let hex = random_hex();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> (Tokens, Instant) {
        (Tokens::new(Duration::from_secs(60)), Instant::now())
    }

    fn check(tokens: &mut Tokens, issued: &Issued, purpose: Purpose, at: Instant) -> Result<(), Refused> {
        tokens.authorize(Some(&issued.token), Some(&issued.session_id), purpose, at, || false)
    }

    #[test]
    fn ids_look_like_the_guides() {
        let (mut tokens, now) = tokens();
        let issued = tokens.issue(now);
        assert!(issued.session_id.starts_with("sess_"));
        assert_eq!(issued.session_id.len(), "sess_".len() + 36);
        assert_eq!(issued.session_id.matches('-').count(), 4);
        assert_ne!(issued.token, tokens.issue(now).token);
    }

    #[test]
    fn one_cashout_per_token_but_balance_calls_may_repeat() {
        let (mut tokens, now) = tokens();
        let issued = tokens.issue(now);
        assert_eq!(check(&mut tokens, &issued, Purpose::Balance, now), Ok(()));
        assert_eq!(check(&mut tokens, &issued, Purpose::Cashout, now), Ok(()));
        assert_eq!(check(&mut tokens, &issued, Purpose::Cashout, now), Err(Refused::Reused));
        assert_eq!(check(&mut tokens, &issued, Purpose::Balance, now), Ok(()));
    }

    #[test]
    fn session_expiry_and_unknown_tokens() {
        let (mut tokens, now) = tokens();
        let a = tokens.issue(now);
        let b = tokens.issue(now);
        let wrong = tokens.authorize(Some(&a.token), Some(&b.session_id), Purpose::Cashout, now, || false);
        assert_eq!(wrong, Err(Refused::BadSession));
        let missing = tokens.authorize(Some(&a.token), None, Purpose::Balance, now, || false);
        assert_eq!(missing, Err(Refused::BadSession));
        let unknown = tokens.authorize(Some("nope"), Some(&a.session_id), Purpose::Balance, now, || false);
        assert_eq!(unknown, Err(Refused::UnknownToken));
        assert_eq!(tokens.authorize(None, None, Purpose::Balance, now, || false), Err(Refused::UnknownToken));
        // A refused session did not use the token up.
        assert_eq!(check(&mut tokens, &a, Purpose::Cashout, now), Ok(()));
        let later = now + Duration::from_secs(60);
        assert_eq!(check(&mut tokens, &b, Purpose::Balance, later), Err(Refused::Expired));
    }

    #[test]
    fn expire_all_spares_later_tokens_and_forced_refusals_consume() {
        let (mut tokens, now) = tokens();
        let old = tokens.issue(now);
        tokens.expire_all();
        let new = tokens.issue(now);
        assert_eq!(check(&mut tokens, &old, Purpose::Balance, now), Err(Refused::Expired));
        let forced =
            tokens.authorize(Some(&new.token), Some(&new.session_id), Purpose::Cashout, now, || true);
        assert_eq!(forced, Err(Refused::Forced));
        assert_eq!(check(&mut tokens, &new, Purpose::Cashout, now), Err(Refused::Reused));
    }

    #[test]
    fn long_expired_tokens_are_forgotten() {
        let (mut tokens, now) = tokens();
        let old = tokens.issue(now);
        let much_later = now + Duration::from_secs(60) + REMEMBER_EXPIRED;
        tokens.issue(much_later);
        assert_eq!(check(&mut tokens, &old, Purpose::Balance, much_later), Err(Refused::UnknownToken));
        assert_eq!(tokens.records.len(), 1);
    }
}
