#!/usr/bin/env bash
# The GPU check of crrelu-llm: correctness on CUDA, both benchmarks, then short SFT -> DPO runs
# under the FSDP2 and ZeRO-3 profiles. $OUT (default ./gpu-check-out) gets log.txt (versions and
# every step's output), summary.txt, and the JSON figures: eight files, the most a device run returns (add none).
#
# On a GPU machine whose image has torch, triton and transformers (TRL, datasets and DeepSpeed
# may be missing; carry them as wheels in .whl/, see --prepare-wheels):
#     bash scripts/gpu_check.sh
# Prepare the wheels here first (Python 3.12, x86-64 manylinux), once:
#     bash scripts/gpu_check.sh --prepare-wheels
# Rehearse every step on a CPU-only machine with small sizes:
#     GPU_CHECK_ALLOW_CPU=1 bash scripts/gpu_check.sh
#
# Steps run in order of importance, each under its own time limit, and a failed step does not
# stop the next: what finished is in $OUT even if a later step fails or the machine is taken
# back. The distributed runs start only while GPU_CHECK_BUDGET_S (default 420) seconds have not
# passed. Budget: under 8 minutes on one H200. Exit status 1 if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare-wheels" ]; then
  set -e
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl trl==1.16.0 datasets==5.2.0 dill multiprocess xxhash \
    hjson pydantic pydantic-core annotated-types typing-inspection
  # DeepSpeed publishes a source distribution only; its wheel is pure Python when no ops are
  # pre-built (they are compiled on first use, and the Trainer's torch optimizer needs none).
  if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" deepspeed==0.19.8
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps -w .whl "$tmp"/deepspeed-*.tar.gz
    rm -rf "$tmp"
  fi
  echo "wheels in .whl/ ($(du -sh .whl | cut -f1)); carry .whl with the run"
  exit 0
fi

OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY=python3
START=$SECONDS
BUDGET="${GPU_CHECK_BUDGET_S:-420}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/crrelu-site .whl/*.whl \
    || echo "WARNING: installing the carried wheels failed"
  export PYTHONPATH="/tmp/crrelu-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda; TOKENS=8192; REPEATS=30; PRESET=gpt2-large; LAYERS=""; DTYPE=bfloat16; PAIRS=8; SEQ=512
  GEN_PRESET=gpt2-large; GEN_TOKENS=32
else
  [ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] || { echo "no CUDA device; set GPU_CHECK_ALLOW_CPU=1 to rehearse on CPU"; exit 1; }
  DEVICE=cpu; TOKENS=256; REPEATS=10; PRESET=gpt2-small; LAYERS="--layers 1"; DTYPE=float32; PAIRS=1; SEQ=32
  GEN_PRESET=tiny; GEN_TOKENS=8
fi

{
  echo "# gpu_check $(date -u +%FT%TZ) device=$DEVICE"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
  $PY - <<'EOF'
import importlib, importlib.metadata as md, sys
print("python", sys.version.split()[0])
for name in ("torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "tokenizers",
             "deepspeed", "pydantic"):
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        version = "not installed"
    try:
        importlib.import_module(name)
        state = "imports"
    except Exception as err:  # a broken import is what this line is for
        state = f"IMPORT FAILS: {type(err).__name__}: {err}"
    print(f"{name:13s} {version:14s} {state}")
import torch
print("cuda", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
EOF
} 2>&1 | tee "$OUT/log.txt"

STATUS=()
step() {  # step NAME LIMIT_S COMMAND...: run one step under a time limit, output to $OUT/log.txt
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, at $((SECONDS - START))s)" | tee -a "$OUT/log.txt"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v -E "Warning|warnings.warn" | tee -a "$OUT/log.txt"
  local rc=${PIPESTATUS[0]}
  STATUS+=("$name rc=$rc $((SECONDS - t0))s")
}
within_budget() { [ $((SECONDS - START)) -lt "$BUDGET" ] || { STATUS+=("$1 skipped (budget ${BUDGET}s spent)"); false; }; }

step tests 180 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_activation.py
step bench_activation 200 $PY benchmarks/bench_activation.py --device "$DEVICE" --tokens "$TOKENS" --repeats "$REPEATS" \
  --profile --json "$OUT/bench_activation.json"
step bench_host 60 $PY benchmarks/bench_activation.py --host --device "$DEVICE" --json "$OUT/bench_host.json"
step bench_generate 180 $PY benchmarks/bench_generate.py --device "$DEVICE" --preset "$GEN_PRESET" --dtype "$DTYPE" \
  --new-tokens "$GEN_TOKENS" --crrelu-kernels auto torch --profile --json "$OUT/bench_generate.json"
step bench_train_step 200 $PY benchmarks/bench_train_step.py --device "$DEVICE" --preset "$PRESET" $LAYERS --dtype "$DTYPE" \
  --batch-pairs "$PAIRS" --seq "$SEQ" --repeats 10 --kinds dpo,sft --json "$OUT/bench_train_step.json"
for profile in fsdp zero3; do
  within_budget "distributed_$profile" && step "distributed_$profile" 150 $PY scripts/distributed_check.py \
    --profile "recipes/accelerate_configs/$profile.yaml" --num-processes 1 --timeout 70 \
    --workdir "/tmp/crrelu-dist-$profile" --json "$OUT/distributed_$profile.json"
done

{
  echo "# steps (total $((SECONDS - START))s)"
  printf '%s\n' "${STATUS[@]}"
} | tee "$OUT/summary.txt"
echo "figures in $OUT"
! grep -q -E "rc=[1-9]" "$OUT/summary.txt"
