-- Webhooks to backends (issue 10).
--
-- webhook_events is a transactional outbox: an event row is written in the same transaction as
-- the payout transition that causes it, together with one webhook_deliveries row per matching
-- endpoint. A delivery row is a job like a payout row: claimed with FOR UPDATE SKIP LOCKED, a
-- lease and a fencing token, its retry time stored in next_attempt_at. Every HTTP attempt is
-- logged in webhook_attempts.

-- One backend's receiving URL. The signing secret is sealed with AES-256-GCM under a key from
-- configuration (signing needs the secret itself, so it cannot be hashed); the endpoint id is
-- the associated data, so a sealed secret copied to another row does not open.
CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    client_id            text        NOT NULL,
    url                  text        NOT NULL,
    event_types          text[]      NOT NULL CHECK (cardinality(event_types) > 0),
    description          text        NOT NULL DEFAULT '',
    secret_sealed        bytea       NOT NULL,
    -- The secret before the last rotation: it keeps signing (next to the new one) until
    -- previous_expires_at, so receivers can switch without losing a request.
    previous_sealed      bytea,
    previous_expires_at  timestamptz,
    -- Fingerprint of the sealing key (not secret): a wrong key is reported as such.
    sealing_key_id       text        NOT NULL,
    -- Attempts in a row that failed, since when, and until when the endpoint is slowed down.
    consecutive_failures integer     NOT NULL DEFAULT 0,
    failing_since        timestamptz,
    paused_until         timestamptz,
    -- Set after constant failure for the configured time (with an alert); cleared by enable.
    disabled_at          timestamptz,
    disabled_reason      text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- Deleted endpoints stay for the delivery log; they receive nothing.
    deleted_at           timestamptz
);
CREATE INDEX webhook_endpoints_client ON webhook_endpoints (client_id) WHERE deleted_at IS NULL;

-- The outbox. Append-only: what was announced is never rewritten.
CREATE TABLE webhook_events (
    id          uuid PRIMARY KEY,
    client_id   text        NOT NULL,
    event_type  text        NOT NULL,
    payout_id   uuid        REFERENCES payouts (id),
    -- The whole body sent to receivers: {"id", "type", "created_at", "data"}.
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_client_created ON webhook_events (client_id, created_at);
CREATE INDEX webhook_events_payout ON webhook_events (payout_id);

CREATE FUNCTION webhook_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'webhook_events is append-only';
END;
$$;
CREATE TRIGGER webhook_events_no_update BEFORE UPDATE OR DELETE ON webhook_events
    FOR EACH ROW EXECUTE FUNCTION webhook_events_append_only();

CREATE TYPE webhook_delivery_state AS ENUM ('pending', 'delivered', 'gave_up', 'cancelled');

-- One event to one endpoint: the job.
CREATE TABLE webhook_deliveries (
    id               bigserial PRIMARY KEY,
    event_id         uuid        NOT NULL REFERENCES webhook_events (id),
    endpoint_id      uuid        NOT NULL REFERENCES webhook_endpoints (id),
    state            webhook_delivery_state NOT NULL DEFAULT 'pending',
    -- When the next attempt is due; NULL unless pending (keeps the due index small).
    next_attempt_at  timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    -- Grows on every claim; the outcome of an attempt is written only under the current token.
    fencing_token    bigint      NOT NULL DEFAULT 0,
    -- Retries stop (gave_up) once the configured retry window has passed since this moment:
    -- creation, or the last manual redelivery.
    window_start     timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id),
    CONSTRAINT pending_deliveries_are_scheduled CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;
-- Leased rows only (a lease is cleared when its attempt is recorded): the claim counts an
-- endpoint's deliveries in flight through this, however long its backlog is.
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (endpoint_id)
    WHERE lease_expires_at IS NOT NULL;

-- The delivery log: every request that went out (or was refused before it could), with how it
-- ended. Written even when the worker's lease was lost meanwhile: what was sent is on record.
CREATE TABLE webhook_attempts (
    id               bigserial PRIMARY KEY,
    delivery_id      bigint      NOT NULL REFERENCES webhook_deliveries (id),
    attempt          integer     NOT NULL,
    worker           text        NOT NULL,
    fencing_token    bigint      NOT NULL,
    started_at       timestamptz NOT NULL,
    latency_ms       integer     NOT NULL,
    -- delivered, http_status, timeout, connect, refused (address policy), invalid_url, error
    outcome          text        NOT NULL,
    status_code      integer,
    remote_addr      text,
    error            text,
    response_excerpt text,
    lease_lost       boolean     NOT NULL DEFAULT false
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
