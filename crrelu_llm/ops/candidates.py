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
- ``matched_<base>`` (:class:`MatchedActivation`): the same correction on the *standardised* input,
  ``base(x) + eps * z * exp(-z^2 / 2)`` with ``z = (x - mu) / sigma``, where mu and sigma are the
  layer's own pre-activation location and scale, measured before training
  (:func:`crrelu_llm.patching.calibration.calibrate`). EAFO's correction for a ReLU base under
  N(mu, sigma^2) has this shape (``../shared/eafo/NOTES.md`` §1.1); CRReLU is mu = 0, sigma = 1.
  eps starts at 0: the original, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from crrelu_llm.errors import PatchError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, correction_term, epsilon_init_value, least_squares_epsilon
from crrelu_llm.ops.scalars import keep_scalars_in_state_dict
from crrelu_llm.runtime import deepspeed_zero3_enabled

SWISH_BETA_INIT = 1.0
CORRECTED_PREFIX = "corrected_"
MATCHED_PREFIX = "matched_"


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

    correction = staticmethod(correction_term)  # the term eps multiplies

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


def robust_location_scale(x: torch.Tensor) -> tuple[float, float]:
    """``(median, IQR / 1.349)`` of ``x`` after its 0.01% largest ``|x|`` are left out: a Gaussian's
    mean and sd where the inputs are Gaussian, and not set by a few massive activations where they
    are not (``../shared/eafo/NOTES.md`` §2-3)."""
    x = x.detach().double().flatten()
    x = x[torch.isfinite(x)]
    if x.numel() > 10_000:
        x = x[x.abs() <= torch.quantile(x.abs(), 0.9999)]
    q25, q50, q75 = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return q50, (q75 - q25) / 1.3489795003921634


class MatchedActivation(nn.Module):
    """``base(x) + eps * z * exp(-z**2 / 2)`` with ``z = (x - mu) / sigma``: the correction term
    placed where the layer's inputs are, with a learnable 0-dim ``epsilon`` that starts at 0 (the
    original activation, bit for bit) and ``mu``, ``sigma`` held as buffers (saved in checkpoints,
    not trained).

    mu and sigma are the layer's measured pre-activation location and scale
    (:func:`robust_location_scale`, over the unpatched model's inputs on calibration text without
    each sequence's first position): ``crrelu-llm patch MODEL --activation matched_gelu_new
    --calibration-data DATA``, or a recipe's ``activation: matched_gelu_new`` (measured on its
    first ``calibration_samples`` training rows).

    Args:
        base: a transformers activation name (``gelu_new``, ``silu``, ``relu``...).
        mu: the inputs' location.
        sigma: the inputs' scale (positive).

    Example:
        >>> act = MatchedActivation("gelu", mu=-1.5, sigma=0.7)
        >>> x = torch.linspace(-3, 3, 7)
        >>> bool(torch.equal(act(x), torch.nn.functional.gelu(x)))  # eps = 0: the base itself
        True
        >>> _ = act.epsilon.data.fill_(1.0)
        >>> round(float(act(torch.tensor([-0.8])) - torch.nn.functional.gelu(torch.tensor([-0.8]))), 4)  # z = 1
        0.6065
    """

    def __init__(self, base: str = "gelu", mu: float = 0.0, sigma: float = 1.0, folded=None):
        super().__init__()
        from transformers.activations import ACT2FN

        mu, sigma = float(mu), float(sigma)
        if not (mu == mu and abs(mu) != float("inf") and sigma > 0 and sigma != float("inf")):
            raise PatchError(f"matched_{base}: mu must be finite and sigma positive, got mu={mu}, sigma={sigma}")
        folded = [[float(v) for v in row] for row in (folded or [])]
        if any(len(row) != 3 or not row[2] > 0 for row in folded):
            raise PatchError(f"matched_{base}: folded must be [eps, mu, sigma] rows with sigma > 0, got {folded}")
        self.base_name = base
        self.base = ACT2FN[base]
        self.epsilon_init = 0.0
        self.epsilon = nn.Parameter(torch.zeros((1,) if deepspeed_zero3_enabled() else ()))
        keep_scalars_in_state_dict(self, ["epsilon"])
        self.register_buffer("mu", torch.tensor(mu))
        self.register_buffer("sigma", torch.tensor(sigma))
        # earlier corrections, frozen by refit() (the paper's "dynamic" variant): [eps, mu, sigma] rows
        self.register_buffer("folded", torch.tensor(folded, dtype=torch.float32).reshape(-1, 3))

    def correction(self, x: torch.Tensor) -> torch.Tensor:
        """The term eps multiplies: ``z exp(-z^2 / 2)``, ``z = (x - mu) / sigma``."""
        return _bump(x, self.mu, self.sigma)

    def refitted_base(self, x: torch.Tensor) -> torch.Tensor:
        """The base with every folded correction added: the activation as it was at the last refit."""
        y = self.base(x)
        if not self.folded.shape[0]:  # no refit yet (the usual case): the base alone, no loop
            return y
        for eps, mu, sigma in self.folded:
            y = y + eps.to(x.dtype) * _bump(x, mu, sigma)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refitted_base(x) + self.epsilon.to(x.dtype) * self.correction(x)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.epsilon.fill_(self.epsilon_init)

    @torch.no_grad()
    def measure(self, x: torch.Tensor) -> dict[str, float]:
        """Set ``mu`` and ``sigma`` from a sample ``x`` of the layer's inputs
        (:func:`robust_location_scale`); returns them."""
        mu, sigma = robust_location_scale(x)
        if not sigma > 0:
            raise PatchError(
                f"matched_{self.base_name}: the calibration text gives this layer inputs with no spread (IQR 0): "
                "cannot measure sigma; calibrate on more or other text"
            )
        self.mu.fill_(mu)
        self.sigma.fill_(sigma)
        return {"mu": mu, "sigma": sigma}

    @torch.no_grad()
    def refit(self, x: torch.Tensor) -> dict:
        """The paper's "dynamic" step: fold the learned correction into the base (a frozen
        ``[eps, mu, sigma]`` row), measure mu and sigma again on ``x`` (this layer's inputs now) and
        reset eps to 0. The function is unchanged; returns the new ``mu``, ``sigma`` and ``folded``."""
        eps = self.epsilon.detach().reshape(())
        if float(eps) != 0.0:
            row = torch.stack([eps, self.mu.detach(), self.sigma.detach()]).to(self.folded)[None]
            self.folded = torch.cat([self.folded, row])
        self.epsilon.zero_()
        return {**self.measure(x), "folded": self.folded.tolist()}

    def extra_repr(self) -> str:
        shown = f", eps={self.epsilon.item():.6g}" if self.epsilon.numel() == 1 and not self.epsilon.is_meta else ""
        if self.mu.is_meta:
            return f"base={self.base_name}{shown}"
        folded = f", folded={len(self.folded)}" if len(self.folded) else ""
        return f"base={self.base_name}, mu={self.mu.item():.4g}, sigma={self.sigma.item():.4g}{folded}{shown}"


def _bump(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``z exp(-z^2 / 2)``, ``z = (x - mu) / sigma``, in ``x``'s dtype."""
    return correction_term((x - mu.to(x.dtype)) / sigma.to(x.dtype))
