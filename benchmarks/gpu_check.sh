#!/usr/bin/env bash
# One prepared check on a CUDA GPU; installs nothing. The section limits add up to 290 s.
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]      (default: gpu-results/<UTC time>)
#
# 1. the GPU tests: tests marked gpu, and the attention/dispatch/torch.compile tests
#    (which run on CUDA when it is there);
# 2. benchmarks/attention.py: Triton vs every SDPA backend (flash, efficient, cuDNN) at
#    B/16@224, L/16@224, H/14@224, B/16@384, bf16 and fp16, forward and forward+backward;
# 3. benchmarks/gpu_step.py: a ViT-B/16 pretraining step, vitssl vs timm, bf16.
# Every section has its own time limit; its output and exit status land in RESULTS_DIR.
# Run from the repository root with the environment that has vitssl installed.
set -u
OUT=${1:-gpu-results/$(date -u +%Y%m%d-%H%M%S)}
if ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: no CUDA device visible to torch" >&2
    exit 2
fi
mkdir -p "$OUT"
STATUS=0

section() {  # section NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.txt"
    echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || STATUS=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'capability', torch.cuda.get_device_capability())"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

section tests 90 python -m pytest -q -p no:cacheprovider -o addopts="" -m "gpu or not slow" \
    tests/test_attention_gpu.py tests/test_attention_dispatch.py tests/test_compile_encoder.py
section attention-bf16 80 python benchmarks/attention.py --dtype bf16 --iters 20 --warmup 5 \
    --shapes B@224 L@224 H@224 B@384
section attention-fp16 70 python benchmarks/attention.py --dtype fp16 --iters 20 --warmup 5 \
    --shapes B@224 L@224 H@224 B@384
section step-B16-bf16 50 python benchmarks/gpu_step.py --batch-size 128 --out "$OUT/step-B16-bf16.json"

echo "results in $OUT (overall status $STATUS)" | tee -a "$OUT/summary.txt"
exit $STATUS
