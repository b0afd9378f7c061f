#!/usr/bin/env bash
# Run one DPO recipe for several betas, each into its own output directory
# (<recipe's output_dir>-beta<b>). A finished beta is skipped; an interrupted one resumes
# from its last checkpoint. For a recipe with arms, --arm NAME comes right after it.
# Extra flags after `--` go to every run.
#   bash scripts/sweep_beta.sh recipes/gpt2-large/hh/dpo.yaml --arm crrelu 0.05 0.1 0.2 0.5
#   LAUNCH="accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m crrelu_llm.cli" \
#     bash scripts/sweep_beta.sh recipes/gpt2-large/hh/dpo.yaml --arm relu 0.1 0.5 -- --seed 1
set -euo pipefail
recipe=${1:?usage: sweep_beta.sh RECIPE [--arm NAME] BETA [BETA ...] [-- extra flags]}; shift
arm=(); if [ "${1:-}" = "--arm" ]; then arm=(--arm "${2:?--arm needs a name}"); shift 2; fi
betas=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do betas+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#betas[@]} -gt 0 ] || { echo "give at least one beta" >&2; exit 2; }
launch=${LAUNCH:-crrelu-llm}
# the output_dir the recipe gives this arm (the same resolution the training command uses)
base=$(python3 -c "
import sys
from crrelu_llm.training.arms import select_arm
from crrelu_llm.training.recipes import read_recipe
print(select_arm(read_recipe(sys.argv[1]), sys.argv[2] or None, sys.argv[1])['output_dir'])
" "$recipe" "${arm[1]:-}")
for beta in "${betas[@]}"; do
  out="${base}-beta${beta}"
  if [ -f "$out/final_metrics.json" ]; then echo "beta $beta: done ($out)"; continue; fi
  echo "beta $beta -> $out"
  $launch dpo --config "$recipe" "${arm[@]}" --beta "$beta" --output_dir "$out" "$@"
done
