"""Activation candidates from the literature, shipped beside CRReLU so that an experiment can
compare them without writing code. Each is a plain ``nn.Module``; any other class is used by
import path (``activation: my_pkg.acts:MyActivation``).

- ``swish_beta`` (:class:`SwishBeta`): ``x * sigmoid(beta * x)`` with a learnable ``beta``
  (Ramachandran, Zoph & Le 2017, "Searching for Activation Functions"; beta = 1 is SiLU, and
  beta near 1.702 comes close to GELU).
- ``relu2``: squared ReLU ``relu(x)^2`` (So et al. 2021, Primer), transformers' own
  ``ReLUSquaredActivation``; no parameter.
- ``corrected_<base>`` (:class:`CorrectedActivation`): Sun et al.'s entropy correction on any
  base, ``base(x) + eps * x * exp(-x^2 / 2)`` with ``base`` a transformers activation name
  (``corrected_gelu_new``, ``corrected_silu``...). CRReLU is the correction on ReLU; on the
  model's own base with ``eps = 0`` it is the original, exactly: the correction apart from the swap.
"""

from __future__ import annotations

import torch
from torch import nn

from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, epsilon_init_value, least_squares_epsilon
from crrelu_llm.ops.scalars import keep_scalars_in_state_dict
from crrelu_llm.runtime import deepspeed_zero3_enabled

SWISH_BETA_INIT = 1.0
CORRECTED_PREFIX = "corrected_"


class SwishBeta(nn.Module):
    """``x * sigmoid(beta * x)`` with a learnable 0-dim ``beta`` (one per module)."""

    def __init__(self, beta_init: float = SWISH_BETA_INIT):
        super().__init__()
        self.beta_init = float(beta_init)
        # DeepSpeed ZeRO-3 partitions parameters as they are built and cannot broadcast a 0-dim one:
        # held as (1,) there (as CRReLU's eps is), 0-dim in state_dict() and checkpoints either way
        self.beta = nn.Parameter(torch.full((1,) if deepspeed_zero3_enabled() else (), self.beta_init))
        keep_scalars_in_state_dict(self, ["beta"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta.to(x.dtype) * x)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.beta.fill_(self.beta_init)

    @torch.no_grad()
    def least_squares_init(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """The ``beta`` in [0.05, 5] closest to ``target`` in squared error on ``x``: a grid, then
        a finer one around its best point (one-dimensional and smooth, so this is enough)."""
        x, target = x.double().flatten(), target.double().flatten()

        def best(grid):
            errors = torch.stack([((x * torch.sigmoid(b * x) - target) ** 2).sum() for b in grid])
            return float(grid[int(errors.argmin())])

        coarse = best(torch.linspace(0.05, 5.0, 100, dtype=torch.float64))
        self.beta_init = best(torch.linspace(max(0.05, coarse - 0.05), coarse + 0.05, 101, dtype=torch.float64))
        self.beta.fill_(self.beta_init)

    def extra_repr(self) -> str:
        return f"beta={self.beta.item():.6g}" if self.beta.numel() == 1 and not self.beta.is_meta else ""


class CorrectedActivation(nn.Module):
    """``base(x) + eps * x * exp(-x**2 / 2)``: the correction term of CRReLU on any base
    activation (a transformers name), with a learnable 0-dim ``epsilon`` (one per module).

    With ``epsilon_init=0`` its output is ``base(x)`` exactly, so a model patched with its own
    base (``corrected_gelu_new`` on GPT-2) starts bit-identical to the original.

    Args:
        base: a transformers activation name (``gelu``, ``gelu_new``, ``silu``, ``relu``...).
        epsilon_init: initial value of ``epsilon``.

    Example:
        >>> act = CorrectedActivation("gelu", epsilon_init=0.0)
        >>> x = torch.linspace(-3, 3, 7)
        >>> bool(torch.equal(act(x), torch.nn.functional.gelu(x)))
        True
    """

    def __init__(self, base: str = "gelu", epsilon_init: float = DEFAULT_EPSILON_INIT):
        super().__init__()
        from transformers.activations import ACT2FN

        self.base_name = base
        self.base = ACT2FN[base]
        self.epsilon_init = epsilon_init_value(epsilon_init, allow_calibrate=False)
        self.epsilon = nn.Parameter(torch.full((1,) if deepspeed_zero3_enabled() else (), self.epsilon_init))
        keep_scalars_in_state_dict(self, ["epsilon"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.epsilon.to(x.dtype) * x * torch.exp(-x * x / 2)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.epsilon.fill_(self.epsilon_init)

    @torch.no_grad()
    def least_squares_init(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """The closed form ``sum(g d) / sum(g^2)``, ``g = x exp(-x^2/2)``, ``d = target - base(x)``:
        zero when the base is the original activation itself."""
        x = x.double()
        value = least_squares_epsilon(x, target.double() - self.base(x))
        if value is not None:
            self.epsilon_init = value
            self.epsilon.fill_(value)

    def extra_repr(self) -> str:
        shown = f"eps={self.epsilon.item():.6g}" if self.epsilon.numel() == 1 and not self.epsilon.is_meta else ""
        return f"base={self.base_name}" + (f", {shown}" if shown else "")
