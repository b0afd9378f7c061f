"""The change in output entropy an activation's correction makes against its own base (the paper's
mechanism, measured; ``../shared/eafo/NOTES.md`` §3.3), and how far the correction's shape is from
EAFO's entropy-lowering direction for the layer's inputs.

**Exactly, where both maps are one-to-one** (:func:`entropy_change`).

For the same inputs S, an output y = f(S) of a map that is one-to-one on a region has
h(f(S)) = h(S) + E[log|f'(S)|] there, so two maps differ by

    ΔH = E[log|f_arm'(S)| - log|f_base'(S)|]   over the inputs S above the base's turning point s*,

a mean over samples: no density estimate. It holds while the arm is one-to-one too: where a large
correction turns the map back (its derivative changes sign), the inputs are counted as folded and
the figure is not exact there. The base of CRReLU is ReLU (s* = 0: below it the output
is exactly zero, an atom whose entropy is -inf, so those inputs are left out and their share is
reported apart); the base of ``corrected_<base>`` and ``matched_<base>`` is that activation (GELU's
s* is about -0.752, SiLU's -1.278, found numerically). Derivatives come from autograd, so any base
works.

**Binned, elsewhere** (:func:`binned_entropy_change`): over the inputs at or below s*, the
quantised entropies H_b = -Σ p_i log p_i of both maps' outputs at one common bin width b (10^-3 of
the sd of the base's outputs over all the layer's inputs), arm minus base. It is finite where the
base has an atom (ReLU's zeros: H_b = 0 there), so a correction that spreads the atom shows as a
rise; a plug-in estimate, so compare it across arms and stages on the same sample size.

**Cosine to EAFO's direction** (:func:`correction_cosine`). For inputs with density p (the Gaussian
fit of the layer's inputs: median and IQR/1.349) and a base f, EAFO's entropy-lowering change of f
in the L2(p) metric (NOTES §1.0) is the output score at f(s), which on either branch of f is

    v(s) = (log q)'(f(s)) = (f'(s) p'(s)/p(s) - f''(s)) / (f'(s)^2 + δ^2),     δ = 0.05,

with δ = 0 the exact form. In this metric a correction c (the term eps multiplies) changes the
entropy at the rate dH/deps = -E[c(S) v(S)] (integration by parts of E[c'(S)/f'(S)]), so the cosine

    cos = E[c v] / sqrt(E[c^2] E[v^2])     over the layer's inputs S

is positive when c points toward lower entropy: **eps · cos > 0 is the entropy-lowering
direction**, to first order. The exact v diverges like 1/(s - s*)^2 at a smooth base's turning
point s*; δ caps it there (near s*, |v| reaches f''(s*)/δ^2). Where the inputs keep away from s*
the cosine's sign agrees with the exact ΔH's; where much of their mass sits near s* (GPT-2's MLP
inputs) the regularisation sets it, and ΔH (exact and binned) is the measure to read. Where f' = 0
(ReLU below 0) v = 0: an atom has no direction. Each branch of a non-monotone base is taken as if
alone (a KDE of the outputs would mix them where their outputs overlap).
"""

from __future__ import annotations

import copy
import functools

import torch


@functools.lru_cache(maxsize=None)
def turning_point(base) -> float:
    """Where a base stops being one-to-one: the last point of its minimum on [-6, 0] (a grid of
    10^-4): a smooth base's turning point, the end of a flat part (ReLU: 0)."""
    grid = torch.linspace(-6.0, 0.0, 60_001, dtype=torch.float64)
    with torch.no_grad():
        values = base(grid)
    return float(grid[int(torch.nonzero(values == values.min()).max())])


def base_of(module):
    """``(base callable, s*)`` of a corrected activation, or None for one without a base."""
    from crrelu_llm.ops.activation import CRReLU
    from crrelu_llm.ops.candidates import CorrectedActivation, MatchedActivation

    if isinstance(module, CRReLU):
        return torch.relu, 0.0
    if isinstance(module, (CorrectedActivation, MatchedActivation)):
        return module.base, turning_point(module.base)
    return None


