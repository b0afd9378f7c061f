#!/usr/bin/env bash
# Run one DPO recipe for several betas, each into its own output directory
# (<recipe's output_dir>-beta<b>). A finished beta is skipped; an interrupted one resumes
# from its last checkpoint. Extra flags after `--` go to every run.
#   bash scripts/sweep_beta.sh recipes/gpt2-large/hh/dpo_crrelu.yaml 0.05 0.1 0.2 0.5
#   LAUNCH="accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m crrelu_llm.cli" \
#     bash scripts/sweep_beta.sh recipes/gpt2-large/hh/dpo_crrelu.yaml 0.1 0.5 -- --seed 1
set -euo pipefail
recipe=${1:?usage: sweep_beta.sh RECIPE BETA [BETA ...] [-- extra flags]}; shift
betas=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do betas+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#betas[@]} -gt 0 ] || { echo "give at least one beta" >&2; exit 2; }
launch=${LAUNCH:-crrelu-llm}
base=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$recipe")
for beta in "${betas[@]}"; do
  out="${base}-beta${beta}"
  if [ -f "$out/final_metrics.json" ]; then echo "beta $beta: done ($out)"; continue; fi
  echo "beta $beta -> $out"
  $launch dpo --config "$recipe" --beta "$beta" --output_dir "$out" "$@"
done
