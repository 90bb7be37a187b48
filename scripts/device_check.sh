#!/usr/bin/env bash
# The GPU checks in one go: the `cuda` tests, a ResNet-20 run on CUDA, the ViT scale benchmark and the
# measured 2:4 speed-up. Figures go to OUT_DIR/figures.md (and each step's log beside it).
#
#   bash scripts/device_check.sh [OUT_DIR]      (default: $OUT, else device_check/)
#
# Under 8 minutes on one H200-class GPU: every step has its own time limit, and a step that fails or runs
# out of time is recorded as such and the next one runs. Python: .venv's when there is one, else $PYTHON,
# else python3 (a machine with torch, timm, safetensors, pandas and pytest). The ResNet-20 steps read
# the CIFAR-10 subset and checkpoint under $SNOWS_SHARED (default ../shared); the ViT test reads
# Fashion-MNIST ($SNOWS_FASHION_MNIST or Debian's package); without them those steps say they skipped.
# A machine lent through the `device` tool receives the checkout alone: copy what these read into a folder
# of the checkout that .git/info/exclude ignores, carry it, and point the two variables there.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-device_check}}"
mkdir -p "$out"
figures="$out/figures.md"
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py="${PYTHON:-python3}"; fi
shared="${SNOWS_SHARED:-../shared}"
export PYTHONUNBUFFERED=1 PYTHONPATH=. SNOWS_SHARED="$shared"

step() {  # step LIMIT_SECONDS NAME COMMAND...: run it, log it, note how it ended in the figures
    local limit=$1 name=$2
    shift 2
    echo "## $name" >>"$figures"
    local tic=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    grep -E '^(\||#|top-1|speed|vit_|weights|dense|[0-9]+ (passed|failed|skipped)|SKIPPED|FAILED)' "$out/$name.log" >>"$figures"
    [ $rc = 0 ] || tail -n 3 "$out/$name.log" >>"$figures"
    echo "($name: exit $rc after $((SECONDS - tic)) s$([ $rc = 124 ] && echo ', out of time'))" >>"$figures"
    echo >>"$figures"
}

{
    echo "# Device check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
    "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA DEVICE")'
    echo
} >"$figures"

step 120 cuda_tests "$py" -m pytest -q -rs -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_speed.py
if [ -f "$shared/models/resnet20-cifar10.th" ]; then
    step 60 resnet20_cuda "$py" -m snows_core prune --model resnet20_cifar10 --device cuda --sparsity 0.9 \
        --checkpoint "$shared/models/resnet20-cifar10.th" --data-root "$shared/data/cifar10-subset.npz" \
        --eval-size 0 --measure-speed --out "$out/resnet20"
else
    echo "## resnet20_cuda: skipped, no $shared/models/resnet20-cifar10.th" >>"$figures"
fi
step 200 vit_base "$py" benchmarks/bench_scale.py --device cuda --models vit_base_patch16_224 \
    --n-calib 16,64,256 --ks 0,3 --blocks 2 --full --full-at 64,3 --speed --speed-batch 256 --json "$out/vit_base.json"
step 90 vit_large "$py" benchmarks/bench_scale.py --device cuda --models vit_large_patch16_224 \
    --n-calib 16,64 --ks 0,3 --blocks 1 --speed --speed-batch 256 --json "$out/vit_large.json"
cat "$figures"
