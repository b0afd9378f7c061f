"""The table of training objectives: one row per command (``crrelu-llm sft|dpo|simpo|orpo|kto|distill``).

:data:`OBJECTIVES` is the one place a command is mapped to its recipe config and trainer, its
data, whether it has a reference model, and what the help and the model card say of it. The
CLI builds its commands and help from it, the recipe parser its dataclasses, the training run
its data, reference and trainer, the experiment runner its preference stages. The classes are
named by import path and imported when first asked for, so reading the table (the CLI's
``--help``) imports no TRL.

Example::

    >>> from crrelu_llm.training.objectives import OBJECTIVES
    >>> OBJECTIVES["simpo"].reference, OBJECTIVES["kto"].data
    (False, 'unpaired')
    >>> OBJECTIVES["dpo"].trainer.__name__
    'CRReLUDPOTrainer'
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    """One training command: what it trains with, on what data, and against which reference.
    The one place a command is mapped to its config and trainer; the CLI's commands and help,
    the recipe parser, the training run, the model card and the experiment runner read it."""

    name: str  # the command: crrelu-llm <name>
    label: str  # how reports and messages name the objective
    config_path: str  # module:Class of the recipe's training arguments (TRL's config plus this project's keys)
    trainer_path: str  # module:Class of TRL's trainer with the activation parameters looked after
    trl_trainer: str  # the TRL trainer behind it, as help and the model card name it
    trains: str  # what the command does after the patch, for its one-line help
    data: str  # "preference" (pairs), "unpaired" (pairs as KTO's examples) or "sft" (rows)
    reference: bool  # whether the loss compares with a reference model

    @property
    def summary(self) -> str:
        """The command's one-line help."""
        return f"Patch per a recipe, then {self.trains}"

    @property
    def config(self) -> type:
        return _load(self.config_path)

    @property
    def trainer(self) -> type:
        return _load(self.trainer_path)

    @property
    def preference(self) -> bool:
        """Trains on preference data (a preference stage of an experiment)."""
        return self.data in ("preference", "unpaired")

    @property
    def trl_config(self) -> str:
        """The TRL config the recipe extends (``DPOConfig``, ``CPOConfig``...)."""
        return next(c.__name__ for c in self.config.__mro__ if c.__module__.startswith("trl."))

    @property
    def truncation(self) -> str:
        """What data_summary.json says of truncation where the trainer does not count rows (TRL's
        own SimPO, ORPO and KTO trainers; this project's count each row it cuts)."""
        return f"{self.trl_trainer.split()[0]}'s own (max_length), not counted per row"


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_T = "crrelu_llm.training.trainers"  # one module per objective: its config beside its trainer

OBJECTIVES = {
    o.name: o
    for o in (
        Objective(
            "sft",
            "SFT",
            f"{_T}.sft:CRReLUSFTConfig",
            f"{_T}.sft:CRReLUSFTTrainer",
            "SFTTrainer",
            "supervised fine-tuning (TRL's SFTTrainer).",
            data="sft",
            reference=False,
        ),
        Objective(
            "dpo",
            "DPO",
            f"{_T}.dpo:CRReLUDPOConfig",
            f"{_T}.dpo:CRReLUDPOTrainer",
            "DPOTrainer",
            "preference tuning (TRL's DPOTrainer).",
            data="preference",
            reference=True,
        ),
        Objective(
            "simpo",
            "SimPO",
            f"{_T}.simpo:CRReLUSimPOConfig",
            f"{_T}.simpo:CRReLUSimPOTrainer",
            "CPOTrainer with loss_type simpo",
            "SimPO (TRL's CPOTrainer, loss_type simpo; no reference model).",
            data="preference",
            reference=False,
        ),
        Objective(
            "orpo",
            "ORPO",
            f"{_T}.orpo:CRReLUORPOConfig",
            f"{_T}.orpo:CRReLUORPOTrainer",
            "ORPOTrainer",
            "ORPO (TRL's ORPOTrainer; no reference model).",
            data="preference",
            reference=False,
        ),
        Objective(
            "kto",
            "KTO",
            f"{_T}.kto:CRReLUKTOConfig",
            f"{_T}.kto:CRReLUKTOTrainer",
            "KTOTrainer",
            "KTO on the pairs unpaired (TRL's KTOTrainer).",
            data="unpaired",
            reference=True,
        ),
        Objective(
            "distill",
            "distillation",
            f"{_T}.distill:CRReLUDistillConfig",
            f"{_T}.distill:CRReLUDistillTrainer",
            "SFTTrainer, distilling the original",
            "distil the original into it (KL on logits, optional MLP MSE).",
            data="sft",
            reference=False,
        ),
    )
}

# Read off the table, for the checks that ask one question of it.
PREFERENCE_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if o.preference)  # preference stages
REFERENCE_FREE = {n: o.label for n, o in OBJECTIVES.items() if o.preference and not o.reference}


def reference_free_info(command: str) -> dict:
    """What ``reference.json`` says of a reference-free objective."""
    return {
        "reference": None,
        "reference_free": True,
        "objective": command,
        "source": f"none: {REFERENCE_FREE[command]}'s loss needs no reference model",
    }


def unpaired(dataset):
    """Preference pairs as KTO's unpaired examples (TRL's ``unpair_preference_dataset``): each
    pair gives its chosen response as desirable (``label: true``) and its rejected one as not."""
    from trl.data_utils import unpair_preference_dataset

    return None if dataset is None else unpair_preference_dataset(dataset)
