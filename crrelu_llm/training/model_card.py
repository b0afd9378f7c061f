"""The model card (``README.md``) every training run writes beside its weights, and pushes to the
Hub with them: the Hub's metadata (``base_model``, ``datasets``, ``license`` where the base model's
card says it, ``tags``, the run's evaluation metrics as a ``model-index``, through huggingface_hub's
``ModelCardData``), then what the run was and how to load it."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from crrelu_llm import run_files
from crrelu_llm.training.objectives import OBJECTIVES

logger = logging.getLogger("crrelu_llm.train")

# what a trainer logs about its own speed, not about the model
_NOT_RESULTS = ("runtime", "per_second", "epoch")


def model_card(
    command, model_args, patch_args, data_summary, patch_report, reference_info, metrics, name=None, online=False
) -> str:
    """The card of a finished run; ``online`` (a run that pushes) may read the base model's card on
    the Hub for its license."""
    patch = (
        "none (baseline arm)"
        if patch_report is None
        else f"{patch_args.activation}, {patch_report['count']} modules, kept from the checkpoint (already patched)"
        if patch_report.get("already_patched")
        else f"{patch_report['count']} x {patch_report['replaced'][0]['old_type']} -> {patch_args.activation}"
        + (f" {patch_args.activation_kwargs}" if patch_args.activation_kwargs else "")
        + (f", epsilon_init {patch_args.epsilon_init}" if patch_args.activation == "crrelu" else "")
        + (
            ""
            if patch_report.get("already_patched")
            else f", blocks {patch_report['layers']}"
            if patch_report["layers"] is not None
            else ", all blocks"
        )
    )
    lines = [
        metadata(command, model_args.model_name_or_path, patch_args, data_summary, metrics, name, online),
        "",
        f"# {command.upper()} run of crrelu-llm",
        "",
        f"- Base model: `{model_args.model_name_or_path}`"
        + _adapter_note(model_args.model_name_or_path, getattr(patch_args, "continue_adapter", False)),
        f"- Trainer: TRL's {OBJECTIVES[command].trl_trainer}",
        f"- Patch: {patch}",
        f"- Data: {data_summary.get('source')} ({data_summary.get('format')}), "
        f"{data_summary.get('train_rows')} training "
        f"/ {data_summary.get('eval_rows')} evaluation rows",
    ]
    for split, counts in (data_summary.get("splits") or {}).items():
        reach = counts.get("reach_training", counts.get("reach_evaluation"))
        lines.append(
            f"- {split} split: {counts['rows']} {counts['unit']}s, {counts['dropped_by_length']} dropped by "
            f"the length rule, {counts['prompt_cut']} prompts and {counts['response_cut']} responses cut"
            + (f" ({counts['rule']})" if counts.get("rule") else "")
            + f", {reach} used"
        )
    if reference_info:
        lines.append(f"- Reference model: {reference_info['source']}")
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += [
        "",
        "Files: `recipe.yaml` (resolved recipe), `patch_report.json`, `reference.json` (preference runs), "
        "`final_metrics.json`.",
        "",
    ]
    if patch_report is not None:
        lines += LOADING
    return "\n".join(lines) + "\n"


def metadata(command, base, patch_args, data_summary, metrics, name=None, online=False) -> str:
    """The card's YAML header, as the Hub reads it."""
    from huggingface_hub import EvalResult, ModelCardData

    origin = base_model_id(base)
    source = str(data_summary.get("source") or "")
    dataset = source if source and is_hub_id(source) else None
    results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=dataset or "local",
            dataset_name=dataset or (Path(source).name or "local data"),
            dataset_split="evaluation split",
            metric_type=key,
            metric_name=key,
            metric_value=value,
        )
        for key, value in sorted(metrics.items())
        if key.startswith("eval_") and isinstance(value, (int, float)) and not any(w in key for w in _NOT_RESULTS)
    ]
    data = ModelCardData(
        base_model=origin,
        datasets=[dataset] if dataset else None,
        license=base_license(base, online),
        library_name="transformers",
        tags=["crrelu-llm", command, "trl", patch_args.activation or "baseline"],
        model_name=name or f"crrelu-llm-{command}",
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---"


def is_hub_id(name: str) -> bool:
    """A name the Hub would read as a repository: not a local path, not a built-in tiny model."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from crrelu_llm.patching.tiny import tiny_model_type

    if Path(name).exists() or tiny_model_type(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def card_header(folder: Path) -> dict:
    """The YAML header of a local model card (``README.md``), or {}."""
    try:
        text = (Path(folder) / "README.md").read_text()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    try:
        header = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return {}
    return header if isinstance(header, dict) else {}


def _first(value):
    return value[0] if isinstance(value, list) and value else value


def lineage(base: str, depth: int = 8):
    """The models a run descends from, itself first: a local run's ``recipe.yaml`` names the model
    it started from, and so on until a hub id, a tiny model or a checkpoint that is no run."""
    for _ in range(depth):
        yield base
        try:
            base = yaml.safe_load((Path(base) / run_files.RECIPE).read_text())["model_name_or_path"]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return


def base_model_id(base: str) -> str | None:
    """The Hub model a run descends from: the first hub id along its lineage, or the ``base_model``
    a local card there names; None when the chain ends off the Hub (a tiny model, a local original)."""
    for model in lineage(base):
        named = model if is_hub_id(model) else _first(card_header(Path(model)).get("base_model"))
        if named:
            return named
    return None


def base_license(base: str, online: bool = False) -> str | None:
    """The license a local card along the lineage states, else (``online``) the Hub card's of the
    base model; None when unknown."""
    for model in lineage(base):
        if card_header(Path(model)).get("license"):
            return card_header(Path(model))["license"]
    origin = base_model_id(base)
    if not (online and origin):
        return None
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(origin).data.license
    except Exception as err:  # the license is said when known; an unreachable card leaves it out
        logger.warning("the license of %s could not be read from the Hub (%s): the card names none", origin, err)
        return None


def _adapter_note(model, continued: bool = False) -> str:
    from crrelu_llm.patching.loading import adapter_base, is_adapter_run

    if not is_adapter_run(model):
        return ""
    from pathlib import Path

    base = adapter_base(Path(model))[0]
    if continued:
        return f" (a LoRA run: this run trained its adapter further, on its base `{base}`)"
    return (
        f" (a LoRA run: this run started from its adapter merged into its base `{base}`, and trained new "
        "weights from there)"
    )


LOADING = [
    "## Loading and serving",
    "",
    "This model's MLP activation is not the base model's, so the base architecture's code alone does not build it.",
    "",
    "- With crrelu-llm: `import crrelu_llm`, then `AutoModelForCausalLM.from_pretrained(path)`.",
    "- Without it: `crrelu-llm export PATH --out SHARED` writes a copy with `modeling_crrelu.py`; load "
    "that with `AutoModelForCausalLM.from_pretrained(SHARED, trust_remote_code=True)` (only transformers and torch).",
    "- Plain transformers without either refuses it when the config names the activation (`crrelu` is not a "
    "transformers activation); see the crrelu-llm README for the cases a config cannot express.",
    "- Serving: what runs transformers' own modeling code can serve it (transformers `pipeline` and `generate`, "
    "lm-evaluation-harness's `hf` model; engines' transformers-backend modes may, untested). Engines with their own "
    "implementation of the base architecture (vLLM's native models, llama.cpp/GGUF, TensorRT-LLM, MLC) build their "
    "own activation and would run the original one: do not serve it there.",
]
