#!/usr/bin/env bash
# Benchmark: the console's payouts list with 100,000 payouts in the database.
# Runs the ignored test `bench_payouts_list_with_100k_payouts` of tests/console.rs in a release
# build: a fresh database (DATABASE_URL, an admin connection), 100,000 payouts inserted with one
# generate_series statement (20 clients, 1 in 1,000 parked), the real API and console on
# loopback. It prints, for the first page, filtered pages, a page 20 cursors deep, the overview
# and the review queue: median time to first byte, total time and bytes of 20 requests; then,
# in headless Chromium, the page's weight (HTML + CSS + JS) and its first contentful paint.
#   usage: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/console-list.sh
#          CONSOLE_BENCH_ROWS=1000000 bench/console-list.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATABASE_URL:?set DATABASE_URL to an admin connection}"
.ci/install-browser.sh >/dev/null
cargo nextest run --release -p payoutd-tests --test console --run-ignored only --no-capture bench_payouts_list
