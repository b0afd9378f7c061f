"""``crrelu-llm experiment --config X --plan``: every stage, what it waits for, and its cost.

The plan walks the experiment exactly as a run would (the same stage declarations, nothing
run, nothing written) and estimates each stage's compute from the model's parameter count N
(built on the meta device from its config: no weights are loaded) and the tokens it processes
T (sequences x ``max_length``, an upper bound: shorter sequences cost less):

- training: 6 N T (forward and backward); DPO adds the reference's forward, 2 N T, once per
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

import re
from dataclasses import dataclass
from pathlib import Path

# Training rows of hub datasets (train split, before any filter), for the estimate only.
KNOWN_ROWS = {"anthropic/hh-rlhf": 160_800, "stanfordnlp/shp": 348_718,
              "huggingfaceh4/ultrafeedback_binarized": 61_135, "trl-lib/ultrafeedback_binarized": 62_135}


@dataclass
class PlannedStage:
    name: str
    after: list[str]
    keys: dict
    status: str
    flops: float | None = None
    note: str = ""


def _plan_ledger(output_dir: Path):
    """The runner's ledger in dry-run mode, recording each declared stage and whether it is
    done (finished with the same inputs), changed (finished with other inputs) or to run."""
    from .experiment import Ledger

    class PlanLedger(Ledger):
        def __init__(self):
            super().__init__(output_dir)
            self.dry_run = True
            self.stages: list[PlannedStage] = []

        def stage(self, name, done, action, keys, after=(), clear=None):
            changed = len(self.changed)
            super().stage(name, done, action, keys, after, clear)
            status = "changed" if len(self.changed) > changed else "done" if Path(done).exists() else ""
            self.stages.append(PlannedStage(name, list(dict.fromkeys(after)), keys, status))

    return PlanLedger()


def parameter_count(model: str | None, pretrain: dict | None) -> int | None:
    """Parameters of ``model`` (or of the ``pretrain`` spec), built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from .errors import ModelLoadError
    from .loading import load_config
    from .tiny import tiny_config

    try:
        config = tiny_config(pretrain.get("model_type", "gpt2"), **pretrain.get("config", {})) if pretrain \
            else load_config(model)
    except ModelLoadError:
        return None
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in built.parameters())


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


def _sequences(exp, keys: dict, gpus: int) -> tuple[float | None, str]:
    batch = keys.get("per_device_train_batch_size", 8) * keys.get("gradient_accumulation_steps", 1) * gpus
    if keys.get("max_steps", -1) and keys.get("max_steps", -1) > 0:
        return keys["max_steps"] * batch, f"{keys['max_steps']} steps x {batch} sequences"
    rows = training_rows(exp, keys)
    if rows is None:
        return None, "training rows unknown (set max_train_samples or max_steps)"
    epochs = keys.get("num_train_epochs", 3)
    return rows * epochs, f"{epochs:g} epoch(s) of {rows} rows"


def estimate(exp, stage: PlannedStage, params: int | None, gpus: int, exp_caches: set) -> None:
    """Fill ``stage.flops`` and ``stage.note``."""
    name, keys = stage.name, stage.keys
    length = keys.get("max_length", 1024)
    if params is None:
        stage.note = "parameter count unknown (the model's config could not be read)"
        return
    n = keys.get("max_samples") or keys.get("num_prompts")
    if "/winrate " in name:
        new = keys.get("max_new_tokens", 128)
        stage.flops, stage.note = 2 * 2 * params * (n or 200) * new, f"{n or 200} prompts x {new} new tokens, 2 models"
    elif "/rewards " in name:
        stage.flops, stage.note = 2 * 2 * 2 * params * (n or 500) * length, f"{n or 500} pairs, 2 models"
    elif name.endswith(" drift"):
        stage.flops, stage.note = 2 * 2 * params * (n or 200) * length, f"{n or 200} examples, 2 models"
    elif name.endswith(" probe"):
        stage.flops, stage.note = 2 * params * (n or 200) * length, f"{n or 200} examples"
    elif name.endswith(" benchmark"):
        stage.note = "lm-eval tasks: not estimated"
    elif re.search(r"(^|/)(sft|recover|original)$", name) or re.search(r"/dpo beta=\S+ seed=\S+$", name):
        sequences, stage.note = _sequences(exp, keys, gpus)
        if sequences is None:
            return
        tokens = sequences * length
        if "/dpo " in name:  # two sequences per pair, and the reference's forward unless a run before cached it
            cache = keys.get("ref_logps_cache_dir") if keys.get("precompute_ref_log_probs") else None
            cached = cache is not None and cache in exp_caches
            exp_caches.add(cache)
            stage.flops = 6 * params * 2 * tokens + (0 if cached else 2 * params * 2 * tokens)
            stage.note += "; reference log-probs from the cache" if cached else ""
        else:  # distillation: the teacher's forward too
            stage.flops = 6 * params * tokens + (2 * params * tokens if name.endswith("/recover") else 0)


def plan(exp, gpus: int = 1, gpu_tflops: float = 989.0, utilisation: float = 0.4) -> dict:
    from .errors import UsageError
    from .experiment import _walk

    if gpus < 1 or not gpu_tflops > 0 or not 0 < utilisation <= 1:
        raise UsageError(f"--plan needs --plan-gpus >= 1, --gpu-tflops > 0 and --utilisation in (0, 1]; got "
                         f"{gpus}, {gpu_tflops:g}, {utilisation:g}")

    ledger = _plan_ledger(exp.output_dir)
    _walk(exp, ledger)
    params = parameter_count(exp.original, exp.pretrain)
    caches: set = set()
    for stage in ledger.stages:
        estimate(exp, stage, params, gpus, caches)
    rate = gpu_tflops * 1e12 * utilisation
    rows = [{"stage": s.name, "after": s.after, "status": s.status, "flops": s.flops,
             "gpu_hours": s.flops / rate / 3600 if s.flops else None, "basis": s.note} for s in ledger.stages]
    total = sum(r["flops"] for r in rows if r["flops"])
    return {"parameters": params, "gpus_per_run": gpus, "gpu_tflops": gpu_tflops, "utilisation": utilisation,
            "stages": rows, "total_flops": total, "total_gpu_hours": total / rate / 3600,
            "unestimated": [r["stage"] for r in rows if r["flops"] is None and r["basis"]]}


def format_plan(result: dict) -> str:
    lines = [f"{'stage':<46} {'after':<34} {'FLOPs':>9} {'GPU-h':>8}  basis"]
    for r in result["stages"]:
        flops = f"{r['flops']:.2e}" if r["flops"] else "–"
        hours = f"{r['gpu_hours']:.3f}" if r["gpu_hours"] is not None else "–"
        after = ", ".join(r["after"])[:34]
        lines.append(f"{r['stage'][:46]:<46} {after:<34} {flops:>9} {hours:>8}  {r['basis']}"
                     + (f" ({r['status']})" if r["status"] else ""))
    params = f"{result['parameters']:,}" if result["parameters"] else "unknown"
    lines.append(f"total {result['total_flops']:.2e} FLOPs = {result['total_gpu_hours']:.1f} GPU-hours at "
                 f"{result['gpu_tflops']:g} TFLOP/s x {result['utilisation']:.0%} utilisation; {params} parameters; "
                 f"{len(result['stages'])} stages" + (f", {len(result['unestimated'])} not estimated"
                                                     if result["unestimated"] else ""))
    return "\n".join(lines)
