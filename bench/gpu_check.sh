#!/usr/bin/env bash
# Every GPU check in ONE command that fits one device call (default budget 470 s, under the 10-minute limit with
# the machine's start and transfers). Stages run most important first, each capped by what is left, so a slow
# stage costs only itself:
#
#   1. install (no deps, no CUDA build unless HSTU_SKIP_CUDA_BUILD=0), print device and versions
#   2. the GPU test tier (pytest -m gpu) with quick autotuning (HSTU_AUTOTUNE=quick), xdist workers, a per-test
#      timeout, stopping after 3 failures
#   3. bench/bench_attention.py at (128, 200, 1, 64) and (16, 4096, 4, 128), bf16, bias on, fwd and fwd+bwd,
#      naive (N <= 1024) / Triton / SDPA, behind its correctness gate; full autotuning
#   4. bench/bench_mfalcon.py at m = 3706 (+ the whole-catalogue ranking when .data/ml-1m-half was carried)
#   5. if time is left: hstu train unfused vs --fused, 3 epochs each on .data/ml-1m-half, per-epoch wall time
#
# On the device machine, from the repository root (MovieLens is not ours to commit: copy it into the ignored
# .data/ and carry it):
#
#   mkdir -p .data && cp -r ../shared/data/ml-1m-half .data/        # here, once
#   device run: bash bench/gpu_check.sh      carry: [".data"]      timeout_s: 540
#
# $OUT receives summary.txt (the final table, also printed last) and gpu_check.tar.gz (every log and result;
# the device tool returns at most 8 files, so they travel packed). Without a GPU (a dry run on a CPU machine)
# every CUDA stage says why it skipped, and the script still ends with the table.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-bench/results/gpu-check}"
BUDGET="${GPU_CHECK_BUDGET:-470}"
WORKERS="${GPU_CHECK_WORKERS:-8}"
DATA="${GPU_CHECK_DATA:-.data/ml-1m-half}"
EPOCHS="${GPU_CHECK_EPOCHS:-3}"
WORK="$(mktemp -d /tmp/gpu-check.XXXXXX)"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
start=$SECONDS

left() { echo $((BUDGET - (SECONDS - start))); }
# run a stage under `timeout` with at most $1 seconds (less if the budget has less); skip when under 20 s are left
capped() {
    local cap=$1; shift
    local l; l=$(left)
    ((l < cap)) && cap=$l
    if ((cap < 20)); then echo "(skipped: ${l} s of the budget left)"; return 124; fi
    timeout -k 10 "$cap" "$@"
}
pack() { tar czf "$OUT/gpu_check.tar.gz" -C "$WORK" . 2>/dev/null; }
stage() { echo; echo "=== $1 ($(left) s of the budget left)"; }

stage "1. install"
HSTU_SKIP_CUDA_BUILD="${HSTU_SKIP_CUDA_BUILD:-1}" "$PY" -m pip install -q --no-deps --no-build-isolation -e . \
    2>&1 | tail -3
"$PY" - <<'EOF' 2>&1 | tee "$WORK/env.txt"
import platform, torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "missing"
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"{dev} | torch {torch.__version__} | triton {tv} | cuda {torch.version.cuda} | python {platform.python_version()}")
EOF
HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
pack

stage "2. GPU test tier"
plugins=()
"$PY" -c "import xdist" 2>/dev/null && plugins+=(-n "$WORKERS")
"$PY" -c "import pytest_timeout" 2>/dev/null && plugins+=(--timeout 240)
capped 210 env HSTU_AUTOTUNE=quick "$PY" -m pytest -m gpu -q --maxfail=3 --tb=short -p no:cacheprovider \
    "${plugins[@]}" --junitxml="$WORK/pytest_gpu.xml" tests 2>&1 | tee "$WORK/pytest_gpu.log" | tail -25
echo "tests: $(grep -E '[0-9]+ (passed|failed|skipped)' "$WORK/pytest_gpu.log" | tail -1)"
pack

stage "3. attention benchmark"
# without CUDA it parses its flags and exits with its message: the dry run still catches a bad flag
capped 150 "$PY" bench/bench_attention.py --shapes "128,200,1,64;16,4096,4,128" --modes fwd,fwd+bwd \
    --naive-max-n 1024 --out "$WORK" 2>&1 | tee "$WORK/bench_attention.log" | tail -30
pack

stage "4. M-FALCON benchmark"
rank=(--no-rank)
[ -d "$DATA" ] && rank=(--data-dir "$DATA")
# a CPU dry run takes the quick shapes (and ranks a few users only)
if [ "$HAS_CUDA" = 1 ]; then size=(--m 3706); else size=(--quick); fi
capped 90 "$PY" bench/bench_mfalcon.py "${size[@]}" --out "$WORK" "${rank[@]}" --no-progress --no-plot 2>&1 \
    | tee "$WORK/bench_mfalcon.log" | tail -20
pack

stage "5. fused vs unfused training"
if [ ! -d "$DATA" ]; then
    echo "train: skipped ($DATA missing: copy ../shared/data/ml-1m-half there and carry .data)"
else
    for mode in unfused fused; do
        flag=(); [ "$mode" = fused ] && flag=(--fused)
        run="$WORK/run-$mode"
        t0=$SECONDS
        # each mode gets half of what is left when it starts (the fused one the rest)
        div=1; [ "$mode" = unfused ] && div=2
        share=$(($(left) / div))
        capped "$share" "$PY" -m hstu train --data-dir "$DATA" --epochs "$EPOCHS" --patience 100 --no-progress \
            --output-dir "$run" "${flag[@]}" 2>&1 | tee "$WORK/train_$mode.log" | tail -6
        echo "train $mode: $((SECONDS - t0)) s wall"
        cp "$run/log.jsonl" "$WORK/train_$mode.jsonl" 2>/dev/null
        rm -f "$run"/*.pt
    done
fi
pack

stage "summary"
"$PY" bench/gpu_summary.py "$WORK" --markdown "$OUT/summary.txt"
pack
echo "logs and results: $OUT/gpu_check.tar.gz ($(du -h "$OUT/gpu_check.tar.gz" | cut -f1)); total $((SECONDS - start)) s"
