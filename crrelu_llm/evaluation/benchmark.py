"""Capability benchmarks through lm-evaluation-harness, on models loaded by crrelu-llm.

    from crrelu_llm.evaluation.benchmark import run_benchmark
    run_benchmark("runs/demo/crrelu/sft", ["crrelu_arith_mc"], limit=200)
    run_benchmark("runs/x/crrelu/dpo", ["hellaswag", "arc_easy"], num_fewshot=0)   # needs the hub

The model is loaded by :func:`crrelu_llm.patching.loading.load_causal_lm` (so a CRReLU checkpoint comes
back with its trained epsilons, checked bit for bit against the safetensors files) and handed
to lm-eval as a model object (``HFLM(pretrained=model)``); lm-eval does the prompting, scoring
and standard errors. One file per task (:data:`crrelu_llm.evaluation.results.BENCHMARK`) records the
settings, the sample size, every metric with its standard error, each item's outcome (lm-eval's
logged samples, so that two models are compared on the same items, paired) and the epsilons the
model ran with. The tasks shipped in :mod:`crrelu_llm.evaluation.bench_tasks` run offline; lm-eval's own tasks
download their data. Needs the ``bench`` extra: ``pip install 'crrelu-llm[bench]'``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import subprocess

import torch

from crrelu_llm.errors import EvaluationError, UsageError
from crrelu_llm.evaluation.bench_tasks import LOCAL_TASKS, TASK_DIR
from crrelu_llm.evaluation.evaluate import weights_stamp
from crrelu_llm.evaluation.results import BENCHMARK, eval_dir
from crrelu_llm.files import writable_dir, write_json
from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer
from crrelu_llm.patching.patch import epsilon_values
from crrelu_llm.stats import Z95

logger = logging.getLogger("crrelu_llm.benchmark")


@contextlib.contextmanager
def quiet_git_hash():
    """lm-eval records the commit of the working directory by running ``git describe`` with its
    stderr open, so outside a git checkout every benchmark prints ``fatal: not a git repository``.
    The same question is asked here with stderr kept (the result records None outside a checkout)."""
    import lm_eval.evaluator

    def git_hash():
        try:
            done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
        except FileNotFoundError:  # no git on this machine
            return None
        return (done.stdout.strip() or None) if done.returncode == 0 else None

    asked = lm_eval.evaluator.get_git_commit_hash
    lm_eval.evaluator.get_git_commit_hash = git_hash
    try:
        yield
    finally:
        lm_eval.evaluator.get_git_commit_hash = asked


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UsageError("benchmarks need lm-evaluation-harness: pip install 'crrelu-llm[bench]'") from None
    return lm_eval, HFLM, TaskManager


def parse_tasks(tasks) -> list[str]:
    """``"a,b"`` or a list, as a list of task names; none is an error."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not names:
        raise UsageError("--tasks needs at least one lm-eval task name, e.g. crrelu_arith_mc or hellaswag,arc_easy")
    return names


def _metrics(entry: dict) -> dict:
    """``{"acc": {"value", "stderr", "interval"}}`` from lm-eval's ``"acc,none"`` style keys."""
    metrics = {}
    for key, value in entry.items():
        name, _, filtered = key.partition(",")
        if not filtered or name.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        stderr = entry.get(f"{name}_stderr,{filtered}")
        stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
        label = name if filtered == "none" else f"{name},{filtered}"
        metrics[label] = {
            "value": float(value),
            "stderr": stderr,
            "interval": [value - Z95 * stderr, value + Z95 * stderr] if stderr is not None else None,
        }
    return metrics


def run_benchmark(
    model,
    tasks,
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    out=None,
    seed: int = 0,
) -> dict[str, dict]:
    """Run lm-eval ``tasks`` on ``model``; write and return one result per task (subtasks of a
    group included), keyed by task name."""
    tasks = parse_tasks(tasks)
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be positive (a count of items, or a fraction below 1), got {limit}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, got {batch_size}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UsageError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    lm_eval, HFLM, TaskManager = _lm_eval()
    model = str(model)
    # lm-eval's own task list takes seconds to index: only when a task is not one of ours
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=not set(tasks) <= set(LOCAL_TASKS))
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise UsageError(
            f"unknown lm-eval task {unknown[0]!r}; the offline tasks shipped here: "
            f"{', '.join(LOCAL_TASKS)} (`lm-eval ls tasks` lists the rest)"
        )
    loaded = load_causal_lm(model)  # checks the stored epsilons against the loaded ones
    writable_dir(eval_dir(model, out))  # once the model is known to exist: a typo creates nothing
    if torch.cuda.is_available():
        loaded = loaded.cuda()
    epsilons = epsilon_values(loaded)
    lm = HFLM(pretrained=loaded, tokenizer=load_tokenizer(model), batch_size=batch_size)
    if lm.model is not loaded:
        raise EvaluationError("lm-eval did not evaluate the model object it was given")
    with quiet_git_hash():  # lm-eval asks git for a commit hash: outside a checkout git prints "fatal: ..."
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=True,  # per-item outcomes: models compared on the same items, paired
            bootstrap_iters=1000,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if epsilon_values(lm.model) != epsilons:
        raise EvaluationError("the model's epsilons changed during the benchmark")
    written = {}
    samples = results.get("n-samples", {})
    for task, entry in results["results"].items():
        result = {
            "model": model,
            "task": task,
            "weights": weights_stamp(model),
            "num_fewshot": num_fewshot,
            "limit": limit,
            "n": samples.get(task, {}).get("effective"),
            "metrics": _metrics(entry),
            "items": per_item(results.get("samples", {}).get(task, []), _metrics(entry)),
            "epsilons": epsilons,
            "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else None,
        }
        write_json(BENCHMARK.file(model, out, BENCHMARK.label_of(task=task)), result)
        written[task] = result
    return written


def per_item(samples: list[dict], metrics: dict) -> dict | None:
    """Each item's outcome on every metric lm-eval scores per item, in ``doc_id`` order:
    ``{"doc_id": [...], "acc": [...]}`` (None when lm-eval logged no samples)."""
    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    items = {"doc_id": [s["doc_id"] for s in ordered]}
    for name in metrics:
        values = [s.get(name) for s in ordered]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            items[name] = [float(v) for v in values]
    return items


def paired_items(a: dict, b: dict, metric: str) -> tuple[list[float], list[float]] | None:
    """Two benchmark results' per-item outcomes on ``metric``, item by item, when both were
    scored on the same items; None otherwise (an older result without items, another limit)."""
    first, second = a.get("items") or {}, b.get("items") or {}
    if metric not in first or metric not in second or first["doc_id"] != second["doc_id"]:
        return None
    return first[metric], second[metric]


def headline(result: dict) -> tuple[str, dict] | None:
    """The metric a table shows for a task: ``acc`` when there is one, else the first."""
    metrics = result.get("metrics", {})
    for name in ("acc", "acc_norm", "exact_match"):
        if name in metrics:
            return name, metrics[name]
    return next(iter(metrics.items()), None)
