"""CRReLU: the entropy-corrected ReLU of Sun et al. (arXiv 2405.12954, ICLR 2025).

    CRReLU(x) = relu(x) + eps * x * exp(-x**2 / 2)

applied element-wise, with ``eps`` a learnable scalar (one per module, i.e. one per
transformer block when patched into a model), initialised to 0.01 and unconstrained.

Derivatives (used by the fused backward)::

    d/dx   = 1[x > 0] + eps * (1 - x**2) * exp(-x**2 / 2)
    d/deps = x * exp(-x**2 / 2)            (summed over all elements)

The forward and backward are one ``torch.autograd.Function`` that saves only its input
(and the 0-dim ``eps``): the activation memory is the same as GELU's, whereas the naive
expression keeps the relu output, the exponential and the product alive for backward.
Half-precision inputs are computed in float32 and rounded once, and the eps gradient is
accumulated in float32. Kernels for other devices live in :mod:`crrelu_llm.ops.kernels`; this
module only chooses between them.
"""

from __future__ import annotations

import torch
from torch import nn

from crrelu_llm.errors import UsageError
from crrelu_llm.ops import kernels
from crrelu_llm.ops.scalars import hold_as_vectors, keep_scalars_in_state_dict
from crrelu_llm.runtime import deepspeed_zero3_enabled

DEFAULT_EPSILON_INIT = 0.01
CALIBRATE = "calibrate"  # epsilon_init: least squares per layer (crrelu_llm.patching.calibration)

# Set on every activation module a patch puts in (and kept by deepcopy, PEFT's modules_to_save
# copies and checkpoints, which rebuild it): its parameters are "activation parameters", trained
# in their own optimizer group, logged, kept whole under FSDP2 and saved with a LoRA adapter.
PATCHED_ATTRIBUTE = "_crrelu_llm_patched"


def mark_patched(module: nn.Module) -> nn.Module:
    setattr(module, PATCHED_ATTRIBUTE, True)
    return module


def is_patched_activation(module: nn.Module) -> bool:
    """A module a patch put in (any class), or a CRReLU however it was built."""
    return isinstance(module, CRReLU) or bool(getattr(module, PATCHED_ATTRIBUTE, False))


def epsilon_init_value(value, allow_calibrate: bool = True) -> float | str:
    """The one check of an ``epsilon_init`` wherever it comes from (recipe, flag, constructor): a
    finite number, or ``"calibrate"`` where calibration applies."""
    if allow_calibrate and value == CALIBRATE:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")) or isinstance(value, bool):
        words = f"a finite number such as {DEFAULT_EPSILON_INIT}" + (" or 'calibrate'" if allow_calibrate else "")
        raise UsageError(f"epsilon_init must be {words}, got {value!r}")
    return number


