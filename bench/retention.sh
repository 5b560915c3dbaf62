#!/usr/bin/env bash
# Benchmark: how long does one retention pass take over FINAL (default 1,000,000) final payouts
# that are all past the retention period?
# Builds a scratch database from migrations/ and inserts, with generate_series:
#   - FINAL paid payouts finalized 100 days ago, each with a destination, a frozen 8B partner
#     submit request, one webhook event whose payload carries the destination, and one provider
#     callback received 100 days ago: everything the pass masks or prunes;
#   - RECENT (default 100,000) paid payouts finalized yesterday and OPEN (default 10,000)
#     submitted payouts created 200 days ago, each with an old callback: what it must leave alone.
# Then runs `payoutd retention run` (default periods: 90 days destination, 30 days callbacks,
# 5,000 rows per statement), timed, and checks what changed.
#   usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/retention.sh
#          PAYOUTD=target/release/payoutd FINAL=1000000 bench/retention.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL to an admin connection}"
FINAL="${FINAL:-1000000}"
RECENT="${RECENT:-100000}"
OPEN="${OPEN:-10000}"
PAYOUTD="${PAYOUTD:-cargo run --release --quiet --}"
db=payoutd_retentionbench
scratch="${DATABASE_URL%/*}/$db"
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
trap 'psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db"' EXIT
DATABASE_URL="$scratch" $PAYOUTD migrate

echo "inserting $FINAL old final, $RECENT recent final and $OPEN old open payouts ..."
start=$(date +%s)
psql "$scratch" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                     currency, destination, state, next_run_at, provider_reference, submit_request,
                     submitted_at, created_at, updated_at, finalized_at)
SELECT gen_random_uuid(), 'client-' || (g % 50), 'e' || g, 'k' || g, '\x00', '8b_partner', 'svc', 150000, 'IDR',
       jsonb_build_object('phone', '62' || (800000000 + g), 'client', (1000000000 + g)::text,
                          'destination', 'bank_bca', 'receiver_name', 'Budi Santoso ' || g, 'receiver_bic', 'CENAIDJA'),
       CASE WHEN g <= $FINAL THEN 'paid' WHEN g <= $FINAL + $RECENT THEN 'paid' ELSE 'submitted' END::payout_state,
       CASE WHEN g > $FINAL + $RECENT THEN now() + interval '1 hour' END,
       'PO' || lpad(g::text, 18, '0'),
       jsonb_build_object('id', 'PO' || lpad(g::text, 18, '0'), 'dt', '2026-08-01 10:00:00', 'amount', '150000',
                          'currency', 'IDR', 'phone', '62' || (800000000 + g), 'client', (1000000000 + g)::text,
                          'destination', 'bank_bca', 'receiver_fio', 'Budi Santoso ' || g, 'receiver_bic', 'CENAIDJA'),
       now() - interval '200 days', now() - interval '200 days', now() - interval '200 days',
       CASE WHEN g <= $FINAL THEN now() - interval '100 days'
            WHEN g <= $FINAL + $RECENT THEN now() - interval '1 day' END
  FROM generate_series(1, $FINAL + $RECENT + $OPEN) g;
INSERT INTO webhook_events (id, client_id, event_type, payout_id, payload, created_at)
SELECT gen_random_uuid(), client_id, 'payout.paid', id,
       jsonb_build_object('id', gen_random_uuid(), 'type', 'payout.paid', 'created_at', finalized_at,
                          'data', jsonb_build_object('payout', jsonb_build_object(
                              'id', id, 'external_id', external_id, 'state', 'paid', 'amount', '150000',
                              'currency', 'IDR', 'provider_reference', provider_reference,
                              'destination', jsonb_build_object('destination', 'bank_bca',
                                  'client', '******' || right(destination->>'client', 4),
                                  'receiver_name', destination->>'receiver_name')))),
       finalized_at
  FROM payouts WHERE state = 'paid';
INSERT INTO provider_callbacks (provider, provider_reference, payout_id, verified, dedupe_key, body, outcome, received_at)
SELECT '8b_partner', provider_reference, id, true, provider_reference || ':1',
       'id=' || provider_reference || '&dt=2026-08-01+10%3A00%3A05&amount=150000&result=1&destination=bank_bca&hash=0123456789abcdef0123456789abcdef',
       'finalized', now() - interval '100 days'
  FROM payouts;
VACUUM ANALYZE payouts;
VACUUM ANALYZE webhook_events;
VACUUM ANALYZE provider_callbacks;
SQL
echo "inserted in $(( $(date +%s) - start )) s; sizes:"
psql "$scratch" -Atc "SELECT relname || ' ' || pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class
                       WHERE relname IN ('payouts', 'webhook_events', 'provider_callbacks')"

echo "retention pass:"
start=$(date +%s.%N)
DATABASE_URL="$scratch" $PAYOUTD retention run --reason "benchmark"
end=$(date +%s.%N)
echo "wall time (process start to exit): $(echo "$end - $start" | bc) s"

psql "$scratch" -v ON_ERROR_STOP=1 <<SQL
SELECT count(*) FILTER (WHERE redacted_at IS NOT NULL)                        AS redacted,
       count(*) FILTER (WHERE redacted_at IS NULL AND state = 'paid')         AS recent_final_untouched,
       count(*) FILTER (WHERE redacted_at IS NULL AND state = 'submitted')    AS open_untouched,
       count(*) FILTER (WHERE redacted_at IS NOT NULL AND destination->>'phone' NOT LIKE '*%') AS unmasked_after_redaction
  FROM payouts;
SELECT count(*) FILTER (WHERE pruned_at IS NOT NULL) AS pruned_callbacks,
       count(*) FILTER (WHERE pruned_at IS NULL)     AS kept_callbacks
  FROM provider_callbacks;
SELECT detail->'report' AS report FROM operator_events WHERE action = 'retention_run';
SQL
