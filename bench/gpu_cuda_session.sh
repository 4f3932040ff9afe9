#!/usr/bin/env bash
# The CUDA backend's GPU checks, prepared as one device call (about 8 of its 10 minutes on an H200 machine with
# 16 cores); logs and results go to $OUT (default bench/results/gpu-cuda). Run from the repository root:
#
#   bash bench/gpu_cuda_session.sh            # build, GPU tier, sanitizers, benchmark
#   bash bench/gpu_cuda_session.sh build      # one stage: build | smoke_sm90 | tests | sanitize | bench
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

# the sm90 forward (wgmma / TMA) has never run on a GPU: a 30-second smoke run decides whether the later stages
# use it; when it fails or hangs, they run with HSTU_CUDA_SM90=0 (the sm80 kernels) and the log says so
smoke_sm90() {
    HSTU_CUDA_SM90=1 timeout 30 python3 -c "
import torch
from hstu_kernels.ops.common import cuda_ext
from hstu_kernels.ops.hstu_attention import cuda_impl
assert 'sm90' in cuda_ext.kernel_families() and torch.cuda.get_device_capability() == (9, 0), 'no sm90 family here'
L, H, D = 300, 2, 128
q, k, v = (torch.randn(L, H, D, device='cuda', dtype=torch.bfloat16) for _ in range(3))
off = torch.tensor([0, 1, 129, 300], device='cuda')
out = cuda_impl.hstu_attention_cuda(q, k, v, off, 200)
torch.cuda.synchronize()
assert torch.isfinite(out).all(), 'non-finite output'
print('sm90 smoke: ok')
" > "$OUT/smoke_sm90.log" 2>&1
    local rc=$?
    tail -3 "$OUT/smoke_sm90.log"
    if [ $rc -ne 0 ]; then
        echo "sm90 smoke: failed (exit $rc); the other stages run the sm80 forward"
        export HSTU_CUDA_SM90=0
    fi
}

tests() {
    # the sm80 family first (the tested baseline), then the sm90 forward's split of the same tests
    HSTU_CUDA_SM90=0 timeout 200 python3 -m pytest -m gpu -q -x --tb=short -p no:cacheprovider -k "not sm90" \
        --junitxml="$OUT/pytest_cuda.xml" tests/ops/test_attention_cuda.py tests/ops/test_cached_attention_cuda.py \
        2>&1 | tee "$OUT/pytest_cuda.log" | tail -20
    if [ "${HSTU_CUDA_SM90:-1}" != "0" ]; then
        timeout 90 python3 -m pytest -m gpu -q --tb=short -p no:cacheprovider -k sm90 \
            --junitxml="$OUT/pytest_cuda_sm90.xml" tests/ops/test_attention_cuda.py 2>&1 \
            | tee "$OUT/pytest_cuda_sm90.log" | tail -20
    fi
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
    smoke_sm90) smoke_sm90 ;;
    tests) tests ;;
    sanitize) sanitize ;;
    bench) bench ;;
    all) build && { smoke_sm90; tests; sanitize; bench; } ;;
    *) echo "unknown stage $stage (build, smoke_sm90, tests, sanitize, bench, all)"; exit 2 ;;
esac
