-- Operator controls (issue 9): actions on payouts, pausing provider accounts, per-client limits,
-- retention of destination details and callback bodies. See docs/operator-controls.md.

-- A failed payout is never reopened: an operator retry creates a new payout, linked both ways.
-- A payout is retried at most once (its retry may be retried in turn), so the links form chains.
ALTER TABLE payouts
    ADD COLUMN retry_of    uuid REFERENCES payouts (id),
    ADD COLUMN retried_by  uuid REFERENCES payouts (id),
    -- When retention masked the destination details of this (final) payout.
    ADD COLUMN redacted_at timestamptz;
CREATE UNIQUE INDEX payouts_retry_of ON payouts (retry_of) WHERE retry_of IS NOT NULL;
-- Retention walks final payouts not yet redacted, oldest first; redacted ones leave the index.
CREATE INDEX payouts_retention_due ON payouts (finalized_at)
    WHERE redacted_at IS NULL AND finalized_at IS NOT NULL;
-- A client's daily total per currency, summed at every enqueue of a client with limits.
CREATE INDEX payouts_client_day ON payouts (client_id, currency, created_at);

-- Callback bodies are pruned after the retention period; the row (who, when, outcome) stays.
ALTER TABLE provider_callbacks ADD COLUMN pruned_at timestamptz;
CREATE INDEX provider_callbacks_retention_due ON provider_callbacks (received_at) WHERE pruned_at IS NULL;

-- Operator actions that are not payout transitions (pauses, limits, bulk actions, retention
-- runs), with who and why. Payout actions are in payout_events like every other transition.
CREATE TABLE operator_events (
    id         bigserial   PRIMARY KEY,
    action     text        NOT NULL,
    -- What the action was about: an account, a client, a filter, "retention".
    target     text        NOT NULL,
    actor      text        NOT NULL,
    reason     text        NOT NULL,
    detail     jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX operator_events_action ON operator_events (action, created_at);

CREATE FUNCTION operator_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'operator_events is append-only';
END;
$$;
CREATE TRIGGER operator_events_no_update BEFORE UPDATE OR DELETE ON operator_events
    FOR EACH ROW EXECUTE FUNCTION operator_events_append_only();

-- Paused provider accounts ('*': all of them). While a row stops a payout's account, the
-- payout waits before its intent is recorded: nothing new is sent. Resuming deletes the row.
CREATE TABLE account_pauses (
    account   text        PRIMARY KEY,
    actor     text        NOT NULL,
    reason    text        NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now()
);

-- What one API client may send. No row: no limits.
CREATE TABLE client_limits (
    client_id                 text        PRIMARY KEY,
    -- NULL: any. Otherwise the destination code (destination.destination) must be listed.
    allowed_destination_codes text[],
    -- NULL: any. Otherwise the account number (destination.client) must be listed.
    allowed_accounts          text[],
    updated_by                text        NOT NULL,
    reason                    text        NOT NULL,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
-- Per currency; a currency without a row has no amount limits. 0 forbids the currency.
CREATE TABLE client_currency_limits (
    client_id             text    NOT NULL REFERENCES client_limits (client_id) ON DELETE CASCADE,
    currency              text    NOT NULL,
    max_amount_per_payout numeric CHECK (max_amount_per_payout >= 0),
    -- Sum of the client's payouts created in one UTC day that are not failed or cancelled.
    max_total_per_day     numeric CHECK (max_total_per_day >= 0),
    PRIMARY KEY (client_id, currency)
);

-- Confirmation tokens of bulk actions: shown once, stored as SHA-256, single use, short-lived,
-- bound to the operator token that asked, the action, the filter and the count it matched.
CREATE TABLE operator_confirmations (
    token_hash   bytea       PRIMARY KEY,
    api_token_id uuid        NOT NULL,
    action       jsonb       NOT NULL,
    payouts      bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);

-- webhook_events stays append-only, with one exception: retention may mask the destination
-- inside a payload (data.payout.destination) in a transaction that says so
-- (SET LOCAL payoutd.retention = 'on'). Every other column and every other part of the payload
-- must stay exactly as it was.
CREATE OR REPLACE FUNCTION webhook_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('payoutd.retention', true) = 'on'
       AND NEW.id = OLD.id
       AND NEW.client_id = OLD.client_id
       AND NEW.event_type = OLD.event_type
       AND NEW.payout_id IS NOT DISTINCT FROM OLD.payout_id
       AND NEW.created_at = OLD.created_at
       AND (NEW.payload #- '{data,payout,destination}') = (OLD.payload #- '{data,payout,destination}')
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'webhook_events is append-only';
END;
$$;
