#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install lmforge into it.
# torch==2.13.0 goes in first: it is the CPU build, so pip never pulls a multi-GB CUDA build on a laptop.
# Re-running is cheap: nothing is installed again unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lmforge-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[all,test]"  # the core plus every extra: the whole test suite runs
  echo "$want" > "$stamp"
fi
