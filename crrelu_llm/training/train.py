"""Patch a pretrained causal LM, then SFT, DPO or distil it with TRL: the run behind ``sft``/``dpo``/``distill``.

    crrelu-llm sft --config recipes/gpt2-large/hh/sft.yaml --arm crrelu
    crrelu-llm dpo --config recipes/gpt2-large/hh/dpo.yaml --arm crrelu --beta 0.2 --output_dir runs/b0.2
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml -m crrelu_llm.cli dpo --config ...

From Python, :func:`run` takes the parsed recipe (:func:`crrelu_llm.training.config.parse_recipe`) and
:func:`run_keys` takes a mapping of recipe keys. The steps, in order (:func:`prepare`): data
(a bad row stops the run before a model loads), tokenizer, model, the recipe's patch
(:mod:`crrelu_llm.training.model_utils`), the eps mode, the DPO reference, PEFT, the trainer
(:mod:`crrelu_llm.training.trainer`); then (:func:`run`) train, resuming from the last complete
checkpoint, evaluate, save, and write the model card.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from transformers.trainer_utils import get_last_checkpoint

from crrelu_llm.data.encoding import check_chat_template
from crrelu_llm.data.preference import DataArguments, load_preference_splits
from crrelu_llm.data.sft import load_sft_splits
from crrelu_llm.errors import Interrupted, OutputExistsError, RecipeError
from crrelu_llm.files import check_writable, writable_dir, write_directory_atomic, write_json, write_text_atomic
from crrelu_llm.ops import kernels
from crrelu_llm.ops.distributed import use_vector_epsilons
from crrelu_llm.patching.calibration import calibration_pairs
from crrelu_llm.patching.loading import is_adapter_run, load_adapter_run, load_causal_lm, load_tokenizer
from crrelu_llm.patching.patch import activation_logs, peft_modules_to_save
from crrelu_llm.patching.record import patch_record
from crrelu_llm.patching.trust import trusting
from crrelu_llm.runtime import deepspeed_zero3_enabled
from crrelu_llm.training.config import CALIBRATE, CRReLUArguments
from crrelu_llm.training.model_card import model_card
from crrelu_llm.training.model_utils import apply_epsilon_mode, apply_recipe_patch, build_reference
from crrelu_llm.training.objectives import (
    PREFERENCE_OBJECTIVES,
    REFERENCE_FREE,
    TRAINERS,
    UNPAIRED,
    reference_free_info,
    unpaired,
)
from crrelu_llm.training.process_group import leave_process_group
from crrelu_llm.training.recipes import BOOKKEEPING_KEYS, parse_recipe, recipe_from_dict, resolved_recipe
from crrelu_llm.training.recovery import SwapScheduleCallback, blend_in, original_activations
from crrelu_llm.training.trainer import RankConsistencyCallback

logger = logging.getLogger("crrelu_llm.train")

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "pytorch_model.bin.index.json")


def _complete(checkpoint: Path) -> bool:
    return (checkpoint / "trainer_state.json").exists() and any((checkpoint / w).exists() for w in _WEIGHTS)


def last_complete_checkpoint(output_dir: Path, main_process: bool = True) -> str | None:
    """transformers' ``get_last_checkpoint``, skipping checkpoints a kill left half-written: such
    a ``checkpoint-N`` (no weights or no trainer state) is renamed ``checkpoint-N.incomplete``
    by the main process (kept for inspection, ignored by the Trainer) and the one before it is used."""
    while (checkpoint := get_last_checkpoint(str(output_dir))) is not None:
        checkpoint = Path(checkpoint)
        if _complete(checkpoint):
            return str(checkpoint)
        if not main_process:
            return None
        aside = checkpoint.with_name(f"{checkpoint.name}.incomplete")
        logger.warning("%s is incomplete (interrupted while saving): moved to %s", checkpoint, aside.name)
        if aside.exists():
            shutil.rmtree(aside)
        checkpoint.rename(aside)
    return None


def claim_output_dir(output_dir: Path, recipe: dict, overwrite: bool) -> None:
    """Refuse, before anything is written, an ``output_dir`` that holds a different run (its
    ``recipe.yaml`` differs beyond bookkeeping keys, or it holds a model or checkpoints without
    one); with ``overwrite`` its contents are removed instead. The same run resumes."""
    recorded_file = output_dir / "recipe.yaml"
    if recorded_file.exists():
        recorded = yaml.safe_load(recorded_file.read_text()) or {}
        if "epsilon_learning_rate" in recorded:  # a run recorded before the key was renamed
            recorded.setdefault("activation_learning_rate", recorded.pop("epsilon_learning_rate"))
        now = yaml.safe_load(yaml.safe_dump(recipe))  # compare as recorded (YAML types)
        changed = sorted(k for k in set(recorded) | set(now)
                         if k not in BOOKKEEPING_KEYS and recorded.get(k) != now.get(k))
        if not changed:
            return
        what = ", ".join(f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        what += f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    elif any(output_dir.glob("checkpoint-*")) or (output_dir / "final_metrics.json").exists():
        what = "a model or checkpoints but no recipe.yaml to compare with"
    else:
        return
    if not overwrite:
        raise OutputExistsError(f"{output_dir} holds a different run ({what}): pass --overwrite_output_dir true to "
                                "replace it, or choose another --output_dir")
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        logger.warning("overwrite_output_dir: removing the different run in %s (%s)", output_dir, what)
        for item in output_dir.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    state.wait_for_everyone()


def training_splits(command: str, data_args: DataArguments):
    """(train, eval, summary) of a training command's data: preference pairs for DPO, SimPO and
    ORPO, the same pairs unpaired for KTO, SFT rows for SFT and distillation."""
    if command not in PREFERENCE_OBJECTIVES:
        return load_sft_splits(data_args)
    train, evaluation, summary = load_preference_splits(data_args)
    if command in UNPAIRED:
        train, evaluation = unpaired(train), unpaired(evaluation)
        summary["unpaired"] = "each pair as a desirable (chosen) and an undesirable (rejected) example"
    return train, evaluation, summary


def patch_for_training(model, crrelu_args: CRReLUArguments, model_args, tokenizer, train_data) -> dict | None:
    """Patch ``model`` as a training run of this recipe does (the patch report, or None for the
    baseline); ``epsilon_init: calibrate`` calibrates on the run's own first training rows. The
    one path from a recipe to a patched model: training stages and an experiment's step 0 use it."""
    pairs = calibration_pairs(train_data, crrelu_args.calibration_samples) if crrelu_args.epsilon_init == CALIBRATE \
        else None
    return apply_recipe_patch(model, crrelu_args, model_args.model_name_or_path, tokenizer, pairs)


