-- Mass-payout batches and reconciliation with the provider (issue 8).
--
-- A batch row becomes an ordinary payout (same table, same engine, same rules) that remembers
-- its batch and its row number in the uploaded file. The batch itself holds what the file as
-- a whole means: who uploaded it, under which reference (idempotency), the content hash, and
-- whether it waits for a second person's approval.
--
-- Adding nullable columns does not rewrite payouts; the indexes below lock payouts against
-- writes while they are built (a few seconds per million rows), readers are not blocked.

CREATE TYPE batch_state AS ENUM ('awaiting_approval', 'processing', 'completed');

CREATE TABLE batches (
    id                 uuid PRIMARY KEY,
    client_id          text        NOT NULL,
    -- The client's own name for the upload: the same reference with the same content is the
    -- same batch (a replay); with other content it is a conflict. Without one, the content
    -- hash stands in for it.
    reference          text        NOT NULL,
    -- sha256 over the canonical form of every validated row, in row order: a CSV file and a
    -- JSON-lines file that mean the same payouts have the same hash.
    content_hash       bytea       NOT NULL,
    format             text        NOT NULL CHECK (format IN ('csv', 'jsonl')),
    state              batch_state NOT NULL,
    row_count          integer     NOT NULL CHECK (row_count > 0),
    created_by_token   uuid,
    -- Maker/checker: the client (not merely another token of the uploader's) that released it.
    approved_by_client text,
    approved_by_token  uuid,
    approved_at        timestamptz,
    -- The last cancel request; payouts it could not cancel (an intent already recorded) go on.
    cancelled_by_client text,
    cancelled_at       timestamptz,
    cancel_reason      text,
    completed_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT batch_reference_per_client UNIQUE (client_id, reference),
    -- batch.completed is written exactly when completed_at is set, once.
    CONSTRAINT completed_batches_have_a_time CHECK ((state = 'completed') = (completed_at IS NOT NULL))
);
CREATE INDEX batches_client_created ON batches (client_id, created_at);

ALTER TABLE payouts
    ADD COLUMN batch_id  uuid REFERENCES batches (id),
    -- The row number in the uploaded file (data rows from 1).
    ADD COLUMN batch_row integer,
    ADD CONSTRAINT batch_row_with_batch CHECK ((batch_id IS NULL) = (batch_row IS NULL));

CREATE UNIQUE INDEX payouts_batch_row ON payouts (batch_id, batch_row) WHERE batch_id IS NOT NULL;
-- "Is any payout of this batch still open?" is asked in the transaction of every final
-- transition of a batch payout: only open rows are indexed, so the answer costs one probe.
CREATE INDEX payouts_batch_open ON payouts (batch_id)
    WHERE batch_id IS NOT NULL AND state NOT IN ('paid', 'failed', 'cancelled');
-- Reconciliation reads the payouts of one account submitted in a period.
CREATE INDEX payouts_provider_submitted ON payouts (provider, submitted_at) WHERE submitted_at IS NOT NULL;

-- One comparison of our payouts with the provider's own record of a period.
CREATE TABLE reconciliations (
    id            uuid PRIMARY KEY,
    account       text        NOT NULL,
    kind          text        NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL CHECK (period_end > period_start),
    -- completed; unsupported (the provider has no registry call: nothing was compared);
    -- failed (the registry could not be read: see summary.error)
    status        text        NOT NULL CHECK (status IN ('completed', 'unsupported', 'failed')),
    -- Counts per category, registry pages read, minutes that could not be paged, errors.
    summary       jsonb       NOT NULL,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reconciliations_account ON reconciliations (account, created_at);

-- Every row that did not simply match (matched rows are only counted).
CREATE TABLE reconciliation_items (
    id                 bigserial PRIMARY KEY,
    reconciliation_id  uuid        NOT NULL REFERENCES reconciliations (id),
    -- missing_at_provider, unknown_to_us, amount_mismatch, currency_mismatch, status_mismatch,
    -- in_progress, checked_by_status
    category           text        NOT NULL,
    reference          text,
    payout_id          uuid REFERENCES payouts (id),
    our_state          text,
    our_amount         numeric,
    our_currency       text,
    provider_status    text,
    provider_amount    numeric,
    provider_currency  text,
    provider_created   timestamptz,
    detail             text        NOT NULL,
    -- What was done about it: parked (open payout moved to needs_review), alerted (a final
    -- payout: an event and an error-level log line, no state change), or none.
    action             text        NOT NULL DEFAULT 'none'
);
CREATE INDEX reconciliation_items_of ON reconciliation_items (reconciliation_id, id);
