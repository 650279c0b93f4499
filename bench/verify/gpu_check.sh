#!/usr/bin/env bash
# Everything a lent GPU is for, in one call of at most ~9 minutes (the lent machines' rules: a task
# gets 15 minutes of device time, machine start included, and one command may run 10 minutes).
#
#   OUT=/some/dir bash bench/verify/gpu_check.sh                      # all stages, in order of value
#   OUT=/some/dir bash bench/verify/gpu_check.sh --stages bench,ncu   # some of them (a second call)
#   bash bench/verify/gpu_check.sh --dry-run                          # no GPU: the plan, and its checks
#
# Stages, each under its own time budget (seconds), in order of value:
#   facts       nvidia-smi, versions, device properties
#   build       the extension for sm_90 (MAX_JOBS=16)
#   cuda-tests  the CUDA C++ kernels against the float64 oracle and the API's cuda cases (varlen,
#               determinant, decoding, large logits, non-finite inputs; tests marked gpu, not slow)
#   sanitize    compute-sanitizer memcheck and racecheck on bench/verify/gpu_sanitize.py
#   gpu-tests   every other test marked gpu (Triton compiled, the API on CUDA, ...; sm_90's
#               bwd_dqkv2 configs with a global-memory hand-off forced one by one: 20 s more)
#   cuda-slow   the realistic sizes and the > 2^31-element offsets (tests marked gpu and slow)
#   bench       bench/run.py at the issue's target shape for the GPU backends
#   ncu         Nsight Compute on one forward and one backward launch
# A stage that needs the extension is skipped when the build failed. Results land in $OUT as each
# stage finishes (the device tool brings back at most 8 files): summary.json (per stage: status,
# seconds, budget, pytest counts; the facts), facts.txt, build.log, tests.log, sanitize.log,
# bench.log, bench.json, ncu.log. The table is printed last.
#
# --dry-run (CI: tests/test_cuda_gpu_check.py) runs what needs no GPU: it prints each stage's
# command, checks that the files they name exist, that each pytest selection collects tests,
# that bench/run.py takes the benchmark's arguments and that bench/verify/gpu_sanitize.py lists its
# cases, and writes summary.json with every stage "planned".
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --stages)
      ONLY=",$2,"
      shift
      ;;
    *)
      echo "unknown argument $1 (use --dry-run, --stages a,b)" >&2
      exit 2
      ;;
  esac
  shift
done
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROWS="$WORK/stages.tsv" # one line per stage run so far: name, status, seconds, budget, log, command
: > "$ROWS"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}

# The pytest selections (--dry-run collects each). cuda-tests: the CUDA C++ kernels' own tests and
# the cuda cases of the API tests (packed sequences, determinant logits, decoding, large logits,
# non-finite inputs); gpu-tests: every other GPU test.
CUDA_FILES="tests/test_cuda_kernels.py tests/test_varlen.py tests/test_determinant.py tests/test_kvcache.py"
CUDA_FILES="$CUDA_FILES tests/test_large_logits.py tests/test_non_finite.py"
CUDA_TESTS="$CUDA_FILES -m 'gpu and not slow' -k cuda"
CUDA_MODULES="test_cuda_kernels.py or test_varlen.py or test_determinant.py or test_kvcache.py"
CUDA_MODULES="$CUDA_MODULES or test_large_logits.py or test_non_finite.py"
GPU_TESTS="tests -m 'gpu and not slow' -k 'not (cuda and ($CUDA_MODULES))'"
ALL_FAST_GPU="tests -m 'gpu and not slow'" # what cuda-tests and gpu-tests split between them
SLOW_TESTS="tests -m 'gpu and slow'"
# The issue's target shape, both GPU backends (bench/run.py measures the bf16 matmul rate in the same run).
BENCH="--backend cuda triton --mode fwd bwd --dtype bfloat16 --B 2 --N 8192 --Hq 64 --Hkv 1 --D 128 --w1 512 --w2 32"

summarize() { # summary.json from the stage rows and each stage's section of its log
  "$PY" - "$OUT" "$ROWS" "$DRY" << 'EOF'
import json, pathlib, re, sys
out, rows, dry = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
PYTEST = re.compile(r"^=*\s*(\d+ (?:passed|failed|errors?|skipped|deselected|xfailed|xpassed)\b.*?) in [\d.]+s", re.M)
stages = []
for line in rows.read_text().splitlines():
    name, status, seconds, budget, log, command = line.split("\t")
    row = {"stage": name, "status": status, "seconds": int(seconds), "budget_s": int(budget), "log": log,
           "command": command}
    text = (out / log).read_text(errors="replace") if (out / log).exists() else ""
    section = text.split(f"=== {name}: ")[-1].split("\n=== ")[0] if f"=== {name}: " in text else ""
    counts = PYTEST.findall(section)
    if counts:
        row["pytest"] = counts[-1]
    stages.append(row)
facts = (out / "facts.txt").read_text(errors="replace") if (out / "facts.txt").exists() else ""
summary = {"dry_run": dry, "total_budget_s": sum(s["budget_s"] for s in stages), "stages": stages, "facts": facts}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
EOF
}

