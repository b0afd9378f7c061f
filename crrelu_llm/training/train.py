"""The run behind ``crrelu-llm sft|dpo|simpo|orpo|kto|distill``: patch a pretrained causal LM, then
train it with TRL.

    crrelu-llm sft --config recipes/gpt2-large/hh/sft.yaml --arm crrelu
    crrelu-llm dpo --config recipes/gpt2-large/hh/dpo.yaml --arm crrelu --beta 0.2 --output_dir runs/b0.2
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m crrelu_llm.cli dpo --config ...

:func:`main` parses the recipe (:mod:`~crrelu_llm.training.recipes`) and calls :func:`run`, which
calls :func:`prepare` (data, tokenizer, models from :mod:`~crrelu_llm.training.models`, the
trainer the table :mod:`~crrelu_llm.training.objectives` names), then trains, resuming from the
last complete checkpoint (:mod:`~crrelu_llm.training.output_dir`), evaluates, saves and writes
the model card.

Example::

    >>> from crrelu_llm.training.train import run_keys
    >>> metrics = run_keys("dpo", {"model_name_or_path": "runs/sft", "dataset_name": "pairs.jsonl",
    ...                            "activation": "crrelu", "output_dir": "runs/dpo", "max_steps": 10})  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from crrelu_llm import run_files
from crrelu_llm.data.accounting import line
from crrelu_llm.data.encoding import check_chat_template
from crrelu_llm.data.preference import DataArguments, load_preference_splits
from crrelu_llm.data.sft import load_sft_splits
from crrelu_llm.errors import Interrupted
from crrelu_llm.files import check_writable, writable_dir, write_json, write_text_atomic
from crrelu_llm.ops import kernels
from crrelu_llm.ops.distributed import hold_scalars_as_vectors
from crrelu_llm.patching.patch import activation_logs
from crrelu_llm.patching.trust import trusting
from crrelu_llm.training import models
from crrelu_llm.training.config import PatchArguments
from crrelu_llm.training.mixins import RankConsistencyCallback
from crrelu_llm.training.model_card import model_card
from crrelu_llm.training.objectives import OBJECTIVES, Objective, unpaired
from crrelu_llm.training.output_dir import claim_output_dir, last_complete_checkpoint, resume_hint
from crrelu_llm.training.process_group import leave_process_group
from crrelu_llm.training.recipes import parse_recipe, recipe_from_dict, resolved_recipe

logger = logging.getLogger("crrelu_llm.train")


def training_splits(objective: Objective, data_args: DataArguments):
    """(train, eval, summary) of an objective's data: preference pairs for DPO, SimPO and ORPO,
    the same pairs unpaired for KTO, SFT rows for SFT and distillation."""
    if not objective.preference:
        return load_sft_splits(data_args)
    train, evaluation, summary = load_preference_splits(data_args)
    if objective.data == "unpaired":
        train, evaluation = unpaired(train), unpaired(evaluation)
        summary["unpaired"] = "each pair as a desirable (chosen) and an undesirable (rejected) example"
    return train, evaluation, summary


def check_template(train_data, tokenizer, patch_args, model_args, training_args, data_summary) -> None:
    """Conversational rows need a chat template: refused before any model loads if there is none."""
    if not len(train_data) or getattr(training_args, "chat_template_path", None):
        return
    fix = (
        "set chat_template_path to a Jinja template file (or to a tokenizer that has one)"
        if hasattr(training_args, "chat_template_path")
        else "set tokenizer_name_or_path to a tokenizer that has one"
    )
    check_chat_template(
        train_data[0],
        tokenizer,
        patch_args.tokenizer_name_or_path or model_args.model_name_or_path,
        str(data_summary.get("source")),
        fix,
    )


@dataclass
class PreparedRun:
    trainer: object
    tokenizer: object
    output_dir: Path
    data_summary: dict
    patch_report: dict | None
    reference_info: dict | None


def prepare(
    command: str, patch_args: PatchArguments, data_args: DataArguments, training_args, model_args, callbacks=None
) -> PreparedRun:
    """Data, tokenizer, model (patched per the recipe), reference or teacher, and trainer: the
    run up to ``trainer.train()``. A refused recipe or row leaves nothing behind."""
    objective = OBJECTIVES[command]
    kernels.set_kernel(patch_args.crrelu_kernel)
    output_dir = check_writable(Path(training_args.output_dir), "output_dir")  # created once the inputs are good
    recipe = resolved_recipe(patch_args, data_args, training_args, model_args)
    claim_output_dir(output_dir, recipe, patch_args.overwrite_output_dir)

    # ---- data first: a bad row stops the run before a model is downloaded
    train_data, eval_data, data_summary = training_splits(objective, data_args)

    # ---- tokenizer
    tokenizer = models.load_run_tokenizer(patch_args, model_args, training_args)
    check_template(train_data, tokenizer, patch_args, model_args, training_args, data_summary)

    # ---- the policy, patched per the recipe (the original kept first where the run needs it)
    model = models.load_policy(patch_args, model_args, training_args)
    original = models.unpatched_original(objective, model, patch_args, model_args, training_args)
    originals = models.originals_for_swap(model, patch_args)
    patch_report = models.patch_policy(model, patch_args, model_args, tokenizer, train_data)
    callbacks = [*models.gradual_swap(model, originals, patch_report, patch_args.swap_steps), *(callbacks or [])]
    models.apply_activation_parameter_mode(model, patch_args.activation_parameters)
    if training_args.deepspeed_plugin is not None:  # DeepSpeed cannot broadcast 0-dim parameters: (1,)
        hold_scalars_as_vectors(model)

    # ---- the reference or teacher, then PEFT
    extra_models, reference_info = models.reference_and_teacher(
        objective, model, original, patch_args, model_args, training_args
    )
    model = models.with_peft(model, patch_args, model_args)

    # ---- the trainer: TRL's, as the objectives table names it
    trainer = objective.trainer(
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        data_source=str(data_summary.get("source", "")),
        callbacks=[RankConsistencyCallback(output_dir), *callbacks],
        **extra_models,
    )
    # the trainer has tokenized and cut every split (an emptied one was refused): what reaches it is counted
    if hasattr(trainer, "data_accounting"):
        data_summary["splits"] = trainer.data_accounting
    else:  # SimPO, ORPO, KTO: TRL's trainers tokenize and cut by their own rules
        data_summary["truncation"] = objective.truncation

    writable_dir(output_dir, "output_dir")  # only now: a refused run leaves nothing behind
    if trainer.is_world_process_zero():
        print(models.patch_line(patch_report, model_args.model_name_or_path), flush=True)
        for split, counts in data_summary.get("splits", {}).items():
            print(line(split, counts), flush=True)
        write_text_atomic(output_dir / run_files.RECIPE, yaml.safe_dump(recipe, sort_keys=True))
        write_json(output_dir / run_files.PATCH_REPORT, patch_report)
        write_json(output_dir / run_files.DATA_SUMMARY, data_summary)
        if reference_info:
            write_json(output_dir / run_files.REFERENCE, reference_info)
    return PreparedRun(trainer, tokenizer, output_dir, data_summary, patch_report, reference_info)


def run(
    command: str, patch_args: PatchArguments, data_args: DataArguments, training_args, model_args, callbacks=None
) -> dict:
    """Prepare, train (resuming from the last checkpoint in output_dir), evaluate, save. A run
    that finished in output_dir (``final_metrics.json``) with the same recipe is left as it is."""
    start = time.time()
    finished = Path(training_args.output_dir) / run_files.FINAL_METRICS
    if finished.exists() and training_args.resume_from_checkpoint is None:
        # a different recipe is refused (or, asked to, cleared); the same one has nothing left to do
        claim_output_dir(
            finished.parent,
            resolved_recipe(patch_args, data_args, training_args, model_args),
            patch_args.overwrite_output_dir,
        )
        if finished.exists():
            print(
                f"{command}: {finished.parent} holds this run, finished; nothing to do (its files are kept: "
                "choose another --output_dir to train it again)",
                flush=True,
            )
            return json.loads(finished.read_text())
    prepared = prepare(command, patch_args, data_args, training_args, model_args, callbacks)
    trainer, output_dir = prepared.trainer, prepared.output_dir
    resume = training_args.resume_from_checkpoint
    if resume is None:
        resume = last_complete_checkpoint(output_dir, trainer.is_world_process_zero())
        if resume:
            logger.warning("resuming from %s", resume)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    if trainer.eval_dataset is not None and len(trainer.eval_dataset):
        metrics.update(trainer.evaluate())
    eps = activation_logs(trainer.model)
    metrics.update({f"final_{k}": v for k, v in eps.items()})
    # saved without transformers' push: with push_to_hub the push comes last, once the card is written
    trainer.save_model(str(output_dir), _internal_call=True)
    trainer.save_state()  # trainer_state.json (log history, epsilon per step) beside the model
    if trainer.is_world_process_zero():
        prepared.tokenizer.save_pretrained(output_dir)
        trainer.project_card = model_card(
            command,
            model_args,
            patch_args,
            prepared.data_summary,
            prepared.patch_report,
            prepared.reference_info,
            metrics,
            name=training_args.hub_model_id or output_dir.name,
            online=training_args.push_to_hub,
        )
        write_text_atomic(output_dir / run_files.MODEL_CARD, trainer.project_card)
        write_json(output_dir / run_files.FINAL_METRICS, metrics)
        accuracy = metrics.get("eval_rewards/accuracies")
        print(
            f"{command} done: {trainer.state.global_step} steps in {time.time() - start:.1f}s"
            + (f", eval reward accuracy {accuracy:.3f}" if accuracy is not None else "")
            + (f", eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
            + "".join(
                f", {name} in [{eps[name + '/min']:.4g}, {eps[name + '/max']:.4g}]"
                for name in sorted({k.split("/")[0] for k in eps})
            )
            + f" -> {output_dir}",
            flush=True,
        )
    if training_args.push_to_hub:  # every rank (transformers saves on all), the card and final files written
        trainer.push_to_hub(commit_message="End of training")
    trainer.accelerator.free_memory()  # drops accelerate's references (a DeepSpeed engine is destroyed)
    return metrics


def run_keys(command: str, keys: dict, source: str = "recipe") -> dict:
    """Run ``sft``/``dpo`` in this process from a mapping of recipe keys (an experiment stage's);
    the keys are checked as a recipe file's are. Returns the final metrics."""
    args = recipe_from_dict(command, keys, source=source)
    with trusting(activations=[args[0].activation]):  # the class the recipe itself names
        return run(command, *args)


def main(command: str, argv: list[str]) -> int:
    """``crrelu-llm sft|dpo|simpo|orpo|kto|distill --config RECIPE [--arm NAME] [--key value ...]``."""
    args = parse_recipe(command, argv)
    try:
        with trusting(activations=[args[0].activation]):  # the class the recipe itself names
            run(command, *args)
    except KeyboardInterrupt:
        raise Interrupted(resume_hint(args[2].output_dir)) from None
    leave_process_group()
    return 0
