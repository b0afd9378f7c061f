#!/usr/bin/env bash
# The GPU check of crrelu-llm: correctness on CUDA, then both benchmarks, JSON figures to $OUT.
#
# On a GPU machine whose image has torch, triton and transformers (TRL and datasets may be
# missing; carry them as wheels in .whl/, see --prepare-wheels):
#     bash scripts/gpu_check.sh                # writes $OUT (default ./gpu-check-out)
# Prepare the wheels here first (Python 3.12, x86-64 manylinux), once:
#     bash scripts/gpu_check.sh --prepare-wheels
# Rehearse every step on a CPU-only machine with small sizes:
#     GPU_CHECK_ALLOW_CPU=1 bash scripts/gpu_check.sh
# Budget: under 8 minutes on one H200.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare-wheels" ]; then
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl trl==1.16.0 datasets==5.2.0 dill multiprocess xxhash
  echo "wheels in .whl/ ($(du -sh .whl | cut -f1)); carry .whl with the run"
  exit 0
fi

OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY=python3
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/crrelu-site .whl/*.whl
  export PYTHONPATH="/tmp/crrelu-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; TOKENS=8192; REPEATS=30; PRESET=gpt2-large; LAYERS=""; DTYPE=bfloat16; PAIRS=8; SEQ=512
else
  [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || { echo "no CUDA device; set GPU_CHECK_ALLOW_CPU=1 to rehearse on CPU"; exit 1; }
  DEVICE=cpu; TOKENS=256; REPEATS=3; PRESET=gpt2-small; LAYERS="--layers 1"; DTYPE=float32; PAIRS=1; SEQ=32
fi
{
  echo "# gpu_check $(date -u +%FT%TZ) device=$DEVICE"
  $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
} | tee "$OUT/environment.txt"

echo "== correctness"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_activation.py 2>&1 | tee "$OUT/tests.txt"

echo "== activation benchmark"
$PY scripts/bench_activation.py --device "$DEVICE" --tokens "$TOKENS" --repeats "$REPEATS" \
  --json "$OUT/bench_activation.json" 2>&1 | grep -v Warning | tee "$OUT/bench_activation.txt"

echo "== train-step benchmark"
$PY scripts/bench_train_step.py --device "$DEVICE" --preset "$PRESET" $LAYERS --dtype "$DTYPE" \
  --batch-pairs "$PAIRS" --seq "$SEQ" --repeats 5 --kinds dpo,sft \
  --json "$OUT/bench_train_step.json" 2>&1 | grep -v Warning | tee "$OUT/bench_train_step.txt"
echo "figures in $OUT"