table() {
  "$PY" - "$OUT/summary.json" << 'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{'stage':11} {'status':18} {'s':>4} {'budget':>6}  tests")
for r in s["stages"]:
    print(f"{r['stage']:11} {r['status']:18} {r['seconds']:>4} {r['budget_s']:>6}  {r.get('pytest', '')}")
print(f"total budget {s['total_budget_s']} s")
EOF
}

BUILD_OK=1
# stage NAME BUDGET LOG NEEDS_BUILD COMMAND: runs COMMAND (a bash string) under `timeout BUDGET`,
# its output appended to $OUT/LOG under a "=== NAME: COMMAND" header, and records the outcome.
stage() {
  local name=$1 budget=$2 log=$3 needs_build=$4 cmd=$5 status start rc
  if [ -n "$ONLY" ] && [[ $ONLY != *",$name,"* ]]; then return; fi
  start=$(date +%s)
  if [ "$DRY" = 1 ]; then
    status=planned
    echo "[$name] budget ${budget}s -> $log: $cmd"
  elif [ "$needs_build" = 1 ] && [ "$BUILD_OK" = 0 ]; then
    status=skipped-no-build
  else
    echo
    echo "=== $name (budget ${budget}s, $(date +%T))"
    echo "=== $name: $cmd" >> "$OUT/$log"
    timeout -k 10 "$budget" bash -c "$cmd" >> "$OUT/$log" 2>&1
    rc=$?
    case $rc in
      0) status=ok ;;
      124 | 137) status=timeout ;;
      *) status="failed($rc)" ;;
    esac
    tail -5 "$OUT/$log"
  fi
  [ "$name" = build ] && [ "$status" != ok ] && [ "$status" != planned ] && BUILD_OK=0
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" "$budget" "$log" "$cmd" >> "$ROWS"
  summarize
}

if [ "$DRY" = 1 ]; then
  for f in setup.py bench/verify/gpu_sanitize.py bench/run.py tests/test_cuda_kernels.py; do
    [ -f "$f" ] || {
      echo "dry run: $f is missing" >&2
      exit 1
    }
  done
  "$PY" bench/run.py $BENCH --help > /dev/null || {
    echo "dry run: bench/run.py does not take $BENCH" >&2
    exit 1
  }
  "$PY" bench/verify/gpu_sanitize.py --list || {
    echo "dry run: bench/verify/gpu_sanitize.py --list failed" >&2
    exit 1
  }
  ids() { eval "$PY -m pytest --collect-only -q -p no:cacheprovider $1" 2> /dev/null | grep '::' | sort; }
  # The four collections run side by side (each imports the whole test suite).
  ids "$CUDA_TESTS" > "$WORK/ids.cuda" &
  ids "$GPU_TESTS" > "$WORK/ids.gpu" &
  ids "$SLOW_TESTS" > "$WORK/ids.slow" &
  ids "$ALL_FAST_GPU" > "$WORK/ids.all" &
  wait
  for pair in "cuda:$CUDA_TESTS" "gpu:$GPU_TESTS" "slow:$SLOW_TESTS"; do
    sel=${pair#*:}
    n=$(wc -l < "$WORK/ids.${pair%%:*}")
    [ "$n" -gt 0 ] || {
      echo "dry run: pytest selection '$sel' collects nothing" >&2
      exit 1
    }
    echo "dry run: '$sel' collects $n tests"
  done
  # cuda-tests and gpu-tests split the fast GPU tests: each test in exactly one of them.
  split=$(sort "$WORK/ids.cuda" "$WORK/ids.gpu")
  [ "$split" == "$(cat "$WORK/ids.all")" ] || {
    echo "dry run: cuda-tests and gpu-tests do not split '$ALL_FAST_GPU' (a test in neither or in both):" >&2
    diff <(echo "$split") "$WORK/ids.all" | head -20 >&2
    exit 1
  }
  echo "dry run: cuda-tests and gpu-tests split the $(echo "$split" | wc -l) fast GPU tests"
fi

stage facts 15 facts.txt 0 "nvidia-smi; $PY -c \"import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_properties(0))\"; nvcc --version | tail -1"
stage build 150 build.log 0 "$PY -m pip install --no-build-isolation --no-deps -e . && $PY -c 'import simplicial_attn as sa; print(sa.build_info())'"
stage cuda-tests 120 tests.log 1 "$PY -m pytest -q -n 8 -ra --maxfail=10 -p no:cacheprovider $CUDA_TESTS"
stage sanitize 70 sanitize.log 1 "for tool in memcheck racecheck; do compute-sanitizer --tool \$tool --error-exitcode 3 $PY bench/verify/gpu_sanitize.py || exit \$?; done"
stage gpu-tests 75 tests.log 0 "$PY -m pytest -q -n 8 -ra -p no:cacheprovider $GPU_TESTS"
stage cuda-slow 30 tests.log 1 "$PY -m pytest -q -n 4 -ra -p no:cacheprovider $SLOW_TESTS"
stage bench 60 bench.log 1 "$PY bench/run.py $BENCH --out $WORK/bench && cp $WORK/bench/*.json $OUT/bench.json"
stage ncu 20 ncu.log 1 "ncu --clock-control none --launch-count 2 -k regex:'fwd_kernel|dq_kernel' $PY bench/verify/gpu_sanitize.py --one"

table
