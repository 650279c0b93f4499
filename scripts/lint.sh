#!/usr/bin/env bash
# ruff (Python) and clang-format (C++/CUDA). With a Python that has no ruff (a preinstalled
# GPU machine, make test PYTHON=...) the Python lint is skipped with a message; CI's pinned
# venv always has both.
set -euo pipefail
py=${1:-python3}
if "$py" -m ruff --version >/dev/null 2>&1; then
  "$py" -m ruff check .
  "$py" -m ruff format --check .
else
  echo "ruff is not installed for $py: skipping the Python lint" >&2
fi
bash scripts/clang_format.sh --check "$py"
