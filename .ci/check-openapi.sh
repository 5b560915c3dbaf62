#!/usr/bin/env bash
# Checks the OpenAPI 3.1 document of payoutd's HTTP API (generated from the handlers'
# annotations, `payoutd openapi`, also served at GET /openapi.json) with an independent
# validator, openapi-spec-validator (PyPI), installed for the user when missing.
# The document is written to target/openapi.json.
#   usage: .ci/check-openapi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}/openapi.json"
mkdir -p "$(dirname "$out")"
cargo run --quiet -p payoutd -- openapi > "$out"
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
    python3 -m pip install --quiet --user openapi-spec-validator 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages openapi-spec-validator
fi
python3 -m openapi_spec_validator "$out"
python3 - "$out" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["openapi"].startswith("3.1"), doc["openapi"]
ops = sum(1 for item in doc["paths"].values() for m in item if m in ("get", "post", "put", "delete", "patch"))
print(f"openapi {doc['openapi']}: {len(doc['paths'])} paths, {ops} operations")
PY
