-- One payout per (client, external_id). The idempotency key alone did not stop a client that
-- retried with a fresh Idempotency-Key from creating a second payout for the same order.
--
-- Existing rows that break the rule: payoutd cannot tell which of two payouts for one order is
-- the wrong one (both may already be paid), so this migration deletes and renames nothing. It
-- stops instead with an error naming how many (client, external_id) pairs are duplicated; the
-- migration is not recorded, so every payoutd command refuses to start (the previous version
-- keeps working) until someone has looked at them. List them with
--     SELECT client_id, external_id, array_agg(id ORDER BY created_at), array_agg(state::text)
--       FROM payouts GROUP BY client_id, external_id HAVING count(*) > 1;
-- reconcile them with the provider, then give each later duplicate a distinct external_id
-- (for example external_id || '#dup-' || id) and start payoutd again. Only external_id changes;
-- the payouts, their events and their provider references stay as they are.
--
-- Building the index locks payouts against writes for the time it takes (a few seconds per
-- million rows); readers are not blocked.

DO $$
DECLARE
    pairs bigint;
BEGIN
    SELECT count(*) INTO pairs
      FROM (SELECT 1 FROM payouts GROUP BY client_id, external_id HAVING count(*) > 1) AS d;
    IF pairs > 0 THEN
        RAISE EXCEPTION
            'payouts holds % (client_id, external_id) pair(s) with more than one payout; payoutd will not pick one',
            pairs
            USING HINT = 'See migrations/20261122000002_client_external_id_unique.sql: list them, '
                         'reconcile them with the provider, give each later duplicate a distinct external_id, '
                         'then start payoutd again.';
    END IF;
END;
$$;

CREATE UNIQUE INDEX payouts_client_external_id ON payouts (client_id, external_id);
