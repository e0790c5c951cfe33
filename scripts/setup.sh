#!/usr/bin/env bash
# Sets up aimg on a fresh machine: a virtual environment in .venv with torch, aimg and its extras.
# torch is installed first, explicitly: a bare `torch` requirement would pull the CUDA build.
# Usage: scripts/setup.sh            (everything for development: sim, robot, train, dev tools)
#        AIMG_EXTRAS=sim scripts/setup.sh   (only what the simulated loop needs)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${AIMG_EXTRAS:-dev}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "aimg needs Python 3.10 or newer; set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "$TORCH_SPEC"
python -m pip install --quiet -e ".[${EXTRAS}]"
echo "aimg is installed in .venv: run '. .venv/bin/activate' then 'aimg --help'"