class CRReLUFunction(torch.autograd.Function):
    """Fused CRReLU: ``forward(x, eps)`` saves ``x`` and ``eps`` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, eps)
        return kernels.crrelu_forward(x, eps)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, eps = ctx.saved_tensors
        need_x, need_eps = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x, grad_eps = kernels.crrelu_backward(grad_output, x, eps, need_x, need_eps)
        if grad_eps is not None and eps.dim():
            grad_eps = grad_eps.reshape(eps.shape)  # (1,) under DeepSpeed, see CRReLU
        return grad_x, grad_eps


# What CRReLUFunction.apply ends in. Outside torch.compile and functorch transforms (where the
# public apply is kept) the rest of it binds setup_context arguments (there are none here) and
# unwraps dead functorch wrappers (there are none): about 15 us per call on a CPU, a tenth of
# GELU's whole forward+backward on a small tensor. Missing in some torch: the public apply.
_raw_apply = getattr(super(torch.autograd.Function, CRReLUFunction), "apply", None)


def crrelu(x: torch.Tensor, eps: torch.Tensor | float = DEFAULT_EPSILON_INIT) -> torch.Tensor:
    """Functional CRReLU. ``eps`` may be a float or a 0-dim tensor (learnable or not)."""
    if not isinstance(eps, torch.Tensor):
        eps = torch.tensor(float(eps), device=x.device)
    if eps.dim() != 0:
        raise ValueError(f"crrelu: eps must be a scalar (0-dim tensor), got shape {tuple(eps.shape)}")
    return CRReLUFunction.apply(x, eps)


def correction_term(x: torch.Tensor) -> torch.Tensor:
    """``x exp(-x^2 / 2)``: the term eps multiplies, in CRReLU and in the corrections on other bases
    (``matched_<base>`` takes it of the standardised input)."""
    return x * torch.exp(-x * x / 2)


def crrelu_reference(x: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """The naive expression, as the paper's snippet writes it. For tests and benchmarks only:
    autograd keeps several intermediates of this alive for backward."""
    return torch.relu(x) + eps * x * torch.exp(-(x**2) / 2)


class CRReLU(nn.Module):
    """``relu(x) + eps * x * exp(-x**2 / 2)`` with a learnable 0-dim parameter ``epsilon``.

    Under DeepSpeed the parameter is held with shape ``(1,)`` instead, since DeepSpeed cannot
    broadcast 0-dim parameters: built so under ZeRO-3, converted by :meth:`use_vector_epsilon`
    otherwise. Whatever the shape in memory, ``state_dict()`` and checkpoints hold a 0-dim
    ``epsilon``, and either shape loads (:mod:`crrelu_llm.ops.scalars`).

    Args:
        epsilon_init: initial value of ``epsilon`` (the paper uses 0.01).

    Example::

        >>> import torch
        >>> from crrelu_llm import CRReLU
        >>> act = CRReLU(epsilon_init=0.5)
        >>> [round(v, 4) for v in act(torch.tensor([-1.0, 0.0, 2.0])).tolist()]  # relu(x) + 0.5 x exp(-x^2/2)
        [-0.3033, 0.0, 2.1353]
    """

    def __init__(self, epsilon_init: float = DEFAULT_EPSILON_INIT):
        super().__init__()
        epsilon_init = epsilon_init_value(epsilon_init, allow_calibrate=False)
        self.epsilon_init = epsilon_init
        shape = (1,) if deepspeed_zero3_enabled() else ()
        self.epsilon = nn.Parameter(torch.full(shape, epsilon_init))
        keep_scalars_in_state_dict(self, ["epsilon"])

    def use_vector_epsilon(self) -> None:
        """Hold ``epsilon`` with shape ``(1,)`` (same value, new Parameter) for DeepSpeed. Call
        before the optimizer is built."""
        hold_as_vectors(self, ["epsilon"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.epsilon
        if torch.is_grad_enabled() and (x.requires_grad or eps.requires_grad):
            if _raw_apply is None or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
                return CRReLUFunction.apply(x, eps)
            return _raw_apply(x, eps)
        # No graph to build (generation, evaluation): the kernel alone, without the autograd
        # Function's per-call bookkeeping, which costs more host time than the arithmetic.
        return kernels.crrelu_forward(x, eps)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.epsilon.fill_(self.epsilon_init)

    correction = staticmethod(correction_term)  # the term eps multiplies

    @torch.no_grad()
    def least_squares_init(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """Set ``epsilon`` (and ``epsilon_init``) to the closed-form least-squares value that
        brings this module closest to ``target`` on inputs ``x``: ``sum(g d) / sum(g^2)`` with
        ``g = x exp(-x^2/2)`` and ``d = target - relu(x)`` (the calibration protocol of any
        activation class; see :mod:`crrelu_llm.patching.calibration`)."""
        x = x.double()
        value = least_squares_epsilon(x, target.double() - torch.relu(x))
        if value is not None:
            self.epsilon_init = value
            self.epsilon.fill_(value)

    def extra_repr(self) -> str:
        if self.epsilon.is_meta or self.epsilon.numel() != 1:  # meta, or partitioned by ZeRO-3
            return f"epsilon_init={self.epsilon_init}"
        return f"epsilon={self.epsilon.item():.6g}"


def least_squares_epsilon(x: torch.Tensor, residual: torch.Tensor) -> float | None:
    """The eps that brings ``eps * g`` closest to ``residual`` (the target minus the base
    activation) in squared error, ``g = x exp(-x^2/2)``: ``sum(g d) / sum(g^2)``; None when g is 0."""
    g = correction_term(x)
    gg = float((g * g).sum())
    return float((g * residual).sum()) / gg if gg > 0 else None
