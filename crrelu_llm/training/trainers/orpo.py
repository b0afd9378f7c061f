"""ORPO (Hong et al. 2024): TRL's ``ORPOConfig`` and ``ORPOTrainer``: the NLL of the chosen response
plus ``beta`` times the log odds-ratio term; no reference model. The activation parameters are
looked after as in DPO (:class:`~crrelu_llm.training.mixins.ActivationParameterMixin`). ORPO lives
in ``trl.experimental``, whose import warning is silenced here. TRL's trainer tokenizes and
truncates with its own rules (``max_length``, and ``max_prompt_length`` where it has it), which this
project does not count row by row as it does for DPO and SFT. The ``orpo`` row of
:data:`~crrelu_llm.training.objectives.OBJECTIVES` names both classes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from crrelu_llm.training.config import ActivationParameterArguments
from crrelu_llm.training.mixins import ActivationParameterMixin, ProjectCardMixin

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "trl.experimental ... may change or be removed without notice"
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer


@dataclass
class CRReLUORPOConfig(ActivationParameterArguments, ORPOConfig):
    """TRL's ``ORPOConfig`` plus the activation-parameter settings."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "False: what ORPOTrainer's collator needs."})


class CRReLUORPOTrainer(ProjectCardMixin, ActivationParameterMixin, ORPOTrainer):
    """TRL's ``ORPOTrainer`` with the activation parameters looked after."""
