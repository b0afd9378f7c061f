"""The evaluations an experiment may ask for, and what each computes when the recipe leaves a
setting out: the library functions' own defaults (one owner; ``--plan`` estimates from these
too, the recipe check reads the keys each may hold).
"""

from __future__ import annotations

import inspect

from crrelu_llm.evaluation import evaluate
from crrelu_llm.evaluation.benchmark import run_benchmark
from crrelu_llm.evaluation.generation import GenerationSettings

MODEL_EVALUATIONS = ("drift", "benchmark", "probe")  # per model: the original, step 0, recover, SFT, DPO


def _defaults(function, *names) -> dict:
    parameters = inspect.signature(function).parameters
    return {name: parameters[name].default for name in names}


# betas: the experiment's
EVALUATION_DEFAULTS = {
    "rewards": _defaults(evaluate.run_rewards, "max_samples", "max_length"),
    "winrate": {
        **_defaults(evaluate.run_winrate, "num_prompts", "judge_concurrency", "baseline_outputs", "judge_template"),
        "max_new_tokens": GenerationSettings.max_new_tokens,
        "batch_size": GenerationSettings.batch_size,
        "against_sft": True,
        "prompts": None,  # a prompt set (AlpacaEval's, Arena-Hard's, TRL's prompt-only); default: the data's prompts
        "prompts_format": "auto",
        # served generation (openai:<model>@<base url>); "{model}" in it becomes the directory of
        # the model the stage generates with, the name `vllm serve <directory>` serves it under
        "generate_with": None,
    },
    "drift": _defaults(evaluate.run_drift, "max_samples", "max_length"),
    "benchmark": _defaults(run_benchmark, "limit", "num_fewshot", "batch_size"),
    "probe": _defaults(evaluate.run_probe, "max_samples", "max_length"),
}
EVALUATION_REQUIRED = {"winrate": {"judge"}, "benchmark": {"tasks"}, "rewards": {"betas"}}
EVALUATION_KEYS = {
    kind: set(defaults) | EVALUATION_REQUIRED.get(kind, set()) for kind, defaults in EVALUATION_DEFAULTS.items()
}


def served_spec(template: str | None, model) -> str | None:
    """The ``generate_with`` of one model: ``{model}`` in the recipe's template replaced by its directory."""
    return template.replace("{model}", str(model)) if template else None


def evaluation_settings(exp, kind: str) -> dict:
    settings = {**EVALUATION_DEFAULTS[kind], **exp.evaluations[kind]}
    if kind == "rewards":
        settings.setdefault("betas", exp.betas)
    return settings
