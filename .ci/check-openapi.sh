#!/usr/bin/env bash
# Checks the OpenAPI 3.1 document of payoutd's HTTP API (generated from the handlers'
# annotations, `payoutd openapi`, also served at GET /openapi.json) with an independent
# validator, openapi-spec-validator (PyPI), installed into a venv under target/ when missing.
# The document is written to target/openapi.json.
#   usage: .ci/check-openapi.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}/openapi.json"
mkdir -p "$(dirname "$out")"
cargo run --quiet -p payoutd -- openapi > "$out"
# The validator lives in a venv under target/ (like deploy/validate.sh's), pinned.
venv="${OPENAPI_VALIDATE_VENV:-target/openapi-validate/venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet openapi-spec-validator==0.7.2
fi
"$venv/bin/python" -m openapi_spec_validator "$out"
"$venv/bin/python" - "$out" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc["openapi"].startswith("3.1"), doc["openapi"]
ops = sum(1 for item in doc["paths"].values() for m in item if m in ("get", "post", "put", "delete", "patch"))
print(f"openapi {doc['openapi']}: {len(doc['paths'])} paths, {ops} operations")
PY
