#!/usr/bin/env bash
# Checks what deploy/ and docker-compose.yml ship, without running them:
#   - the Prometheus alert rules load (`promtool check rules`, from Debian's `prometheus`),
#   - the Prometheus config loads (`promtool check config`),
#   - the Grafana dashboard is JSON with panels,
#   - docker-compose.yml is a valid compose file, with and without the observability profile
#     (`docker-compose config`, from Debian's `docker-compose`; Docker itself is not needed).
# Missing tools are installed with apt-get when running as root (CI); otherwise it says what
# to install. That every metric the dashboard and alerts use is exported is an integration
# test (tests/it/observability.rs), run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need() { # need <command> <debian package>
    command -v "$1" >/dev/null 2>&1 && return 0
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "check-deploy.sh: installing $2 (for $1)"
        # The package's service must not start here: policy-rc.d refuses it for this install.
        local policy=/usr/sbin/policy-rc.d created=0
        if [[ ! -e "$policy" ]]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1; fi
        local rc=0
        (apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$2" >/dev/null; }) || rc=$?
        [[ "$created" == 1 ]] && rm -f "$policy"
        [[ $rc == 0 ]] || return $rc
    else
        echo "check-deploy.sh: error: $1 is missing; install the Debian package $2 (apt-get install $2)" >&2
        return 1
    fi
}

need promtool prometheus
need docker-compose docker-compose
need jq jq

echo "=== promtool check rules deploy/prometheus/alerts.yml ==="
promtool check rules deploy/prometheus/alerts.yml
echo "=== promtool check config deploy/prometheus/prometheus.yml ==="
# The config names the rules at their path inside the container; check it against ours.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp deploy/prometheus/alerts.yml "$tmp/alerts.yml"
sed "s#/etc/prometheus/alerts.yml#$tmp/alerts.yml#" deploy/prometheus/prometheus.yml >"$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"

echo "=== dashboard JSON ==="
for dashboard in deploy/grafana/dashboards/*.json; do
    panels="$(jq -e '.panels | length' "$dashboard")" || { echo "check-deploy.sh: error: $dashboard is not a dashboard JSON with panels" >&2; exit 1; }
    echo "$dashboard: $panels panels"
done

echo "=== docker-compose config ==="
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile observability config -q
echo "check-deploy.sh: deploy/ and docker-compose.yml are valid"
