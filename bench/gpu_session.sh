#!/usr/bin/env bash
# Everything a GPU session checks, in stages that each fit one 10-minute device call; logs and results go to
# $OUT (default bench/results/gpu-session). Run from the repository root on the GPU machine:
#
#   bash bench/gpu_session.sh tests      # install, GPU test tier (pytest -m gpu), offline-free
#   bash bench/gpu_session.sh attention  # bench/bench_attention.py on the issue's shapes
#   bash bench/gpu_session.sh mfalcon    # bench/bench_mfalcon.py (+ whole-catalogue ranking if data was carried)
#   bash bench/gpu_session.sh train      # fused vs unfused training on ml-1m-half, a few epochs each
#   bash bench/gpu_session.sh all        # every stage in order (longer than one call: use stages)
#
# MovieLens files are not ours to commit: copy ../shared/data/ml-1m-half into .data/ml-1m-half (ignored via
# .git/info/exclude) and carry ".data" with the device call; stages that need it skip without it.
set -uo pipefail
stage="${1:-all}"
OUT="${OUT:-bench/results/gpu-session}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
DATA=.data/ml-1m-half

install() {
    python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
    python3 - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import torch, triton
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| triton", triton.__version__,
      "| cuda", torch.version.cuda)
EOF
}

run_tests() {
    python3 -m pytest -m gpu -q -x --tb=short -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests 2>&1 \
        | tee "$OUT/pytest_gpu.log" | tail -40
}

run_attention() {
    python3 bench/bench_attention.py --out "$OUT" 2>&1 | tee "$OUT/bench_attention.log" | tail -60
}

run_mfalcon() {
    local rank=(--no-rank)
    [ -d "$DATA" ] && rank=(--data-dir "$DATA")
    python3 bench/bench_mfalcon.py --out "$OUT" "${rank[@]}" --no-progress 2>&1 | tee "$OUT/bench_mfalcon.log" | tail -60
}

run_train() {
    if [ ! -d "$DATA" ]; then echo "train: $DATA missing (carry .data), skipped"; return; fi
    for mode in unfused fused; do
        flag=(); [ "$mode" = fused ] && flag=(--fused)
        local t0=$SECONDS
        python3 -m hstu train --data-dir "$DATA" --epochs 5 --patience 100 --no-progress \
            --output-dir "/tmp/run-$mode" "${flag[@]}" 2>&1 | tee "$OUT/train_$mode.log" | tail -8
        echo "$mode: $((SECONDS - t0)) s wall" | tee -a "$OUT/train_$mode.log"
        cp "/tmp/run-$mode/log.jsonl" "$OUT/train_${mode}.jsonl" 2>/dev/null
    done
}

install
case "$stage" in
    tests) run_tests ;;
    attention) run_attention ;;
    mfalcon) run_mfalcon ;;
    train) run_train ;;
    all) run_tests; run_attention; run_mfalcon; run_train ;;
    *) echo "unknown stage $stage (tests, attention, mfalcon, train, all)"; exit 2 ;;
esac
