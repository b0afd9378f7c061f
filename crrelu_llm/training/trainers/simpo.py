"""SimPO (Meng et al. 2024): TRL's ``CPOConfig`` and ``CPOTrainer`` with ``loss_type="simpo"`` and
``cpo_alpha=0``: length-normalised log-probabilities and a target margin ``simpo_gamma``; no
reference model. The activation parameters are looked after as in DPO
(:class:`~crrelu_llm.training.mixins.ActivationParameterMixin`). CPO lives in ``trl.experimental``,
whose import warning is silenced here. TRL's trainer tokenizes and truncates with its own rules
(``max_length``, and ``max_prompt_length`` where it has it), which this project does not count row
by row as it does for DPO and SFT. The ``simpo`` row of
:data:`~crrelu_llm.training.objectives.OBJECTIVES` names both classes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from crrelu_llm.errors import RecipeError
from crrelu_llm.training.config import ActivationParameterArguments
from crrelu_llm.training.mixins import ActivationParameterMixin, ProjectCardMixin

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "trl.experimental ... may change or be removed without notice"
    from trl.experimental.cpo import CPOConfig, CPOTrainer


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
            raise RecipeError(
                f"crrelu-llm simpo trains SimPO: loss_type must be simpo, got {self.loss_type!r} "
                "(CPO's other losses are DPO variants: use crrelu-llm dpo with its loss_type)"
            )
        super().__post_init__()


class CRReLUSimPOTrainer(ProjectCardMixin, ActivationParameterMixin, CPOTrainer):
    """TRL's ``CPOTrainer`` (SimPO loss) with the activation parameters looked after."""
