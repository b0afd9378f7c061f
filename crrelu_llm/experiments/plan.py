"""``crrelu-llm experiment --config X --plan``: every stage, what it waits for, and its cost.

The plan walks the experiment exactly as a run would (the same stage declarations, nothing
run, nothing written) and estimates each stage's compute from the model's parameter count N
(built on the meta device from its config: no weights are loaded) and the tokens it processes
T (sequences x ``max_length``, an upper bound: shorter sequences cost less):

- training: 6 N T (forward and backward); DPO and KTO add the reference's forward, 2 N T, once per
  reference when runs share its log-probabilities (the runner's default), and each pair is two
  sequences; distillation adds the teacher's forward;
- forward-only evaluations (rewards, drift, probe): 2 N T per model;
- win rates: 2 N per generated token, both models (the judge not counted); benchmarks: not
  estimated (their item lengths are the task's).

GPU-hours divide the FLOPs by ``gpu_tflops`` x ``utilisation`` (defaults: 989 TFLOP/s, an
H100 SXM's dense bf16 peak, at 40%). Training rows come from the task, a local file, a
``max_train_samples`` key or the known size of a hub dataset (before any filter).
``summary.json`` records every stage's measured wall time, to check the estimate against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crrelu_llm.training.objectives import OBJECTIVES

# Training rows of hub datasets (train split, before any filter), for the estimate only.
KNOWN_ROWS = {
    "anthropic/hh-rlhf": 160_800,
    "stanfordnlp/shp": 348_718,
    "huggingfaceh4/ultrafeedback_binarized": 61_135,
    "trl-lib/ultrafeedback_binarized": 62_135,
}


@dataclass
class PlannedStage:
    name: str
    kind: str
    after: list[str]
    keys: dict
    status: str
    flops: float | None = None
    note: str = ""


def parameter_count(model: str | None, pretrain: dict | None) -> int | None:
    """Parameters of ``model`` (or of the ``pretrain`` spec), built on the meta device; None
    where its config cannot be read (:func:`model_config` says why)."""
    config = model_config(model, pretrain)
    return None if isinstance(config, str) else count_parameters(config)


def count_parameters(config) -> int:
    """Parameters of a causal LM of ``config``, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in built.parameters())


def model_config(model: str | None, pretrain: dict | None):
    """The config the plan counts parameters from, or a one-line reason it cannot be read. A
    hub id is looked for in the local cache first, so a machine that has it plans offline."""
    from crrelu_llm.errors import ModelLoadError
    from crrelu_llm.patching.loading import load_config
    from crrelu_llm.patching.tiny import tiny_config

    if pretrain:
        return tiny_config(pretrain.get("model_type", "gpt2"), **pretrain.get("config", {}))
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError):
        pass
    try:
        return load_config(model)
    except ModelLoadError:
        import os

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        where = "offline (HF_HUB_OFFLINE)" if offline else "and the Hub did not answer"
        fix = "" if offline else "set HF_HUB_OFFLINE=1 to skip the Hub's retries, or "
        return (
            f"the config of {model} could not be read here (not a local directory, not in the Hub cache, "
            f"{where}): {fix}point the recipe's original at a local model directory, or plan where the "
            "Hub is reachable"
        )


def training_rows(exp, keys: dict) -> int | None:
    if keys.get("max_train_samples"):
        return int(keys["max_train_samples"])
    if exp.task:
        return int(exp.task["n_train"])
    path = Path(str(exp.dataset_name)).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("train*") if p.is_file())
        if files and all(f.suffix == ".jsonl" for f in files):
            return sum(sum(1 for line in f.open() if line.strip()) for f in files)
        return None
    return KNOWN_ROWS.get(str(exp.dataset_name).lower())


def _sequences(exp, keys: dict, args, gpus: int) -> tuple[float | None, str]:
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * gpus
    if args.max_steps and args.max_steps > 0:
        return args.max_steps * batch, f"{args.max_steps} steps x {batch} sequences"
    rows = training_rows(exp, keys)
    if rows is None:
        return None, "training rows unknown (set max_train_samples or max_steps)"
    return rows * args.num_train_epochs, f"{args.num_train_epochs:g} epoch(s) of {rows} rows"


