#!/usr/bin/env bash
# Everything a lent GPU is for, in one call (see ../shared/GPU-RUNBOOK.md):
#   facts -> build -> GPU tests -> compute-sanitizer -> benchmarks -> results under $OUT.
# Usage on the device machine (torch preinstalled, no downloads):
#   OUT=/some/dir bash bench/gpu_check.sh            (the device tool sets $OUT)
# Prints a short table last; the JSON/Markdown/PNG results land in $OUT and bench/results/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
step() { echo; echo "=== $* ($(date +%T))"; }

step facts
{ nvidia-smi; $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_properties(0))"; nvcc --version | tail -1; } 2>&1 | tee "$OUT/facts.txt"

step build
$PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import simplicial_attn as sa; print(sa.build_info())" | tee -a "$OUT/facts.txt"

step "GPU tests (every test marked gpu, plus the CUDA static checks)"
timeout 300 $PY -m pytest -q -m gpu -ra tests 2>&1 | tee "$OUT/pytest_gpu.log" | tail -25

step compute-sanitizer
if [ -f bench/gpu_sanitize.py ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout 120 compute-sanitizer --tool $tool --error-exitcode 3 $PY bench/gpu_sanitize.py > "$OUT/sanitize_$tool.log" 2>&1
    echo "$tool exit $? ($(grep -c 'ERROR SUMMARY: 0 errors' "$OUT/sanitize_$tool.log") clean summaries)"
  done
fi

step benchmarks
timeout 240 $PY bench/run.py --quick --out bench/results 2>&1 | tee "$OUT/bench.log" | tail -30
cp bench/results/*"$(date +%F)"* "$OUT"/ 2>/dev/null
ls -la "$OUT"
