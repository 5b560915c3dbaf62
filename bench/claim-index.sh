#!/usr/bin/env bash
# Benchmark: how fast is a claim when millions of final payouts sit in the table?
# Builds a scratch database from migrations/, inserts FINAL (default 2,000,000) final payouts and
# 1,000 due ones, then runs the engine's claim statement under EXPLAIN ANALYZE.
#   usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/claim-index.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL to an admin connection}"
FINAL="${FINAL:-2000000}"
db=payoutd_claimbench
scratch="${DATABASE_URL%/*}/$db"
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
trap 'psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db"' EXIT
for m in migrations/*.sql; do psql "$scratch" -q -v ON_ERROR_STOP=1 -f "$m"; done
psql "$scratch" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                     currency, destination, state, next_run_at, provider_reference, submit_request, finalized_at)
SELECT gen_random_uuid(), 'c', 'e'||g, 'k'||g, '\x00', '8b_partner', 'a', 10, 'USD', '{}', 'paid', NULL,
       'PO'||lpad(g::text, 18, '0'), '{}', now()
  FROM generate_series(1, $FINAL) g;
INSERT INTO payouts (id, client_id, external_id, idempotency_key, request_hash, provider, account, amount,
                     currency, destination, state, next_run_at)
SELECT gen_random_uuid(), 'c', 'o'||g, 'ko'||g, '\x00', '8b_partner', 'a', 10, 'USD', '{}', 'pending',
       now() - interval '1 second'
  FROM generate_series(1, 1000) g;
ANALYZE payouts;
SQL
echo "claim of 32 due payouts with $FINAL final payouts in the table:"
psql "$scratch" -v ON_ERROR_STOP=1 <<'SQL'
EXPLAIN (ANALYZE, BUFFERS)
WITH due AS (
    SELECT id FROM payouts
     WHERE next_run_at <= now() AND (lease_expires_at IS NULL OR lease_expires_at < now())
     ORDER BY next_run_at LIMIT 32 FOR UPDATE SKIP LOCKED)
UPDATE payouts SET lease_owner = 'bench', lease_expires_at = now() + make_interval(secs => 30),
       fencing_token = fencing_token + 1, attempt = attempt + 1, total_attempts = total_attempts + 1
 WHERE id IN (SELECT id FROM due) RETURNING id;
SQL
