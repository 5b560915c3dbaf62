-- payoutd schema. The payout row is the job: its state, schedule (next_run_at) and lease live
-- on the row, so a claim, a transition and the audit event commit together.

CREATE TYPE payout_state AS ENUM (
    'pending', 'checked', 'intent_recorded', 'submitted', 'in_doubt',
    'paid', 'failed', 'cancelled', 'needs_review'
);

-- Our provider references must fit 8B's 20-character transaction id.
CREATE SEQUENCE provider_reference_seq;

CREATE TABLE payouts (
    id                  uuid PRIMARY KEY,
    client_id           text        NOT NULL,
    external_id         text        NOT NULL,
    idempotency_key     text        NOT NULL,
    -- sha256 of the canonical request: the same key with a different body is a conflict.
    request_hash        bytea       NOT NULL,
    provider            text        NOT NULL,
    account             text        NOT NULL,
    amount              numeric     NOT NULL CHECK (amount > 0),
    currency            text        NOT NULL,
    destination         jsonb       NOT NULL,
    state               payout_state NOT NULL DEFAULT 'pending',
    -- When the engine should run the next step; NULL once final (keeps the due index small).
    next_run_at         timestamptz,
    lease_owner         text,
    lease_expires_at    timestamptz,
    -- Grows on every claim; every engine write checks it, so a worker whose lease was taken
    -- over can no longer write.
    fencing_token       bigint      NOT NULL DEFAULT 0,
    -- Attempts of the current step (reset on each state change) and in total.
    attempt             integer     NOT NULL DEFAULT 0,
    total_attempts      integer     NOT NULL DEFAULT 0,
    -- Submit calls started (counted and committed BEFORE the call, so a crash mid-call is seen).
    submit_attempts     integer     NOT NULL DEFAULT 0,
    -- Set (and committed) just before a submit call, cleared by the write of its outcome. Found
    -- set by a claim, it means a worker died mid-call: the outcome is unknown (in doubt).
    submit_in_flight    boolean     NOT NULL DEFAULT false,
    provider_reference  text UNIQUE,
    -- The frozen submit request (write-ahead), without signatures.
    submit_request      jsonb,
    submitted_at        timestamptz,
    last_status_at      timestamptz,
    last_error          text,
    traceparent         text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finalized_at        timestamptz,
    CONSTRAINT final_payouts_are_not_scheduled CHECK (
        state NOT IN ('paid', 'failed', 'cancelled', 'needs_review') OR next_run_at IS NULL
    ),
    CONSTRAINT intent_has_reference CHECK (
        state IN ('pending', 'checked', 'failed', 'cancelled')
        OR (provider_reference IS NOT NULL AND submit_request IS NOT NULL)
    )
);

CREATE UNIQUE INDEX payouts_idempotency ON payouts (client_id, idempotency_key);
-- Claiming due work touches only unfinished payouts, however many final ones the table holds.
CREATE INDEX payouts_due ON payouts (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX payouts_state_open ON payouts (state) WHERE next_run_at IS NOT NULL;
CREATE INDEX payouts_created ON payouts (created_at);

-- Append-only audit log: every transition, who made it and why. Never secrets.
CREATE TABLE payout_events (
    id            bigserial PRIMARY KEY,
    payout_id     uuid        NOT NULL REFERENCES payouts (id),
    from_state    payout_state,
    to_state      payout_state NOT NULL,
    actor         text        NOT NULL,
    reason        text        NOT NULL,
    detail        jsonb,
    fencing_token bigint,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX payout_events_payout ON payout_events (payout_id, id);

CREATE FUNCTION payout_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'payout_events is append-only';
END;
$$;
CREATE TRIGGER payout_events_no_update BEFORE UPDATE OR DELETE ON payout_events
    FOR EACH ROW EXECUTE FUNCTION payout_events_append_only();

-- Every callback received, verified or not, as received.
CREATE TABLE provider_callbacks (
    id                bigserial PRIMARY KEY,
    provider          text        NOT NULL,
    provider_reference text,
    payout_id         uuid REFERENCES payouts (id),
    verified          boolean     NOT NULL,
    -- Equal for redeliveries of one notification; NULL for unverifiable callbacks and for the
    -- redeliveries themselves (stored for the audit trail, recognised as duplicates, ignored).
    dedupe_key        text,
    duplicate         boolean     NOT NULL DEFAULT false,
    body              text        NOT NULL,
    outcome           text        NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX provider_callbacks_dedupe ON provider_callbacks (provider, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
-- Client tokens for payoutd's own API: shown once, stored as a SHA-256 hash only.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    client_id    text        NOT NULL,
    label        text        NOT NULL,
    token_hash   bytea       NOT NULL UNIQUE,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- Per-provider call budget shared by all workers: a fixed one-second window counter plus a
-- provider-wide pause set from a 429's Retry-After.
CREATE TABLE provider_rate_limits (
    provider      text PRIMARY KEY,
    window_start  timestamptz NOT NULL DEFAULT now(),
    calls         integer     NOT NULL DEFAULT 0,
    paused_until  timestamptz
);
