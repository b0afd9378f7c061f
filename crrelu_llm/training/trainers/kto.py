"""KTO (Ethayarajh et al. 2024): TRL's ``KTOConfig`` and ``KTOTrainer`` on unpaired data: each pair
becomes a desirable and an undesirable example (TRL's ``unpair_preference_dataset``, see
:func:`crrelu_llm.training.objectives.unpaired`). It has a reference model, chosen with the
``reference`` key as for DPO. The activation parameters are looked after as in DPO
(:class:`~crrelu_llm.training.mixins.ActivationParameterMixin`). TRL's trainer tokenizes and
truncates with its own rules (``max_length``, and ``max_prompt_length`` where it has it), which this
project does not count row by row as it does for DPO and SFT. The ``kto`` row of
:data:`~crrelu_llm.training.objectives.OBJECTIVES` names both classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import KTOConfig, KTOTrainer

from crrelu_llm.errors import RecipeError
from crrelu_llm.training.config import ActivationParameterArguments
from crrelu_llm.training.mixins import ActivationParameterMixin, PolicyReferenceMixin, ProjectCardMixin


@dataclass
class CRReLUKTOConfig(ActivationParameterArguments, KTOConfig):
    """TRL's ``KTOConfig`` plus the activation-parameter settings."""

    def __post_init__(self):
        if self.loss_type == "kto" and self.per_device_train_batch_size < 2:
            raise RecipeError(
                "KTO estimates its KL term from the other examples of a batch: set "
                "per_device_train_batch_size to 2 or more (or loss_type: apo_zero_unpaired)"
            )
        super().__post_init__()


class CRReLUKTOTrainer(ProjectCardMixin, PolicyReferenceMixin, ActivationParameterMixin, KTOTrainer):
    """TRL's ``KTOTrainer`` with the activation parameters looked after."""
