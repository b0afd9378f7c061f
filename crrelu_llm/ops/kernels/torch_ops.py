"""CRReLU forward and backward in plain PyTorch operations (any device, any float dtype).

Half-precision inputs are upcast to float32 for the arithmetic and the result is rounded
once; the eps gradient is accumulated in float32 (float64 for float64 inputs).

Two forms of the same arithmetic:

- ``crrelu_forward`` / ``crrelu_backward`` update temporaries in place, so that eager mode makes
  as few full-size allocations as it can;
- ``crrelu_forward_functional`` / ``crrelu_backward_functional`` have no in-place operation and
  no no-op ``.to``, for ``torch.compile`` (inductor fuses them into one kernel anyway). torch
  2.11 compiles an ``autograd.Function`` whose forward returns an in-place-updated tensor, or a
  no-op ``.to`` of one, into a graph whose gradients are all zero (torch 2.13 does not); the
  functional form is right on both (``tests/test_activation.py::test_works_under_torch_compile``).
"""

from __future__ import annotations

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


_ZEROS: dict = {}


def _minus_half_square(x: torch.Tensor) -> torch.Tensor:
    """``-x**2 / 2`` in one op (``0 + (-0.5) * x * x``, a cached 0-dim zero broadcast) instead of
    two: on a small tensor each op costs more host time than its arithmetic. Tensor subclasses
    (fake, distributed, functorch) get the two ops: no cached constant can stand in for them."""
    if type(x) is not torch.Tensor:
        return torch.square(x).mul_(-0.5)
    key = (x.device, x.dtype)
    zero = _ZEROS.get(key)
    if zero is None:
        with torch.inference_mode(False):
            zero = _ZEROS[key] = torch.zeros((), device=x.device, dtype=x.dtype)
    return torch.addcmul(zero, x, x, value=-0.5)


def _host_scalar(eps: torch.Tensor, x: torch.Tensor) -> float | None:
    """eps as a Python number where reading it costs nothing (a plain CPU tensor beside a CPU
    input): then it rides on an op as its ``value`` instead of costing an op of its own. On a
    GPU the read would wait for the device, so there eps stays a tensor."""
    if x.is_cpu and eps.is_cpu and type(eps) in (torch.Tensor, torch.nn.Parameter) and eps.numel() == 1:
        return eps.item()
    return None


def crrelu_forward(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    # relu(x) + eps * x * exp(-x^2/2): four ops on CPU (five on a GPU), two buffers
    xc = x.float() if x.dtype in _LOW_PRECISION else x
    gauss = _minus_half_square(xc).exp_()
    value = _host_scalar(eps, xc)
    if value is not None:
        out = torch.relu(xc).addcmul_(xc, gauss, value=value)
    else:
        out = torch.relu(xc).addcmul_(gauss.mul_(xc), _as(eps, xc.dtype))
    return out if out.dtype == x.dtype else out.to(x.dtype)


def crrelu_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    need_x: bool = True,
    need_eps: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    # seven ops on CPU (eight on a GPU): on a small tensor each costs about as much host time as
    # its arithmetic, so (1 - x^2) exp(-x^2/2) is formed as gauss - x * (x * gauss) from what
    # grad_eps needs anyway, 1[x > 0] * g is relu's own backward op, grad_eps one dot product
    cdt = _compute_dtype(x)
    xc = _as(x, cdt)
    g = _as(grad_output, cdt)
    gauss = _minus_half_square(xc).exp_()  # exp(-x^2/2)
    xg = xc * gauss  # x exp(-x^2/2): d/deps
    grad_eps = None
    if need_eps:  # accumulated in float32 (float64 for float64 inputs), like the reduction it replaces
        grad_eps = _as(torch.dot(g.reshape(-1), xg.reshape(-1)), eps.dtype)
    grad_x = None
    if need_x:  # 1[x>0] g + eps (1 - x^2) exp(-x^2/2) g
        deriv = gauss.addcmul_(xc, xg, value=-1)
        value = _host_scalar(eps, xc)
        if value is None:
            deriv, value = deriv.mul_(_as(eps, cdt)), 1
        grad_x = _as(torch.ops.aten.threshold_backward(g, xc, 0).addcmul_(deriv, g, value=value), x.dtype)
    return grad_x, grad_eps


def crrelu_forward_functional(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    xc = _as(x, _compute_dtype(x))
    return _as(torch.relu(xc) + _as(eps, xc.dtype) * xc * torch.exp(-0.5 * xc * xc), x.dtype)


def crrelu_backward_functional(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    need_x: bool = True,
    need_eps: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    cdt = _compute_dtype(x)
    xc = _as(x, cdt)
    g = _as(grad_output, cdt)
    x2 = xc * xc
    gauss = torch.exp(-0.5 * x2)
    grad_eps = None
    if need_eps:
        grad_eps = _as(torch.sum(g * xc * gauss, dtype=torch.promote_types(cdt, torch.float32)), eps.dtype)
    grad_x = None
    if need_x:
        grad_x = _as(g * ((xc > 0).to(cdt) + _as(eps, cdt) * (1.0 - x2) * gauss), x.dtype)
    return grad_x, grad_eps
