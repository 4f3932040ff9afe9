#!/usr/bin/env bash
# The CUDA backend's GPU checks, prepared as one device call (about 8 of its 10 minutes on an H200 machine with
# 16 cores); logs and results go to $OUT (default bench/results/gpu-cuda). Run from the repository root:
#
#   bash bench/gpu_cuda_session.sh            # build, GPU tier, sanitizers, benchmark
#   bash bench/gpu_cuda_session.sh build      # one stage: build | tests | sanitize | bench
#
# Each stage has its own time limit, so a hang or a slow stage still leaves the others' logs.
set -uo pipefail
stage="${1:-all}"
OUT="${OUT:-bench/results/gpu-cuda}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

build() {
    # sm_90a only on the device (the 80;90a default doubles the build); ninja uses every core
    HSTU_BUILD_CUDA=1 HSTU_CUDA_ARCHS=90a MAX_JOBS="$(nproc)" timeout 300 \
        python3 -m pip install -v --no-deps --no-build-isolation -e . > "$OUT/build.log" 2>&1
    local rc=$?
    tail -5 "$OUT/build.log"
    python3 -c "import torch, hstu_kernels._C as c; print('built head dims', c.built_head_dims(), '|', torch.cuda.get_device_name(0), torch.__version__, torch.version.cuda)" 2>&1 | tee "$OUT/env.txt"
    return $rc
}

tests() {
    timeout 240 python3 -m pytest -m gpu -q -x --tb=short -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" \
        tests/ops/test_attention_cuda.py tests/ops/test_cached_attention_cuda.py 2>&1 | tee "$OUT/pytest_cuda.log" | tail -30
}

sanitize() {
    for tool in memcheck racecheck synccheck; do
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool "$tool" --error-exitcode 9 \
            python3 bench/cuda_sanitize_case.py > "$OUT/sanitize_$tool.log" 2>&1
        echo "$tool: exit $? ($(grep -c 'ERROR SUMMARY: 0 errors\|RACECHECK SUMMARY: 0 hazards' "$OUT/sanitize_$tool.log") clean summaries)"
        tail -3 "$OUT/sanitize_$tool.log"
    done
}

bench() {
    timeout 150 python3 bench/bench_cuda.py --out "$OUT" 2>&1 | tee "$OUT/bench_cuda.log" | tail -12
}

case "$stage" in
    build) build ;;
    tests) tests ;;
    sanitize) sanitize ;;
    bench) bench ;;
    all) build && { tests; sanitize; bench; } ;;
    *) echo "unknown stage $stage (build, tests, sanitize, bench, all)"; exit 2 ;;
esac
