#!/usr/bin/env bash
# clang-format over csrc/: --check fails on any difference, --fix rewrites in place.
# Uses the clang-format next to the given Python (pip's wheel), else the one on PATH.
set -euo pipefail
mode=$1
py=${2:-python3}
cf="$(dirname "$(command -v "$py")")/clang-format"
[ -x "$cf" ] || cf=$(command -v clang-format || true)
if [ -z "$cf" ]; then
  echo "clang-format not found: skipping the C++ format check (pip install clang-format)" >&2
  exit 0
fi
files=$(find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' | sort)
if [ "$mode" = "--fix" ]; then
  "$cf" -i $files
else
  "$cf" --dry-run --Werror $files
fi
