"""The model card (``README.md``) every training run writes beside its weights."""

from __future__ import annotations

from crrelu_llm.training.objectives import OBJECTIVES


def model_card(command, model_args, patch_args, data_summary, patch_report, reference_info, metrics) -> str:
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
        "---",
        "library_name: transformers",
        "tags: [crrelu-llm, " + command + "]",
        "---",
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
    "- Without it: `crrelu-llm export PATH --out SHARED --remote-code` writes a copy with `modeling_crrelu.py`; load "
    "that with `AutoModelForCausalLM.from_pretrained(SHARED, trust_remote_code=True)` (only transformers and torch).",
    "- Plain transformers without either refuses it when the config names the activation (`crrelu` is not a "
    "transformers activation); see the crrelu-llm README for the cases a config cannot express.",
    "- Serving: what runs transformers' own modeling code can serve it (transformers `pipeline` and `generate`, "
    "lm-evaluation-harness's `hf` model; engines' transformers-backend modes may, untested). Engines with their own "
    "implementation of the base architecture (vLLM's native models, llama.cpp/GGUF, TensorRT-LLM, MLC) build their "
    "own activation and would run the original one: do not serve it there.",
]
