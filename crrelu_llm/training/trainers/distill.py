"""Distillation of the original into the patched model: TRL's ``SFTConfig`` and ``SFTTrainer``
(data, collation, saving, resuming) with the loss replaced (:class:`CRReLUDistillTrainer`). The
``distill`` row of :data:`~crrelu_llm.training.objectives.OBJECTIVES` names both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from crrelu_llm.errors import RecipeError
from crrelu_llm.training.config import ActivationParameterArguments, PromptTruncationArguments
from crrelu_llm.training.trainers.sft import CRReLUSFTTrainer


@dataclass
class DistillationArguments:
    """What :class:`CRReLUDistillTrainer` matches: the original's next-token
    distribution (forward KL, at a temperature), and optionally each MLP's output."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The teacher; default: model_name_or_path as loaded, before the patch."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of both distributions (KL x T^2)."})
    student_dropout: bool = field(
        default=False,
        metadata={"help": "Keep the student's dropout during distillation (default: off, like the teacher's)."},
    )
    mlp_mse_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the mean squared error between each MLP's output in the student and "
            "in the teacher (0: logits only)."
        },
    )

    def __post_init__(self):
        if not self.temperature > 0:
            raise RecipeError(f"temperature must be > 0, got {self.temperature}")
        if self.mlp_mse_weight < 0:
            raise RecipeError(f"mlp_mse_weight must be >= 0, got {self.mlp_mse_weight}")
        super().__post_init__()


@dataclass
class CRReLUDistillConfig(DistillationArguments, PromptTruncationArguments, ActivationParameterArguments, SFTConfig):
    """TRL's ``SFTConfig`` (data, batching, saving) plus what distillation matches."""


class CRReLUDistillTrainer(CRReLUSFTTrainer):
    """Distillation into the patched model: TRL's ``SFTTrainer`` (data, collation, saving,
    resuming) with ``compute_loss`` replaced by the forward KL from the frozen ``teacher`` (the
    original model) to the student on every real (non-padding) token, prompt included, at
    ``args.temperature`` (times T^2, as in Hinton et al.), plus ``args.mlp_mse_weight`` times the
    mean squared error between each MLP's output in the two models. ``distill/kl`` and
    ``distill/mlp_mse`` are logged."""

    def __init__(self, *args, teacher=None, **kwargs):
        if teacher is None:
            raise TypeError("CRReLUDistillTrainer needs teacher= (the original model)")
        super().__init__(*args, **kwargs)
        if not self.args.student_dropout:
            # the teacher runs without dropout; a student trained with it learns to match the teacher
            # only on average over masks, and is measured (and used) without them
            for module in self.model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        teacher.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            teacher = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            from trl.models import prepare_fsdp

            teacher = prepare_fsdp(teacher, self.accelerator)
        else:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self.teacher = teacher
        self._distill_sums = {"distill/kl": 0.0, "distill/mlp_mse": 0.0, "n": 0}

    def _mlp_paths(self) -> list[str]:
        """The feed-forward blocks (parents of the activations), found in the unpatched teacher."""
        if not hasattr(self, "_mlp_path_list"):
            from crrelu_llm.patching.discovery import find_activations

            teacher = getattr(self.teacher, "module", self.teacher)
            self._mlp_path_list = sorted(
                {s.path.rpartition(".")[0] for s in find_activations(teacher) if s.feed_forward and "." in s.path}
            )
        return self._mlp_path_list

    def _mlp_outputs(self, model, store: dict):
        """Forward hooks that keep each feed-forward block's output."""
        root = getattr(model, "module", model)

        def keep(key):
            return lambda mod, inp, out: store.__setitem__(key, out[0] if isinstance(out, tuple) else out)

        return [root.get_submodule(path).register_forward_hook(keep(path)) for path in self._mlp_paths()]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        labels = inputs["labels"]
        feed = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        student_mlp, teacher_mlp, handles = {}, {}, []
        if args.mlp_mse_weight > 0:
            handles = self._mlp_outputs(model, student_mlp) + self._mlp_outputs(self.teacher, teacher_mlp)
        try:
            outputs = model(**feed)
            with torch.no_grad():
                teacher_logits = self.teacher(**feed).logits
        finally:
            for handle in handles:
                handle.remove()
        # every real token: the teacher's distribution is a target at prompt positions too
        attention = inputs.get("attention_mask")
        mask = (attention[:, 1:] if attention is not None else (labels[:, 1:] != -100)).float()
        tokens = mask.sum().clamp(min=1)
        t = args.temperature
        student = (outputs.logits[:, :-1].float() / t).log_softmax(-1)
        teacher = (teacher_logits[:, :-1].float() / t).log_softmax(-1)
        kl = (teacher.exp() * (teacher - student)).sum(-1)
        loss = (kl * mask).sum() / tokens * t * t
        mse = torch.zeros((), device=loss.device)
        if student_mlp:
            keep = inputs.get("attention_mask", torch.ones_like(labels)).bool()
            mse = sum(((student_mlp[k].float() - teacher_mlp[k].float())[keep] ** 2).mean() for k in student_mlp)
            mse = mse / len(student_mlp)
            loss = loss + args.mlp_mse_weight * mse
        if model.training:
            self._distill_sums["distill/kl"] += float((kl * mask).sum().detach() / tokens)
            self._distill_sums["distill/mlp_mse"] += float(mse.detach())
            self._distill_sums["n"] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        n = self._distill_sums["n"]
        if n and "loss" in logs:
            logs["distill/kl"] = self._distill_sums["distill/kl"] / n
            if self.args.mlp_mse_weight > 0:
                logs["distill/mlp_mse"] = self._distill_sums["distill/mlp_mse"] / n
            self._distill_sums = {"distill/kl": 0.0, "distill/mlp_mse": 0.0, "n": 0}
        return super().log(logs, *args, **kwargs)
