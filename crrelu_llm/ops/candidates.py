"""Activation candidates from the literature, shipped beside CRReLU so that an experiment can
compare them without writing code. Each is a plain ``nn.Module``; any other class is used by
import path (``activation: my_pkg.acts:MyActivation``).

- ``swish_beta`` (:class:`SwishBeta`): ``x * sigmoid(beta * x)`` with a learnable ``beta``
  (Ramachandran, Zoph & Le 2017, "Searching for Activation Functions"; beta = 1 is SiLU, and
  beta near 1.702 comes close to GELU).
- ``relu2``: squared ReLU ``relu(x)^2`` (So et al. 2021, Primer), transformers' own
  ``ReLUSquaredActivation``; no parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from crrelu_llm.ops.distributed import keep_scalars_in_state_dict
from crrelu_llm.runtime import deepspeed_zero3_enabled

SWISH_BETA_INIT = 1.0


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