# What the model a run starts training from depends on (what write_patched_start reads): the model
# and its loading, the patch, and the data (calibration reads its rows). An optimiser setting is
# not among them: changing one retrains, but leaves the step-0 model as it is.
START_MODEL_KEYS = frozenset({"model_name_or_path", "model_revision", "dtype", "trust_remote_code", "seed"}
                             | {f.name for f in dataclasses.fields(CRReLUArguments)
                                if f.name not in ("epsilon_mode", "reference", "overwrite_output_dir", "crrelu_kernel")}
                             | {f.name for f in dataclasses.fields(DataArguments)})


def start_keys(keys: dict) -> dict:
    """The part of a training stage's ``keys`` that its starting model depends on."""
    return {k: v for k, v in keys.items() if k in START_MODEL_KEYS}


def write_patched_start(command: str, keys: dict, out: Path) -> dict | None:
    """Write to ``out`` the model a ``command`` run with ``keys`` starts training from: loaded and
    patched exactly as :func:`prepare` does, with its tokenizer and ``patch_report.json``. An
    experiment's step-0 model, so that what it measures is what its arm trains."""
    crrelu_args, data_args, training_args, model_args = recipe_from_dict(command, {**keys, "output_dir": str(out)})
    train_data, _, _ = training_splits(command, data_args)
    tokenizer = load_tokenizer(crrelu_args.tokenizer_name_or_path or model_args.model_name_or_path,
                               getattr(training_args, "trust_remote_code", False))
    model = load_causal_lm(model_args.model_name_or_path, dtype=model_args.dtype or "auto",
                           trust_remote_code=getattr(training_args, "trust_remote_code", False),
                           seed=training_args.seed)
    report = patch_for_training(model, crrelu_args, model_args, tokenizer, train_data)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "patch_report.json", report)

    write_directory_atomic(out, True, write)
    return report