def estimate(exp, spec, stage: PlannedStage, params: int | None, gpus: int, caches: set, args=None) -> None:
    """Fill ``stage.flops`` and ``stage.note`` from the stage's kind and resolved keys."""
    kind, keys = stage.kind, stage.keys
    if kind in ("data", "init", "patch"):
        stage.flops, stage.note = 0.0, "no training (negligible)"
        return
    if params is None:
        stage.note = "parameter count unknown (the model's config could not be read)"
        return
    if kind == "pairs":  # K samples of every prompt (the judge's own cost is not counted)
        n = keys["num_prompts"] or training_rows(exp, {})
        if n is None:
            stage.note = "prompts unknown (set on_policy.num_prompts)"
            return
        k, new = keys["num_samples"], keys["max_new_tokens"]
        stage.flops = 2 * params * n * k * new
        stage.note = f"{n} prompts x {k} samples x {new} new tokens; the judge not counted"
    elif kind == "winrate":
        n, new = keys["num_prompts"], keys["max_new_tokens"]
        stage.flops, stage.note = 2 * 2 * params * n * new, f"{n} prompts x {new} new tokens, 2 models"
    elif kind in ("rewards", "drift", "probe") and keys["max_samples"] is None:
        stage.note = "every evaluation example (max_samples unset): not estimated"
    elif kind == "rewards":
        n, length = keys["max_samples"], keys["max_length"]
        stage.flops, stage.note = 2 * 2 * 2 * params * n * length, f"{n} pairs x {length} tokens, 2 models"
    elif kind in ("drift", "probe"):
        n, length, models = keys["max_samples"], keys["max_length"], 2 if kind == "drift" else 1
        stage.flops = 2 * models * params * n * length
        stage.note = f"{n} examples x {length} tokens, {models} model(s)"
    elif kind == "benchmark":
        stage.note = "lm-eval tasks: not estimated"
    else:  # training: original, recover, sft, preference
        sequences, stage.note = _sequences(exp, keys, args, gpus)
        if sequences is None:
            return
        tokens = sequences * args.max_length
        if kind == "preference":  # two sequences per pair, and a reference's forward unless a run before cached it
            cache = keys.get("ref_logps_cache_dir") if getattr(args, "precompute_ref_log_probs", False) else None
            cached = cache is not None and cache in caches
            caches.add(cache)
            reference = 0 if cached or not OBJECTIVES[spec.command].reference else 2 * params * 2 * tokens
            stage.flops = 6 * params * 2 * tokens + reference
            stage.note += "; reference log-probs from the cache" if cached else ""
        else:  # distillation: the teacher's forward too
            stage.flops = 6 * params * tokens + (2 * params * tokens if kind == "recover" else 0)


def plan(exp, gpus: int = 1, gpu_tflops: float = 989.0, utilisation: float = 0.4) -> dict:
    from crrelu_llm.errors import UsageError
    from crrelu_llm.experiments.experiment import check_stages
    from crrelu_llm.experiments.ledger import Ledger
    from crrelu_llm.experiments.stages import declare

    if gpus < 1 or not gpu_tflops > 0 or not 0 < utilisation <= 1:
        raise UsageError(
            f"--plan needs --plan-gpus >= 1, --gpu-tflops > 0 and --utilisation in (0, 1]; got "
            f"{gpus}, {gpu_tflops:g}, {utilisation:g}"
        )
    declaration = declare(exp)
    parsed = check_stages(exp, declaration, on_this_machine=False)  # a recipe that cannot run is refused here too
    assessed = Ledger(exp.output_dir).assess(declaration.stages)
    config = model_config(exp.original, exp.pretrain)
    params = None if isinstance(config, str) else count_parameters(config)
    caches, planned = set(), []
    for spec in declaration.stages:
        if spec.external:
            continue
        status = assessed[spec.name]["status"]
        stage = PlannedStage(
            spec.name, spec.kind, list(dict.fromkeys(spec.after)), spec.keys, "" if status == "to run" else status
        )
        estimate(exp, spec, stage, params, gpus, caches, parsed.get(spec.name))
        planned.append(stage)
    rate = gpu_tflops * 1e12 * utilisation
    rows = [
        {
            "stage": s.name,
            "kind": s.kind,
            "after": s.after,
            "status": s.status,
            "flops": s.flops,
            "gpu_hours": s.flops / rate / 3600 if s.flops is not None else None,
            "basis": s.note,
        }
        for s in planned
    ]
    unestimated = [r["stage"] for r in rows if r["flops"] is None]
    estimated = sum(r["flops"] for r in rows if r["flops"] is not None)
    known = not unestimated  # a sum over some stages is not the total
    return {
        "parameters": params,
        "parameters_unknown": config if isinstance(config, str) else None,
        "gpus_per_run": gpus,
        "gpu_tflops": gpu_tflops,
        "utilisation": utilisation,
        "stages": rows,
        "total_flops": estimated if known else None,
        "total_gpu_hours": estimated / rate / 3600 if known else None,
        "estimated_flops": estimated,
        "unestimated": unestimated,
        "detectable": planned_sensitivity(exp),
    }


