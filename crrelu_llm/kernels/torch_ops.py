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


def crrelu_forward(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    xc = x.float() if x.dtype in _LOW_PRECISION else x
    eps_c = eps if eps.dtype == xc.dtype else eps.to(xc.dtype)
    # relu(x) + eps * (x * exp(-x^2/2)): six ops, two buffers (host time per op is what a
    # small tensor costs)
    out = torch.relu(xc).addcmul_(torch.square(xc).mul_(-0.5).exp_().mul_(xc), eps_c)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def crrelu_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    need_x: bool = True,
    need_eps: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    cdt = _compute_dtype(x)
    xc = _as(x, cdt)
    g = _as(grad_output, cdt)
    x2 = torch.square(xc)
    gauss = torch.mul(x2, -0.5).exp_()  # exp(-x^2/2)
    grad_eps = None
    if need_eps:
        grad_eps = torch.sum(g * xc * gauss, dtype=torch.promote_types(cdt, torch.float32)).to(eps.dtype)
    grad_x = None
    if need_x:
        # 1[x>0] + eps * (1 - x^2) * exp(-x^2/2)
        deriv = torch.rsub(x2, 1.0).mul_(gauss).mul_(eps.to(cdt)).add_(xc > 0)
        grad_x = _as(deriv.mul_(g), x.dtype)
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
