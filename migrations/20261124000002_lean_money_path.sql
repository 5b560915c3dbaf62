-- Issue 12: workers take our provider references in blocks. One nextval now reserves the
-- hundred values from the one it returns (the increment), which a worker hands out from
-- memory: one round trip per hundred intents instead of one per intent. Values handed out
-- before stay below every block (nextval continues from the last value plus the increment),
-- and a worker of the previous version, which uses only the value itself, can never meet a
-- block of another worker: two values nextval returns are at least a hundred apart.
ALTER SEQUENCE provider_reference_seq INCREMENT BY 100;

-- Workers waiting for work, so that an enqueue wakes them (pg_notify) only when one is
-- waiting: a NOTIFY serializes the commits of every notifying transaction of the database,
-- which would cap enqueues at one commit at a time. A worker marks itself here each time it
-- goes to sleep with free slots and clears the mark when it takes work again. Unlogged: a mark
-- lost in a crash only means a missed wake-up, which the worker's polling fallback covers
-- (marks older than a minute are ignored, so a dead worker's mark stops waking anyone).
CREATE UNLOGGED TABLE idle_workers (
    worker_id text PRIMARY KEY,
    since     timestamptz NOT NULL DEFAULT now()
);
