"""A training run's output directory: whose run it holds, where an interrupted run resumes, and
whether it finished. The files' names are :mod:`crrelu_llm.run_files`'.

Example::

    >>> from crrelu_llm.training.output_dir import resume_hint
    >>> resume_hint("runs/never-started")
    'no checkpoint was saved in runs/never-started yet; rerunning starts it again'
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import yaml
from transformers.trainer_utils import get_last_checkpoint

from crrelu_llm import run_files
from crrelu_llm.errors import OutputExistsError
from crrelu_llm.training.recipes import BOOKKEEPING_KEYS, resolve_aliases

logger = logging.getLogger("crrelu_llm.train")

_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint a kill did not cut short: its trainer state and its weights are there."""
    return (checkpoint / "trainer_state.json").exists() and any((checkpoint / w).exists() for w in _WEIGHTS)


def last_complete_checkpoint(output_dir: Path, main_process: bool = True) -> str | None:
    """transformers' ``get_last_checkpoint``, skipping checkpoints a kill left half-written: such
    a ``checkpoint-N`` (no weights or no trainer state) is renamed ``checkpoint-N.incomplete``
    by the main process (kept for inspection, ignored by the Trainer) and the one before it is used."""
    while (checkpoint := get_last_checkpoint(str(output_dir))) is not None:
        checkpoint = Path(checkpoint)
        if is_complete(checkpoint):
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
    recorded_file = output_dir / run_files.RECIPE
    if recorded_file.exists():
        recorded, _ = resolve_aliases(yaml.safe_load(recorded_file.read_text()) or {}, [], str(recorded_file))
        now = yaml.safe_load(yaml.safe_dump(recipe))  # compare as recorded (YAML types)
        changed = sorted(
            k for k in set(recorded) | set(now) if k not in BOOKKEEPING_KEYS and recorded.get(k) != now.get(k)
        )
        if not changed:
            return
        what = ", ".join(f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
        what += f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    elif any(output_dir.glob("checkpoint-*")) or (output_dir / run_files.FINAL_METRICS).exists():
        what = "a model or checkpoints but no recipe.yaml to compare with"
    else:
        return
    if not overwrite:
        raise OutputExistsError(
            f"{output_dir} holds a different run ({what}): pass --overwrite_output_dir true to "
            "replace it, or choose another --output_dir"
        )
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        logger.warning("overwrite_output_dir: removing the different run in %s (%s)", output_dir, what)
        for item in output_dir.iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    state.wait_for_everyone()


def resume_hint(output_dir: Path) -> str:
    """Where an interrupted run stands, in one sentence."""
    complete = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.name[11:].isdigit() and is_complete(p)),
        key=lambda p: int(p.name[11:]),
    )
    if not complete:
        return f"no checkpoint was saved in {output_dir} yet; rerunning starts it again"
    return f"the last checkpoint is {complete[-1]}; rerunning the same command resumes from it"
