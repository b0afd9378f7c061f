"""How much of the swap's damage each recovery undoes, measured on one original model.

    python scripts/recovery_figures.py --original runs/demo/original --data runs/demo/data --out runs/recovery

Five models, each compared with the original on the same evaluation responses (per-token
KL(model || original), 95% bootstrap interval over examples; the lower the better):

- step 0: the swap alone (crrelu-llm patch, eps = 0.01, the paper's init)
- calibrated: the swap with eps calibrated per layer (epsilon_init: calibrate)
- distilled: step 0 then ``--steps`` of distillation from the original (crrelu-llm distill)
- calibrated + distilled, and gradual: the same with calibration, and with swap_steps = steps / 2

Every model is an ordinary crrelu-llm output directory under --out; rerunning skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from crrelu_llm.evaluation import evaluate
from crrelu_llm.patching.checkpoints import patch_checkpoint
from crrelu_llm.training.train import run_keys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--original", default="runs/demo/original")
    parser.add_argument("--data", default="runs/demo/data")
    parser.add_argument("--out", type=Path, default=Path("runs/recovery"))
    parser.add_argument("--steps", type=int, default=200, help="distillation steps (default 200)")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--mlp-mse-weight", type=float, default=0.0)
    parser.add_argument("--max-samples", type=int, default=200, help="evaluation examples for the KL (default 200)")
    args = parser.parse_args(argv)
    for path in (args.original, args.data):
        if not Path(path).exists():
            print(
                f"recovery_figures: {path} does not exist; run `crrelu-llm demo` first or pass --original/--data",
                file=sys.stderr,
            )
            return 2
    out = args.out
    train = {
        "dataset_name": args.data,
        "max_steps": args.steps,
        "learning_rate": args.learning_rate,
        "warmup_steps": 10,
        "mlp_mse_weight": args.mlp_mse_weight,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "max_length": 32,
        "activation_learning_rate": 1e-2,
        "logging_steps": 50,
        "save_steps": args.steps,
        "bf16": False,
        "use_cpu": True,
        "gradient_checkpointing": False,
        "report_to": "none",
        "seed": 0,
        "model_name_or_path": args.original,
        "activation": "crrelu",
        "max_eval_samples": 100,
    }
    variants = {
        "step 0 (eps 0.01)": ("patch", {"epsilon_init": 0.01}),
        "calibrated": ("patch", {"epsilon_init": "calibrate"}),
        f"distilled ({args.steps} steps)": ("distill", {}),
        "calibrated + distilled": ("distill", {"epsilon_init": "calibrate"}),
        f"gradual (swap_steps {args.steps // 2}) + calibrated + distilled": (
            "distill",
            {"epsilon_init": "calibrate", "swap_steps": args.steps // 2},
        ),
    }
    rows = []
    for i, (name, (kind, keys)) in enumerate(variants.items()):
        model = out / f"{i}-{kind}"
        if not (model / "config.json").exists() or (kind == "distill" and not (model / "final_metrics.json").exists()):
            if kind == "patch":
                patch_checkpoint(
                    args.original, model, epsilon_init=keys["epsilon_init"], calibration_data=args.data, overwrite=True
                )
            else:
                run_keys("distill", {**train, **keys, "output_dir": str(model)})
        drift = evaluate.run_drift(model, args.original, args.data, max_samples=args.max_samples)
        rows.append(
            {
                "model": name,
                "path": str(model),
                **{
                    k: drift[k]
                    for k in (
                        "kl_patched_original",
                        "kl_interval",
                        "tokens",
                        "examples",
                        "perplexity_patched",
                        "perplexity_original",
                    )
                },
            }
        )
    base = rows[0]["kl_patched_original"]
    print(
        f"\nper-token KL(model || original) over {rows[0]['tokens']} response tokens of {rows[0]['examples']} "
        f"examples of {args.data}; 95% bootstrap interval over examples"
    )
    print(f"{'model':<58} {'KL':>9} {'95% interval':>22} {'vs step 0':>9} {'perplexity':>10}")
    for r in rows:
        lo, hi = r["kl_interval"]
        print(
            f"{r['model']:<58} {r['kl_patched_original']:9.5f} {f'[{lo:.5f}, {hi:.5f}]':>22} "
            f"{r['kl_patched_original'] / base:9.2f} {r['perplexity_patched']:10.3f}"
        )
    print(f"original perplexity {rows[0]['perplexity_original']:.3f}")
    (out / "recovery.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
