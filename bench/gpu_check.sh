#!/usr/bin/env bash
# The GPU check: one prepared run on a bare H100/H200 machine with torch (no Ray,
# no registry), at most about 8 minutes. From the repository root:
#
#     OUT=/some/dir bash bench/gpu_check.sh             # run it
#     OUT=/tmp/x bash bench/gpu_check.sh --dry-run      # check the wheels and print the plan
#
# Stages, each under its own time limit so a hang cannot eat the others' time;
# each stage's output lands in $OUT whatever happens to the next:
#   1. install the wheels carried with the checkout (bench/gpu_wheels.sh builds
#      them into $WHEELS, default .whl) into a private folder: never torch, never Ray;
#   2. the CUDA tests that need no Ray (pytest -m "cuda and not slow" on the files listed below);
#   3. bench/bench_training.py --gpu (cifar10-airbench and cifar10-resnet9 on
#      CIFAR-shaped data: models per GPU-hour, accuracy on digits32, step FLOP/s
#      against the dense same-shape reference);
#   4. bench/bench_regression.py --mode gpu.
# Files in $OUT (at most 8): summary.json, env.json, check.log, pytest.xml,
# bench_training_gpu.json, bench_regression_gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
OUT="${OUT:?set OUT to the folder the results go to}"
WHEELS="${WHEELS:-.whl}"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/dmsweep-site}"
mkdir -p "$OUT"
LOG="$OUT/check.log"
: >"$LOG"

# Seconds per stage; their sum stays under 8 minutes.
T_INSTALL=30 T_TESTS=90 T_TRAINING=270 T_REGRESSION=80
# Test files whose CUDA tests run (none may import Ray); CUDA_TESTS="a.py b.py" overrides the list.
if [ -n "${CUDA_TESTS:-}" ]; then
    read -r -a CUDA_TESTS <<<"$CUDA_TESTS"
else
    CUDA_TESTS=(tests/workers/test_cuda.py tests/workers/test_trained_recipes.py tests/workers/test_batched.py
                tests/regression/test_saga_solver.py tests/regression/test_final_and_precision.py)
fi
# What the code imports that a bare torch image lacks; the install must make them importable.
IMPORTS="zarr, numcodecs, crc32c, google_crc32c, pydantic, mnist1d, typer, rich, yaml, scipy, sklearn, torchvision"

say() { echo "gpu_check: $*" | tee -a "$LOG"; }
STAGES=()
stage() {  # stage NAME SECONDS COMMAND...: run, time and record one stage
    local name="$1" limit="$2"; shift 2
    local start=$SECONDS
    say "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "== $name: exit $rc after $((SECONDS - start))s"
    STAGES+=("{\"stage\": \"$name\", \"exit\": $rc, \"seconds\": $((SECONDS - start))}")
}
write_summary() {
    local joined
    joined=$(IFS=,; echo "${STAGES[*]:-}")
    echo "{\"check\": \"gpu\", \"commit\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\", \"stages\": [$joined]}" \
        >"$OUT/summary.json"
}
trap write_summary EXIT

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ "${#wheels[@]}" -eq 0 ]; then
    say "no wheels in $WHEELS: build them with 'bash bench/gpu_wheels.sh $WHEELS' and carry that folder"
    exit 2
fi
say "${#wheels[@]} wheels in $WHEELS: $(basename -a "${wheels[@]}" | tr '\n' ' ')"
for name in zarr numcodecs pydantic pydantic_core mnist1d; do
    found=("$WHEELS"/"$name"-*.whl)  # nullglob: empty when there is none
    [ "${#found[@]}" -gt 0 ] || { say "missing a $name wheel in $WHEELS"; exit 2; }
done

if [ "$DRY_RUN" = 1 ]; then
    say "dry run: would install into $SITE, then run:"
    say "  pytest -m 'cuda and not slow' ${CUDA_TESTS[*]} (${T_TESTS}s)"
    say "  bench/bench_training.py --gpu --block 16 --resnet9-block 8 --repeats 1 (${T_TRAINING}s)"
    say "  bench/bench_regression.py --mode gpu (${T_REGRESSION}s)"
    for f in "${CUDA_TESTS[@]}" bench/bench_training.py bench/bench_regression.py; do
        [ -f "$f" ] || { say "missing $f"; exit 2; }
    done
    exit 0
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv 2>&1
    "$PYTHON" - <<'PY'
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version(), "available": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
PY
} >"$OUT/env.json.txt" 2>&1
"$PYTHON" -c "import json,sys; lines=open(sys.argv[1]).read().splitlines(); json.dump({'nvidia_smi': lines[:-1], 'torch': json.loads(lines[-1])}, open(sys.argv[2], 'w'), indent=1)" \
    "$OUT/env.json.txt" "$OUT/env.json" 2>>"$LOG" && rm -f "$OUT/env.json.txt"

stage install "$T_INSTALL" "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "${wheels[@]}"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import $IMPORTS" >>"$LOG" 2>&1; then
    say "an import still fails after the install (see above): the wheel folder lacks a package"
    exit 1
fi

# "not slow": the compile-equivalence test costs a minute of compiling; the training
# benchmark below runs the compiled stacks anyway (torch_compile auto).
stage cuda-tests "$T_TESTS" "$PYTHON" -m pytest -q -m "cuda and not slow" -p no:cacheprovider --junitxml "$OUT/pytest.xml" \
    "${CUDA_TESTS[@]}"
stage bench-training "$T_TRAINING" bash -c \
    "\"$PYTHON\" bench/bench_training.py --gpu --block 16 --resnet9-block 8 --repeats 1 >\"$OUT/bench_training_gpu.json\""
stage bench-regression "$T_REGRESSION" bash -c \
    "\"$PYTHON\" bench/bench_regression.py --mode gpu >\"$OUT/bench_regression_gpu.json\""
say "done in ${SECONDS}s"
