"""The change in output entropy an activation's correction makes against its own base, exactly,
where both maps are one-to-one (the paper's mechanism, measured; ``../shared/eafo/NOTES.md`` §3.3).

For the same inputs S, an output y = f(S) of a map that is one-to-one on a region has
h(f(S)) = h(S) + E[log|f'(S)|] there, so two maps differ by

    ΔH = E[log|f_arm'(S)| - log|f_base'(S)|]   over the inputs S above the base's turning point s*,

a mean over samples: no density estimate. The base of CRReLU is ReLU (s* = 0: below it the output
is exactly zero, an atom whose entropy is -inf, so those inputs are left out and their share is
reported apart); the base of ``corrected_<base>`` is that activation (GELU's s* is about -0.752,
SiLU's -1.278, found numerically). Derivatives come from autograd, so any base works.

Example::

    >>> import torch
    >>> from crrelu_llm.ops.activation import CRReLU
    >>> from crrelu_llm.ops.entropy import entropy_change
    >>> x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> total, covered = entropy_change(CRReLU(epsilon_init=0.01), x)
    >>> round(total / covered, 4) > 0, round(covered / x.numel(), 2)  # eps > 0 raises it
    (True, 0.5)
"""

from __future__ import annotations

import copy
import functools

import torch


@functools.lru_cache(maxsize=None)
def turning_point(base) -> float:
    """Where a smooth base stops being one-to-one: its minimum on [-6, 0] (a grid, refined)."""
    grid = torch.linspace(-6.0, 0.0, 60_001, dtype=torch.float64)
    with torch.no_grad():
        values = base(grid)
    return float(grid[int(values.argmin())])


def base_of(module):
    """``(base callable, s*)`` of a corrected activation, or None for one without a base."""
    from crrelu_llm.ops.activation import CRReLU
    from crrelu_llm.ops.candidates import CorrectedActivation

    if isinstance(module, CRReLU):
        return torch.relu, 0.0
    if isinstance(module, CorrectedActivation):
        return module.base, turning_point(module.base)
    return None


def _derivative(function, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(x).sum(), x)
    return grad


def entropy_change(module, x: torch.Tensor) -> tuple[float, int] | None:
    """``(Σ log|f_arm'(s)| - log|f_base'(s)| over the inputs s > s*, how many they are)`` for
    ``module``'s inputs ``x``, in float64; None for a module without a base."""
    found = base_of(module)
    if found is None:
        return None
    base, threshold = found
    x = x.detach().double().reshape(-1)
    x = x[x > threshold]
    if not x.numel():
        return 0.0, 0
    copy64 = copy.deepcopy(module).double()  # the model's own module keeps its dtype; no hooks on the copy
    with torch.enable_grad():
        arm, ours = _derivative(copy64.forward, x), _derivative(base, x)
    ratio = torch.log(arm.abs()) - torch.log(ours.abs())
    return float(ratio[torch.isfinite(ratio)].sum()), int(x.numel())
