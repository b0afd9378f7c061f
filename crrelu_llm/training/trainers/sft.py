"""SFT: TRL's ``SFTConfig`` and ``SFTTrainer``, with the activation parameters looked after and
the DPO reference code's prompt truncation (:mod:`crrelu_llm.training.mixins`). The ``sft`` row of
:data:`~crrelu_llm.training.objectives.OBJECTIVES` names both.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig, SFTTrainer

from crrelu_llm.data import accounting
from crrelu_llm.data.accounting import truncate_like_reference
from crrelu_llm.training.config import ActivationParameterArguments, PromptTruncationArguments
from crrelu_llm.training.mixins import ActivationParameterMixin, ProjectCardMixin, PromptTruncationMixin


@dataclass
class CRReLUSFTConfig(PromptTruncationArguments, ActivationParameterArguments, SFTConfig):
    """TRL's ``SFTConfig`` plus what :class:`CRReLUSFTTrainer` reads."""


class CRReLUSFTTrainer(ProjectCardMixin, ActivationParameterMixin, PromptTruncationMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` with the CRReLU epsilons looked after (see the module docstring)."""

    lengths = staticmethod(accounting.sft_lengths)
    unit = "row"

    @staticmethod
    def _length_rule(dataset, args):
        """TRL's: cut every sequence to ``max_length`` (its start kept with ``keep_start``), then drop
        the rows left with no scored token; pinned against TRL's own in tests/test_accounting.py."""
        cut = slice(None, args.max_length) if args.truncation_mode == "keep_start" else slice(-args.max_length, None)
        masks = [c for c in ("labels", "completion_mask") if c in dataset.column_names]

        def truncate(example):
            return {"input_ids": example["input_ids"][cut], **{c: example[c][cut] for c in masks}}

        def scored(example):
            if "labels" in example:
                return any(label != -100 for label in example["labels"])
            return any(example["completion_mask"]) if "completion_mask" in example else bool(example["input_ids"])

        dataset = dataset.map(truncate, desc=f"Truncating to {args.max_length} tokens")
        return dataset.filter(scored, desc="Dropping rows left without a scored token")

    @staticmethod
    def _truncate_example(example, **kwargs):
        ids = example["input_ids"]
        if "labels" in example:  # the prompt is the leading run of ignored (-100) labels
            scored = [label != -100 for label in example["labels"]]
        elif "completion_mask" in example:
            scored = [bool(m) for m in example["completion_mask"]]
        else:  # plain text: no prompt to tell apart
            return {"input_ids": ids[: kwargs["max_length"]]}
        start = scored.index(True) if True in scored else len(ids)
        prompt, (completion,) = truncate_like_reference(ids[:start], [ids[start:]], **kwargs)
        out = {"input_ids": prompt + completion}
        if "labels" in example:
            out["labels"] = [-100] * len(prompt) + example["labels"][start : start + len(completion)]
        if "completion_mask" in example:
            out["completion_mask"] = [0] * len(prompt) + [1] * len(completion)
        return out
