#!/usr/bin/env bash
# Validates the deployment files:
#   1. promtool check rules  deploy/prometheus/alerts.yml       (skipped if promtool is missing)
#   2. promtool check config deploy/prometheus/prometheus.yml   (skipped if promtool is missing)
#   3. the Grafana dashboards are valid JSON                    (python3 -m json.tool)
#   4. docker-compose.yml: `docker compose config` when the compose plugin exists, otherwise a
#      YAML parse (PyYAML) of it and of the Grafana provisioning files.
# Exits non-zero if any check fails. Run from anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."

failed=0
check() {
    local name=$1; shift
    echo "==> $name"
    if "$@"; then
        echo "    ok"
    else
        echo "    FAILED: $name" >&2
        failed=1
    fi
}

# 1-2. Prometheus
if command -v promtool >/dev/null 2>&1; then
    check "promtool check rules deploy/prometheus/alerts.yml" \
        promtool check rules deploy/prometheus/alerts.yml
    # rule_files in prometheus.yml are relative to that file, so this works from the repo root.
    check "promtool check config deploy/prometheus/prometheus.yml" \
        promtool check config deploy/prometheus/prometheus.yml
else
    echo "==> SKIPPED: promtool is not installed, so alerts.yml and prometheus.yml were NOT checked"
    echo "    (Debian/Ubuntu: apt-get install prometheus, which provides /usr/bin/promtool)"
fi

# 3. Grafana dashboards
if ! command -v python3 >/dev/null 2>&1; then
    echo "    FAILED: python3 is required for the JSON/YAML checks" >&2
    exit 1
fi
for f in deploy/grafana/dashboards/*.json; do
    check "JSON $f" python3 -m json.tool "$f" /dev/null
done

# 4. Compose file (and Grafana provisioning YAML)
yaml_files=(docker-compose.yml deploy/grafana/provisioning/datasources/*.yml deploy/grafana/provisioning/dashboards/*.yml)
if docker compose version >/dev/null 2>&1; then
    # Grafana refuses to start without a password; any value does for validating the file.
    check "docker compose config" env GRAFANA_ADMIN_PASSWORD=check docker compose -f docker-compose.yml config --quiet
    yaml_files=("${yaml_files[@]:1}")
fi
if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "    FAILED: PyYAML is required to parse ${yaml_files[*]} (pip install pyyaml)" >&2
    failed=1
else
    for f in "${yaml_files[@]}"; do
        check "YAML $f" python3 -c 'import sys, yaml
try:
    with open(sys.argv[1]) as fh:
        doc = yaml.safe_load(fh)
except (OSError, yaml.YAMLError) as e:
    sys.exit(f"    {e}")
if not isinstance(doc, dict):
    sys.exit(f"    {sys.argv[1]}: top level is not a mapping")' "$f"
    done
fi

if [ "$failed" -ne 0 ]; then
    echo "deploy/check.sh: FAILED" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed"