def _derivative(function, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(function(x).sum(), x)
    return grad


def entropy_change(module, x: torch.Tensor) -> tuple[float, int, int] | None:
    """``(Σ log|f_arm'(s)| - log|f_base'(s)| over the inputs s > s*, how many they are, how many of
    them the arm folds)`` for ``module``'s inputs ``x``, in float64; None for a module without a
    base. Folded: the arm's derivative has the other sign there (a large correction turns the map
    back), so the arm is not one-to-one and the sum is not the exact change on those inputs."""
    found = base_of(module)
    if found is None:
        return None
    base, threshold = found
    x = x.detach().double().reshape(-1)
    x = x[x > threshold]
    if not x.numel():
        return 0.0, 0, 0
    copy64 = copy.deepcopy(module).double()  # the model's own module keeps its dtype; no hooks on the copy
    with torch.enable_grad():
        arm, ours = _derivative(copy64.forward, x), _derivative(base, x)
    ratio = torch.log(arm.abs()) - torch.log(ours.abs())
    folded = int((arm * ours <= 0).sum())
    return float(ratio[torch.isfinite(ratio)].sum()), int(x.numel()), folded


DELTA = 0.05  # the regularisation of EAFO's direction at a smooth base's turning point


def _derivatives(function, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f'(x), f''(x))`` by autograd, float64."""
    x = x.detach().double().clone().requires_grad_(True)
    with torch.enable_grad():
        (first,) = torch.autograd.grad(function(x).sum(), x, create_graph=True)
        second = torch.autograd.grad(first.sum(), x, allow_unused=True)[0] if first.requires_grad else None
    return first.detach(), (second.detach() if second is not None else torch.zeros_like(first))


def eafo_direction(base, s: torch.Tensor, mu: float, sigma: float, delta: float = DELTA) -> torch.Tensor:
    """EAFO's entropy-lowering change of ``base`` at inputs ``s`` for inputs N(mu, sigma^2), in the
    L2(p) metric, regularised at the turning point (module docstring)."""
    s = s.detach().double()
    first, second = _derivatives(base, s)
    score = -(s - mu) / (sigma * sigma)  # p'/p of the Gaussian fit
    return (first * score - second) / (first * first + delta * delta)


def correction_cosine(module, s: torch.Tensor, mu: float, sigma: float) -> float | None:
    """The cosine between ``module``'s correction shape and :func:`eafo_direction` of its base over
    the inputs ``s`` (module docstring); None for a module without a base or a correction."""
    found = base_of(module)
    if found is None or not callable(getattr(module, "correction", None)) or not sigma > 0:
        return None
    s = s.detach().double().reshape(-1)
    with torch.no_grad():
        c = copy.deepcopy(module).double().correction(s)
    d = eafo_direction(found[0], s, mu, sigma)
    norm = float((c * c).sum() * (d * d).sum()) ** 0.5
    return float((c * d).sum()) / norm if norm > 0 else None


def _quantised_entropy(y: torch.Tensor, width: float) -> float:
    _, counts = torch.unique(torch.floor(y / width), return_counts=True)
    p = counts.double() / y.numel()
    return float(-(p * p.log()).sum())


def binned_entropy_change(module, s: torch.Tensor) -> tuple[float, int, float] | None:
    """``(H_b(arm outputs) - H_b(base outputs) over the inputs at or below s*, how many, b)``
    (module docstring); None for a module without a base, or with no input below s*."""
    found = base_of(module)
    if found is None:
        return None
    base, threshold = found
    s = s.detach().double().reshape(-1)
    with torch.no_grad():
        ours = base(s)
        width = 1e-3 * float(ours.std()) if s.numel() > 1 else 0.0
        below = s <= threshold
        if not width > 0 or not bool(below.any()):
            return None
        arm = copy.deepcopy(module).double()(s[below])
    return _quantised_entropy(arm, width) - _quantised_entropy(ours[below], width), int(below.sum()), width
