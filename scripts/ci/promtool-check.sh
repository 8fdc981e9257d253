#!/usr/bin/env bash
# Validates deploy/prometheus with Prometheus' own promtool (Debian's `prometheus` package):
# the scrape config, the alert rules, and the rules' unit tests (alerts.test.yml).
# Installs the package when promtool is missing and apt-get is there; otherwise skips loudly.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    scripts/ci/install-prometheus.sh
  else
    echo "!!! promtool-check: SKIPPED: promtool is not installed and apt-get (as root) is not available." >&2
    echo "!!! Install Debian's 'prometheus' package (or Prometheus' release) to validate deploy/prometheus." >&2
    exit 0
  fi
fi

echo "promtool-check: $(promtool --version 2>&1 | head -1)"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts.test.yml)
