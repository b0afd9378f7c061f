"""Evaluation results, one owner: each kind's file name and directory, its reader, and the
estimates it hands to a tracker. Nothing else in the package spells a result's file name: the
evaluation stages write through :meth:`ResultKind.file`, and the report, the experiment and
``compare`` read through :meth:`ResultKind.file`, :meth:`ResultKind.files` and :func:`read`.

A model's results go to ``MODEL/eval/`` (a local model), else ``./eval`` (a hub model), unless
``out`` says where.

Example::

    >>> from crrelu_llm.evaluation.results import BENCHMARK, REWARDS, WINRATE
    >>> REWARDS.file("runs/demo/crrelu/sft", local=True).as_posix()
    'runs/demo/crrelu/sft/eval/rewards.json'
    >>> BENCHMARK.file("gpt2", out="bench", label="arc_easy").as_posix()
    'bench/benchmark-arc_easy.json'
    >>> WINRATE.label_of(judge="rule:arithmetic", baseline="runs/demo/crrelu/sft")
    'rule_arithmetic-vs-crrelu_sft'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from crrelu_llm.errors import ReportError

EVAL = "eval"  # the folder beside a model's weights


def slug(name: str, parts: int = 2) -> str:
    """A file-name-safe label for a model: the last ``parts`` components of its path or hub id."""
    tail = "/".join(Path(str(name).rstrip("/")).parts[-parts:])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tail)[-80:]


def eval_dir(model, out=None, local: bool | None = None) -> Path:
    """``out``, else ``MODEL/eval`` for a local model (``local``: known before it exists, as an
    experiment's models are), else ``./eval``."""
    if out is not None:
        return Path(out)
    local = Path(str(model)).is_dir() if local is None else local
    return Path(str(model)) / EVAL if local else Path(EVAL)


@dataclass(frozen=True)
class ResultKind:
    """One kind of evaluation result: its file name (``{label}`` where a model has one file per
    label: a task, a baseline and judge) and what a tracker is told of it."""

    name: str
    pattern: str

    def file(self, model, out=None, label: str | None = None, local: bool | None = None) -> Path:
        return eval_dir(model, out, local) / self.pattern.format(label=label)

    def files(self, folder) -> list[Path]:
        """Every result of this kind in ``folder``, by name."""
        return sorted(Path(folder).glob(self.pattern.format(label="*")))

    def in_folder(self, folder, label: str | None = None) -> Path:
        return Path(folder) / self.pattern.format(label=label)

    def label_of(self, judge=None, baseline=None, task=None, model=None, template: str | None = None) -> str:
        """The ``{label}`` of a win rate (judge, its template unless the default, and baseline), a
        benchmark (task) or generations and model outputs (model)."""
        from crrelu_llm.evaluation.judges import judge_name

        if self.name == "winrate" or self.name == "judgments":
            shown = "" if template in (None, "default") else f"+{slug(Path(template).stem, 1)}"
            return f"{slug(judge_name(judge), 1)}{shown}-vs-{slug(str(baseline))}"
        return slug(task, 1) if task is not None else slug(str(model))


REWARDS = ResultKind("rewards", "rewards.json")
DRIFT = ResultKind("drift", "drift.json")
PROBE = ResultKind("probe", "probe.json")
WINRATE = ResultKind("winrate", "winrate-{label}.json")
JUDGMENTS = ResultKind("judgments", "judgments-{label}.jsonl")
BENCHMARK = ResultKind("benchmark", "benchmark-{label}.json")
GENERATIONS = ResultKind("generations", "generations-{label}.jsonl")
MODEL_OUTPUTS = ResultKind("model_outputs", "model_outputs-{label}.json")  # AlpacaEval's format


def read(path) -> dict:
    """A result file's JSON; a damaged file is a one-line :class:`~crrelu_llm.errors.ReportError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path} is not valid JSON ({err}): rerun the evaluation that wrote it") from None


def _interval(value, interval, n) -> dict:
    lo, hi = interval if interval else (None, None)
    return {"value": value, "low": lo, "high": hi, "n": n}


def estimates(kind: str, result: dict) -> dict[str, dict]:
    """What a tracker is told of a result: each estimate's value, interval ends and n (``low`` and
    ``high`` None where the result has no interval)."""
    if kind == "rewards":
        out = {"reward_accuracy": _interval(result["accuracy"], result.get("accuracy_interval"), result["n"])}
        for m in result.get("margins_per_evaluation_beta", []):
            out[f"reward_margin_beta{m['beta']:g}"] = _interval(m["margin"], m.get("margin_interval"), result["n"])
        return out
    if kind == "winrate":
        stats = result["stats"]
        e = stats.get("estimate") or {"value": stats["win_rate"], "interval": stats.get("interval")}
        out = {"win_rate": _interval(e["value"], e["interval"], stats["n"])}
        lc = stats.get("length_controlled") or {}
        if lc.get("value") is not None:
            out["win_rate_length_controlled"] = _interval(lc["value"], lc.get("interval"), stats["n"])
        return out
    if kind == "drift":
        n = result.get("examples")
        out = {"kl_to_original": _interval(result["kl_patched_original"], result.get("kl_interval"), n)}
        for side in ("patched", "original"):
            if result.get(f"perplexity_{side}") is not None:
                out[f"perplexity_{side}"] = _interval(result[f"perplexity_{side}"], None, n)
        return out
    if kind == "benchmark":
        out = {}
        for name, metric in result.get("metrics", {}).items():
            se = metric.get("stderr")
            interval = (metric["value"] - 1.96 * se, metric["value"] + 1.96 * se) if se is not None else None
            out[f"{result['task']}/{name}"] = _interval(metric["value"], interval, result.get("n"))
        return out
    if kind == "probe":
        layers = result.get("layers", [])
        out = {}
        # the mechanism's means over layers too (the report's stage rows read them from here)
        for key in ("epsilon", "least_squares_epsilon", "output_small", "entropy_change", "correction_cosine"):
            values = [layer.get(key) for layer in layers if layer.get(key) is not None]
            if values:
                out[f"{key}_mean"] = _interval(sum(values) / len(values), None, len(values))
        return out
    return {}
