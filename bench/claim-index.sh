#!/usr/bin/env bash
# Benchmark: how fast is a claim when millions of final payouts sit in the table?
# Runs figure 5 of `payoutd bench`, which times the engine's own claim (queue::claim_batch in
# crates/store), so this script can no longer drift from the claim SQL: 1,000 due payouts, the
# median claim of 32 in a table without final payouts and with FINAL (default 2,000,000) of them.
#   usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/claim-index.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL to an admin connection}"
FINAL="${FINAL:-2000000}"
exec cargo run --release -p payoutd -- bench --only 5 --final-rows "$FINAL"
