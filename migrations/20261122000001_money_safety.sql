-- Money safety under stalls and crashes (issue 5).
--
-- needs_review is now a parked state, not a final one: it still has no next_run_at (no
-- automatic step runs on it; final_payouts_are_not_scheduled keeps holding), but it can be
-- left by a recorded resolution. finalized_at is set only for final states from now on;
-- parked_at says when a payout was last parked.
ALTER TABLE payouts
    -- Status queries started (committed BEFORE each call, like submit_attempts), so a crash
    -- cannot hide a query that was made: last_status_at is stamped at the same moment.
    ADD COLUMN status_queries    integer NOT NULL DEFAULT 0,
    -- NOT_FOUND answers since the last submit started. An in-doubt payout is resubmitted only
    -- after enough of them, one interval apart; a submitted one is parked after enough of them.
    ADD COLUMN not_found_answers integer NOT NULL DEFAULT 0,
    -- Steps in a row that failed for a reason retrying cannot fix (unknown provider, missing
    -- intent, a row that does not decode). Bounded: the row is parked, not retried forever.
    ADD COLUMN failed_steps      integer NOT NULL DEFAULT 0,
    ADD COLUMN parked_at         timestamptz,
    -- The latest moment the provider may have received one of our requests for this payout:
    -- a call's start + request timeout while it is in flight (or was lost with its worker),
    -- the time its answer was recorded once it returned. The provider counts its "one minute"
    -- from when it received a request, so the next status query waits one interval from here.
    ADD COLUMN provider_contact_bound timestamptz;

UPDATE payouts SET provider_contact_bound = GREATEST(submitted_at, last_status_at);

UPDATE payouts SET parked_at = finalized_at, finalized_at = NULL WHERE state = 'needs_review';

-- The review queue, oldest first.
CREATE INDEX payouts_needs_review ON payouts (parked_at) WHERE state = 'needs_review';

-- A poison row can be parked before its intent was recorded (nothing was sent): needs_review
-- no longer implies a reference.
ALTER TABLE payouts DROP CONSTRAINT intent_has_reference;
ALTER TABLE payouts ADD CONSTRAINT intent_has_reference CHECK (
    state IN ('pending', 'checked', 'failed', 'cancelled', 'needs_review')
    OR (provider_reference IS NOT NULL AND submit_request IS NOT NULL)
);
