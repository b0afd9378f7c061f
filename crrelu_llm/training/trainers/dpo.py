"""DPO: TRL's ``DPOConfig`` and ``DPOTrainer``, with the activation parameters looked after.

:class:`CRReLUDPOConfig` is TRL's config plus the activation-parameter rate, the DPO reference
code's prompt truncation and the shared reference cache; :class:`CRReLUDPOTrainer` reads them
(:class:`~crrelu_llm.training.mixins.ActivationParameterMixin`,
:class:`~crrelu_llm.training.mixins.PromptTruncationMixin`,
:mod:`crrelu_llm.training.reference_cache`). The ``dpo`` row of
:data:`~crrelu_llm.training.objectives.OBJECTIVES` names both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trl import DPOConfig, DPOTrainer

from crrelu_llm.data.accounting import truncate_like_reference
from crrelu_llm.training.config import ActivationParameterArguments, PromptTruncationArguments, ReferenceCacheArguments
from crrelu_llm.training.mixins import (
    ActivationParameterMixin,
    PolicyReferenceMixin,
    ProjectCardMixin,
    PromptTruncationMixin,
)


@dataclass
class CRReLUDPOConfig(ReferenceCacheArguments, PromptTruncationArguments, ActivationParameterArguments, DPOConfig):
    """TRL's ``DPOConfig`` plus what :class:`CRReLUDPOTrainer` reads.

    Example::

        >>> from crrelu_llm.training.trainers.dpo import CRReLUDPOConfig
        >>> args = CRReLUDPOConfig(output_dir="runs/doc", beta=0.1, activation_learning_rate=1e-2, bf16=False)
        >>> args.beta, args.activation_learning_rate
        (0.1, 0.01)
    """


class CRReLUDPOTrainer(
    ProjectCardMixin, PolicyReferenceMixin, ActivationParameterMixin, PromptTruncationMixin, DPOTrainer
):
    """TRL's ``DPOTrainer`` with the activation parameters looked after (see the module docstring), and
    precomputed reference log-probabilities shared through ``args.ref_logps_cache_dir``
    (:mod:`crrelu_llm.training.reference_cache`): TRL computes them, this keeps them for the next run.
    Without ``ref_model`` the reference is a frozen copy of the policy as passed, patch included, as on
    the command line (:class:`~crrelu_llm.training.mixins.PolicyReferenceMixin`); ``ref_model="gpt2"``
    asks for the unpatched original.

    Example::

        >>> from crrelu_llm import patch_model
        >>> from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer
        >>> from crrelu_llm.training.trainers.dpo import CRReLUDPOConfig, CRReLUDPOTrainer
        >>> from datasets import Dataset
        >>> model = tiny_causal_lm("gpt2")
        >>> _ = patch_model(model, "crrelu")
        >>> pairs = Dataset.from_list([{"prompt": "1+1=", "chosen": "2.", "rejected": "3."}] * 4)
        >>> args = CRReLUDPOConfig(output_dir="runs/doc", max_steps=1, per_device_train_batch_size=2,
        ...                        activation_learning_rate=1e-2, report_to=[], use_cpu=True, bf16=False)
        >>> trainer = CRReLUDPOTrainer(model=model, args=args, train_dataset=pairs,
        ...                            processing_class=tiny_tokenizer())  # doctest: +IGNORE_RESULT
        >>> type(trainer.ref_model.transformer.h[0].mlp.act).__name__  # the reference: the patched policy
        'CRReLU'
        >>> result = trainer.train()  # eps trains in its own parameter group  # doctest: +IGNORE_RESULT
        >>> trainer.state.global_step
        1
    """

    def _precompute_ref_logps(self, dataset, name, batch_size):
        from crrelu_llm.training.reference_cache import cached_reference_logps

        folder = getattr(self.args, "ref_logps_cache_dir", None)
        compute = super()._precompute_ref_logps
        if not folder:
            return compute(dataset, name, batch_size)
        return cached_reference_logps(
            Path(folder),
            dataset,
            name,
            self.reference_checksum,
            self.args,
            lambda: compute(dataset, name, batch_size),
            self.accelerator,
        )

    @staticmethod
    def _length_rule(dataset, args):
        """TRL's: with ``keep_start``, drop the pairs whose prompt alone fills ``max_length`` (the
        collator then cuts the rest); pinned against TRL's own in tests/test_accounting.py."""
        if args.truncation_mode != "keep_start":
            return dataset
        return dataset.filter(
            lambda example: len(example["prompt_ids"]) < args.max_length,
            desc="Dropping pairs whose prompt fills max_length",
        )

    @staticmethod
    def _truncate_example(example, **kwargs):
        prompt, (chosen, rejected) = truncate_like_reference(
            example["prompt_ids"], [example["chosen_ids"], example["rejected_ids"]], **kwargs
        )
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
