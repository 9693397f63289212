#!/usr/bin/env bash
# Services for the integration tests that need them, installed when missing (CI: Debian, root).
# Tolerant of failure by design: without them the tests that need them skip and say why.
#   - PostgreSQL server binaries for tests/test_postgres.py (mlflow server on PostgreSQL).
# Cost: ~30-60 s of apt on a fresh Debian machine; nothing when already installed.
set -uo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_postgres; then
    echo "ci_services: PostgreSQL server binaries present"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ci_services: no PostgreSQL and no root apt-get: tests/test_postgres.py will skip"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The package's own cluster is not needed (the test initdb's one in /tmp): don't start services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
if timeout 300 apt-get update -qq && \
   timeout 300 apt-get install -y -qq --no-install-recommends postgresql >/dev/null; then
    echo "ci_services: installed PostgreSQL ($(ls /usr/lib/postgresql))"
else
    echo "ci_services: could not install PostgreSQL: tests/test_postgres.py will skip"
fi
exit 0