@dataclass
class PreparedRun:
    trainer: object
    tokenizer: object
    output_dir: Path
    data_summary: dict
    patch_report: dict | None
    reference_info: dict | None


def prepare(
    command: str, crrelu_args: CRReLUArguments, data_args: DataArguments, training_args, model_args, callbacks=None
) -> PreparedRun:
    """Data, tokenizer, model (patched per the recipe), reference and trainer; nothing trained yet."""
    kernels.set_kernel(crrelu_args.crrelu_kernel)
    output_dir = check_writable(Path(training_args.output_dir), "output_dir")  # created once the inputs are good
    recipe = resolved_recipe(crrelu_args, data_args, training_args, model_args)
    claim_output_dir(output_dir, recipe, crrelu_args.overwrite_output_dir)

    # data first: a bad row should stop the run before a model is downloaded
    train_data, eval_data, data_summary = training_splits(command, data_args)

    tokenizer = load_tokenizer(
        crrelu_args.tokenizer_name_or_path or model_args.model_name_or_path,
        getattr(training_args, "trust_remote_code", False),
    )

    if len(train_data) and not getattr(training_args, "chat_template_path", None):
        fix = (
            "set chat_template_path to a Jinja template file (or to a tokenizer that has one)"
            if hasattr(training_args, "chat_template_path")
            else "set tokenizer_name_or_path to a tokenizer that has one"
        )
        check_chat_template(
            train_data[0],
            tokenizer,
            crrelu_args.tokenizer_name_or_path or model_args.model_name_or_path,
            str(data_summary.get("source")),
            fix,
        )

    continuing = crrelu_args.continue_adapter
    if continuing and not (is_adapter_run(model_args.model_name_or_path) and model_args.use_peft):
        raise RecipeError(
            "continue_adapter: true trains a LoRA run's adapter further: it needs model_name_or_path "
            "to be a LoRA run (a directory with adapter_config.json) and use_peft: true"
        )

    def load_model():
        if continuing:  # the run's own adapter, trainable, on its patched base
            return load_adapter_run(
                Path(model_args.model_name_or_path),
                dtype=model_args.dtype or "auto",
                trust_remote_code=getattr(training_args, "trust_remote_code", False),
                merge=False,
                trainable=True,
            )
        return load_causal_lm(
            model_args.model_name_or_path,
            dtype=model_args.dtype or "auto",
            trust_remote_code=getattr(training_args, "trust_remote_code", False),
            seed=training_args.seed,
        )

    # Under ZeRO-3 the parameters are partitioned as they load, and a deepcopy of such a model
    # is not a working model: copies are loaded again instead (same source, seed and patch).
    zero3 = deepspeed_zero3_enabled()
    model = load_model()
    original = None
    with_reference = command in PREFERENCE_OBJECTIVES and command not in REFERENCE_FREE
    if (with_reference and crrelu_args.reference == "original") or (
        command == "distill" and not training_args.teacher_model_name_or_path
    ):
        original = load_model() if zero3 else copy.deepcopy(model)
    originals = original_activations(model) if crrelu_args.swap_steps else {}
    if continuing:  # the adapter's base is patched as its run recorded; its eps are the adapter's
        record = patch_record(model) or {"modules": {}}
        patch_report = {
            "already_patched": True,
            "activation": crrelu_args.activation,
            "count": len(record["modules"]),
            "layers": None,
            "modules": record["modules"],
            "epsilon": activation_logs(model),
            "continued_adapter": model_args.model_name_or_path,
        }
    else:
        patch_report = patch_for_training(model, crrelu_args, model_args, tokenizer, train_data)
    callbacks = list(callbacks or [])
    if originals and patch_report and not patch_report.get("already_patched"):
        blended = blend_in(model, originals)
        callbacks.insert(0, SwapScheduleCallback(crrelu_args.swap_steps))  # before any callback that reads alpha
        logger.info("gradual swap: %d module(s) blended in over the first %d steps", blended, crrelu_args.swap_steps)
    apply_epsilon_mode(model, crrelu_args.epsilon_mode)
    deepspeed = training_args.deepspeed_plugin is not None
    if deepspeed:  # DeepSpeed cannot broadcast 0-dim parameters: hold the epsilons as (1,)
        use_vector_epsilons(model)

    trainer_kwargs = {}
    reference_info = None
    if command == "distill":
        teacher = training_args.teacher_model_name_or_path
        trainer_kwargs["teacher"] = (
            original
            if not teacher
            else load_causal_lm(
                teacher,
                dtype=model_args.dtype or "auto",
                trust_remote_code=getattr(training_args, "trust_remote_code", False),
            )
        )
        if patch_record(trainer_kwargs["teacher"]):
            raise RecipeError(
                f"the distillation teacher ({teacher or model_args.model_name_or_path}) is already patched: "
                "distil from the original model (set teacher_model_name_or_path)"
            )
    if command in REFERENCE_FREE:
        reference_info = reference_free_info(command)
        logger.info("%s: %s", command, reference_info["source"])
    if with_reference:

        def policy_copy():
            if continuing:  # the policy at the start is the run's adapter merged: a plain model for TRL
                return load_causal_lm(model_args.model_name_or_path, dtype=model_args.dtype or "auto")
            if not zero3:
                return copy.deepcopy(model)
            fresh = load_model()
            apply_recipe_patch(fresh, crrelu_args, model_args.model_name_or_path)
            return fresh

        ref, reference_info = build_reference(crrelu_args.reference, policy_copy, original, model_args)
        if deepspeed:
            use_vector_epsilons(ref)
        reference_info["precompute_ref_log_probs"] = training_args.precompute_ref_log_probs
        reference_info["peft"] = bool(model_args.use_peft)
        trainer_kwargs["ref_model"] = ref  # always explicit: TRL's implicit choices differ by setting
        logger.info("%s reference: %s", command.upper(), reference_info["source"])

    if model_args.use_peft and not continuing:
        from peft import get_peft_model
        from trl import get_peft_config

        targets = model_args.lora_target_modules
        if isinstance(targets, str) and targets != "all-linear" and re.fullmatch(r"[\w.]+", targets):
            # TRL's ModelConfig turns a one-element list into a string, which PEFT reads as a regex
            # that must match the whole module path: `[c_attn]` would then target nothing.
            model_args.lora_target_modules = [targets]
        peft_config = get_peft_config(model_args)
        extra = peft_modules_to_save(model) if crrelu_args.epsilon_mode != "freeze" else []
        peft_config.modules_to_save = list(peft_config.modules_to_save or []) + extra
        model = get_peft_model(model, peft_config)

    trainer = TRAINERS[command](
        model=model,
        args=training_args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        data_source=str(data_summary.get("source", "")),
        callbacks=[RankConsistencyCallback(output_dir), *callbacks],
        **trainer_kwargs,
    )

    # the trainer has tokenized and cut every split (an emptied one was refused): what reaches it is counted
    if hasattr(trainer, "data_accounting"):
        data_summary["splits"] = trainer.data_accounting
    else:  # SimPO, ORPO, KTO: TRL's trainers tokenize and cut by their own rules, not counted row by row here
        data_summary["truncation"] = f"{type(trainer).__bases__[-1].__name__}'s own (max_length), not counted per row"
    writable_dir(output_dir, "output_dir")  # only now: a refused run leaves nothing behind
    if trainer.is_world_process_zero():
        from crrelu_llm.data.accounting import line

        for split, counts in data_summary.get("splits", {}).items():
            print(line(split, counts), flush=True)
        write_text_atomic(output_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=True))
        write_json(output_dir / "patch_report.json", patch_report)
        write_json(output_dir / "data_summary.json", data_summary)
        if reference_info:
            write_json(output_dir / "reference.json", reference_info)
    return PreparedRun(trainer, tokenizer, output_dir, data_summary, patch_report, reference_info)


