#!/usr/bin/env bash
# The test suite as make test and CI run it. pytest's exit code 5 (no tests collected) is a
# failure here: a suite that runs nothing must not pass. With pytest-xdist installed the tests
# run in one worker per core (SIMPLICIAL_ATTN_TEST_WORKERS overrides: a number, or 0 for none):
# most of the suite is single-threaded (the Triton interpreter, the CUDA emulator), so two
# workers on the 2-core CI machine nearly halve its time.
set -uo pipefail
py=${1:-python3}
workers=${SIMPLICIAL_ATTN_TEST_WORKERS:-auto}
parallel=()
if [ "$workers" != "0" ] && "$py" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers")
fi
"$py" -m pytest -q -ra --durations=15 "${parallel[@]}" tests
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected" >&2
  exit 1
fi
exit "$rc"
