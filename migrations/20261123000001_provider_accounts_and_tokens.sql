-- Provider accounts and token providers (issue 6).
--
-- payouts.provider (and provider_callbacks.provider, provider_rate_limits.provider) now hold
-- the configured ACCOUNT name: several accounts of one provider kind work side by side. A
-- deployment upgraded from before accounts keeps working unchanged: its configuration becomes
-- one account named '8b_partner' (the value every existing row already holds), and its
-- callback route stays /v1/callbacks/8b_partner.

-- The provider's own id of a payout, where its status call needs it (8B REST's disbursement
-- id, learnt from the submit answer). One account never gives the same id to two payouts.
ALTER TABLE payouts ADD COLUMN provider_payout_id TEXT;
CREATE UNIQUE INDEX payouts_provider_payout_id
    ON payouts (provider, provider_payout_id) WHERE provider_payout_id IS NOT NULL;

-- Provider access/refresh tokens shared by every worker of this database (DESIGN rules 8, 10).
-- `sealed` is AES-256-GCM over the tokens, with the credential name as associated data, under
-- the key named by `key_id`; nothing here is readable without the configured key.
CREATE TABLE provider_tokens (
    credential         TEXT PRIMARY KEY,
    sealed             BYTEA NOT NULL,
    key_id             TEXT NOT NULL,
    version            BIGINT NOT NULL,
    access_expires_at  TIMESTAMPTZ NOT NULL,
    refresh_expires_at TIMESTAMPTZ,
    refreshed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Webhooks that named a provider id no payout carries yet (8B REST: the submit answer that
-- would have told us the id was lost). An in-doubt payout of the account asks the provider
-- about each one, by that id, to find out whether it is ours. Unsigned input: one row per id,
-- counted, never more.
CREATE TABLE unmatched_provider_notifications (
    provider           TEXT NOT NULL,
    provider_payout_id TEXT NOT NULL,
    received_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    deliveries         INT NOT NULL DEFAULT 1,
    -- When a payout last asked the provider about it (and found it was not that payout's).
    checked_at         TIMESTAMPTZ,
    PRIMARY KEY (provider, provider_payout_id)
);