def run(
    command: str, crrelu_args: CRReLUArguments, data_args: DataArguments, training_args, model_args, callbacks=None
) -> dict:
    """Prepare, train (resuming from the last checkpoint in output_dir), evaluate, save. A run
    that finished in output_dir (``final_metrics.json``) with the same recipe is left as it is."""
    start = time.time()
    finished = Path(training_args.output_dir) / "final_metrics.json"
    if finished.exists() and training_args.resume_from_checkpoint is None:
        # a different recipe is refused (or, asked to, cleared); the same one has nothing left to do
        claim_output_dir(finished.parent, resolved_recipe(crrelu_args, data_args, training_args, model_args),
                         crrelu_args.overwrite_output_dir)
        if finished.exists():
            print(f"{command}: {finished.parent} holds this run, finished; nothing to do (its files are kept: "
                  "choose another --output_dir to train it again)", flush=True)
            return json.loads(finished.read_text())
    prepared = prepare(command, crrelu_args, data_args, training_args, model_args, callbacks)
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
    trainer.save_model(str(output_dir))
    trainer.save_state()  # trainer_state.json (log history, epsilon per step) beside the model
    if trainer.is_world_process_zero():
        prepared.tokenizer.save_pretrained(output_dir)
        card = model_card(
            command,
            model_args,
            crrelu_args,
            prepared.data_summary,
            prepared.patch_report,
            prepared.reference_info,
            metrics,
        )
        write_text_atomic(output_dir / "README.md", card)
        write_json(output_dir / "final_metrics.json", metrics)
        accuracy = metrics.get("eval_rewards/accuracies")
        print(
            f"{command} done: {trainer.state.global_step} steps in {time.time() - start:.1f}s"
            + (f", eval reward accuracy {accuracy:.3f}" if accuracy is not None else "")
            + (f", eval loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else "")
            + "".join(f", {name} in [{eps[name + '/min']:.4g}, {eps[name + '/max']:.4g}]"
                      for name in sorted({k.split("/")[0] for k in eps}))
            + f" -> {output_dir}",
            flush=True,
        )
    trainer.accelerator.free_memory()  # drops accelerate's references (a DeepSpeed engine is destroyed)
    return metrics


def run_keys(command: str, keys: dict, source: str = "recipe") -> dict:
    """Run ``sft``/``dpo`` in this process from a mapping of recipe keys (an experiment stage's);
    the keys are checked as a recipe file's are. Returns the final metrics."""
    args = recipe_from_dict(command, keys, source=source)
    with trusting(activations=[args[0].activation]):  # the class the recipe itself names
        return run(command, *args)


def resume_hint(output_dir: Path) -> str:
    """Where an interrupted run stands, in one sentence."""
    complete = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.name[11:].isdigit() and _complete(p)),
                      key=lambda p: int(p.name[11:]))
    if not complete:
        return f"no checkpoint was saved in {output_dir} yet; rerunning starts it again"
    return f"the last checkpoint is {complete[-1]}; rerunning the same command resumes from it"


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

