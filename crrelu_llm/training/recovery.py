"""Recovering what the swap breaks: the gradual swap (calibrated eps:
:mod:`crrelu_llm.patching.calibration`).

- :func:`blend_in` and :class:`SwapScheduleCallback` (``swap_steps: N``): each new activation
  runs as ``(1 - a) * original(x) + a * new(x)`` with ``a`` going from 0 to 1 over the first N
  optimizer steps; at step N the blend modules are replaced by the plain new activation (the
  same ``epsilon`` Parameter, so the optimizer state carries on). A blended CRReLU *is* a
  :class:`~crrelu_llm.ops.activation.CRReLU` holding its own ``epsilon``, so checkpoints have the
  same keys during and after the schedule, and a resumed run sets ``a`` from its step.
- Distillation from the original is a trainer: :class:`crrelu_llm.training.trainers.distill.CRReLUDistillTrainer`.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import TrainerCallback

from crrelu_llm.errors import RecipeError
from crrelu_llm.ops.activation import CRReLU

logger = logging.getLogger("crrelu_llm.recovery")


# --------------------------------------------------------------------------- the gradual swap


class BlendedCRReLU(CRReLU):
    """``(1 - alpha) * original(x) + alpha * crrelu(x)``; holds its own ``epsilon``."""

    def __init__(self, crrelu: CRReLU, original: nn.Module):
        super().__init__(crrelu.epsilon_init)
        self.epsilon = crrelu.epsilon  # the same Parameter
        self.original = original
        self.alpha = 0.0

    def forward(self, x):
        new = super().forward(x)
        return new if self.alpha >= 1 else torch.lerp(self.original(x), new, self.alpha)

    def unblended(self) -> CRReLU:
        plain = CRReLU(self.epsilon_init)
        plain.epsilon = self.epsilon
        return plain


class BlendedActivation(nn.Module):
    """The same blend for a parameter-free activation (the ReLU control arm)."""

    def __init__(self, new: nn.Module, original: nn.Module):
        super().__init__()
        self.new, self.original, self.alpha = new, original, 0.0

    def forward(self, x):
        new = self.new(x)
        return new if self.alpha >= 1 else torch.lerp(self.original(x), new, self.alpha)

    def unblended(self) -> nn.Module:
        return self.new


BLENDS = (BlendedCRReLU, BlendedActivation)


def original_activations(model: nn.Module) -> dict[str, nn.Module]:
    """The feed-forward activation modules of an unpatched model, by path (before a patch)."""
    from crrelu_llm.patching.discovery import find_activations

    return {s.path: model.get_submodule(s.path) for s in find_activations(model) if s.feed_forward}


def blend_in(model: nn.Module, originals: dict[str, nn.Module]) -> int:
    """Wrap every patched module at a path of ``originals`` in a blend starting at alpha 0."""
    from crrelu_llm.patching.discovery import set_submodule

    count = 0
    for path, original in originals.items():
        new = model.get_submodule(path)
        if new is original:
            continue
        if any(True for _ in original.parameters()) or (
            not isinstance(new, CRReLU) and any(True for _ in new.parameters())
        ):
            raise RecipeError(
                f"swap_steps: {path} has parameters besides CRReLU's eps; a blend supports "
                "parameter-free activations only"
            )
        blend = BlendedCRReLU(new, original) if isinstance(new, CRReLU) else BlendedActivation(new, original)
        set_submodule(model, path, blend)
        count += 1
    return count


def blends(model: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules() if isinstance(m, BLENDS)}


def set_alpha(model: nn.Module, alpha: float) -> None:
    for module in blends(model).values():
        module.alpha = float(min(1.0, max(0.0, alpha)))


def finish_swap(model: nn.Module) -> int:
    """Replace every blend by its plain new activation; returns how many were replaced."""
    from crrelu_llm.patching.discovery import set_submodule

    found = blends(model)
    for path, module in found.items():
        set_submodule(model, path, module.unblended())
    return len(found)


class SwapScheduleCallback(TrainerCallback):
    """Sets the blend's alpha to ``step / swap_steps`` before every step, from the trainer's
    step count (so a resumed run continues the schedule), and removes the blends at the end
    of the schedule, before any later checkpoint is saved."""

    def __init__(self, swap_steps: int):
        self.swap_steps = swap_steps

    def _update(self, state, model) -> None:
        if model is None or not blends(model):
            return
        if state.global_step >= self.swap_steps:
            count = finish_swap(model)
            logger.info(
                "swap finished at step %d: %d blend module(s) replaced by the new activation", state.global_step, count
            )
        else:
            set_alpha(model, state.global_step / self.swap_steps)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and blends(model):  # a run shorter than its schedule ends blended: say so
            logger.warning(
                "training ended at step %d, before swap_steps=%d: the saved model holds the pure new "
                "activation, not the blend it was trained with",
                state.global_step,
                self.swap_steps,
            )
            finish_swap(model)
