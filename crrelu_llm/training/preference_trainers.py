"""SimPO, ORPO and KTO: TRL's own trainers as the installed TRL has it, each config beside its
trainer, with the activation parameters looked after as in DPO (:class:`ActivationParameterMixin`).

- ``simpo``: ``CPOTrainer`` with ``loss_type="simpo"`` and ``cpo_alpha=0`` (Meng et al. 2024):
  length-normalised log-probabilities, a target margin ``simpo_gamma``; no reference model.
- ``orpo``: ``ORPOTrainer`` (Hong et al. 2024): the NLL of the chosen response plus ``beta``
  times the log odds-ratio term; no reference model.
- ``kto``: ``KTOTrainer`` (Ethayarajh et al. 2024) on unpaired data: each pair becomes a desirable
  and an undesirable example (TRL's ``unpair_preference_dataset``); it has a reference model, chosen
  with the ``reference`` key as for DPO.

CPO and ORPO live in ``trl.experimental``, whose import warning is silenced here. These trainers
tokenize and truncate with their own rules (``max_length``, and ``max_prompt_length`` where
they have it), which this project does not count row by row as it does for DPO and SFT. The
commands that run them are in :data:`crrelu_llm.training.objectives.OBJECTIVES`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from trl import KTOConfig, KTOTrainer

from crrelu_llm.errors import RecipeError
from crrelu_llm.training.config import ActivationParameterArguments
from crrelu_llm.training.trainer import ActivationParameterMixin

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "trl.experimental ... may change or be removed without notice"
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer


@dataclass
class CRReLUSimPOConfig(ActivationParameterArguments, CPOConfig):
    """TRL's ``CPOConfig`` set for SimPO (``loss_type: simpo``, ``cpo_alpha: 0``; beta 2.0 as the
    SimPO paper's range starts), plus the activation-parameter settings."""

    loss_type: str = field(default="simpo", metadata={"help": "simpo (this command trains SimPO)."})
    cpo_alpha: float = field(default=0.0, metadata={"help": "Weight of CPO's NLL term; 0 is SimPO proper."})
    beta: float = field(default=2.0, metadata={"help": "SimPO's reward scale (the paper: 2.0 to 2.5)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "False: what CPOTrainer's collator needs."})

    def __post_init__(self):
        if self.loss_type != "simpo":
            raise RecipeError(f"crrelu-llm simpo trains SimPO: loss_type must be simpo, got {self.loss_type!r} "
                              "(CPO's other losses are DPO variants: use crrelu-llm dpo with its loss_type)")
        super().__post_init__()


class CRReLUSimPOTrainer(ActivationParameterMixin, CPOTrainer):
    """TRL's ``CPOTrainer`` (SimPO loss) with the activation parameters looked after."""


@dataclass
class CRReLUORPOConfig(ActivationParameterArguments, ORPOConfig):
    """TRL's ``ORPOConfig`` plus the activation-parameter settings."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "False: what ORPOTrainer's collator needs."})


class CRReLUORPOTrainer(ActivationParameterMixin, ORPOTrainer):
    """TRL's ``ORPOTrainer`` with the activation parameters looked after."""


@dataclass
class CRReLUKTOConfig(ActivationParameterArguments, KTOConfig):
    """TRL's ``KTOConfig`` plus the activation-parameter settings."""

    def __post_init__(self):
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise RecipeError("KTO estimates its KL term from the other examples of a batch: set "
                              "per_device_train_batch_size to 2 or more (or loss_type: apo_zero_unpaired)")
        super().__post_init__()


class CRReLUKTOTrainer(ActivationParameterMixin, KTOTrainer):
    """TRL's ``KTOTrainer`` with the activation parameters looked after."""
