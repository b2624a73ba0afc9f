#!/usr/bin/env bash
# The main job on its embedded default, from a fresh machine: sets up .venv, then runs trustfid.
# With no arguments it scores the two sample folders; any arguments are passed to `trustfid`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh engine,embedded
if [ $# -eq 0 ]; then
  set -- score samples/real samples/generated --json samples/report.json
fi
exec "${TRUSTFID_VENV:-.venv}/bin/trustfid" "$@"
