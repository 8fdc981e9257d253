#!/usr/bin/env bash
# Installs Debian's `prometheus` package (prometheus and promtool) without starting its service.
# Used by scripts/ci/promtool-check.sh and deploy/build-cpu-image.sh. Needs root and apt-get.
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/prometheus ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-prometheus: apt-get is not available" >&2
  exit 1
fi
# The package's maintainer script would start the daemon; a policy-rc.d that denies service
# starts prevents it. Only one we created ourselves is removed again.
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created_policy=1
fi
# An `if`, not `[ … ] && rm`: the EXIT trap's last status becomes the script's, and a false
# test would fail the install whenever policy-rc.d already existed.
cleanup() { if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
echo "install-prometheus: $(promtool --version 2>&1 | head -1)" >&2