def planned_sensitivity(exp) -> dict:
    """What the planned sample sizes can detect before anything is measured: the worst case (no
    ties, independent samples) and what ties or agreement would buy (``crrelu_llm.stats``)."""
    from crrelu_llm.experiments.evaluations import evaluation_settings
    from crrelu_llm.stats import detectable_difference, planned_detectable

    out = {}
    if "winrate" in exp.evaluations:
        n = evaluation_settings(exp, "winrate")["num_prompts"]
        if n:
            out["win_rate"] = {
                "n": n,
                "worst_case": detectable_difference(n, two_samples=False),
                "at_90_percent_ties": planned_detectable(n, 0.1) / 2,
            }
    if "rewards" in exp.evaluations:
        n = evaluation_settings(exp, "rewards")["max_samples"]
        if n:
            out["reward_accuracy"] = {
                "n": n,
                "worst_case": detectable_difference(n),
                "paired_at_10_percent_disagreement": planned_detectable(n, 0.1),
            }
    return out


def format_plan(result: dict) -> str:
    rows = result["stages"]
    name_width = max([5, *(len(r["stage"]) for r in rows)])
    after_width = max([5, *(len(", ".join(r["after"])) for r in rows)])
    lines = [f"{'stage':<{name_width}} {'after':<{after_width}} {'FLOPs':>9} {'GPU-h':>8}  basis"]
    for r in rows:
        flops = f"{r['flops']:.2e}" if r["flops"] else ("0" if r["flops"] == 0 else "unknown")
        hours = f"{r['gpu_hours']:.3f}" if r["gpu_hours"] is not None else "unknown"
        lines.append(
            f"{r['stage']:<{name_width}} {', '.join(r['after']):<{after_width}} {flops:>9} {hours:>8}  "
            f"{r['basis']}" + (f" ({r['status']})" if r["status"] else "")
        )
    params = f"{result['parameters']:,}" if result["parameters"] else "unknown"
    missing = result["unestimated"]
    if missing:
        total = (
            f"total unknown: {len(missing)} of {len(rows)} stages not estimated (the other "
            f"{len(rows) - len(missing)}: {result['estimated_flops']:.2e} FLOPs)"
        )
    else:
        total = f"total {result['total_flops']:.2e} FLOPs = {result['total_gpu_hours']:.1f} GPU-hours"
    sensitivity = result.get("detectable") or {}
    parts = []
    if "win_rate" in sensitivity:
        w = sensitivity["win_rate"]
        parts.append(
            f"a win rate over {w['n']} prompts, {100 * w['worst_case']:.1f} points from 0.5 with no ties "
            f"({100 * w['at_90_percent_ties']:.1f} with 90% ties)"
        )
    if "reward_accuracy" in sensitivity:
        r = sensitivity["reward_accuracy"]
        parts.append(
            f"two reward accuracies over {r['n']} pairs, {100 * r['worst_case']:.1f} points apart if "
            f"independent ({100 * r['paired_at_10_percent_disagreement']:.1f} paired, if the arms disagree "
            "on 10% of pairs)"
        )
    if parts:
        lines.append(
            "planned sizes detect, with 80% power before anything is measured (the report computes it from "
            "the data): " + "; ".join(parts)
        )
    if result.get("parameters_unknown"):
        lines.append(f"parameter count unknown: {result['parameters_unknown']}")
    lines.append(
        f"{total} at {result['gpu_tflops']:g} TFLOP/s x {result['utilisation']:.0%} utilisation; "
        f"{params} parameters; {len(rows)} stages"
    )
    return "\n".join(lines)
