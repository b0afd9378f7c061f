"""CRReLU forward and backward as Triton kernels (CUDA; CPU through ``TRITON_INTERPRET=1``).

One pass each way. The backward pass writes ``grad_x`` and, in the same pass, one partial sum
of the eps gradient per block; the partials (``n / BLOCK`` floats) are summed afterwards, so the
result is deterministic (no atomics). Arithmetic is in float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048


@triton.jit
def _crrelu_fwd_kernel(x_ptr, eps_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr).to(tl.float32)
    gauss = tl.exp(-0.5 * x * x)
    y = tl.maximum(x, 0.0) + eps * x * gauss
    tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _crrelu_bwd_kernel(
    grad_out_ptr,
    x_ptr,
    eps_ptr,
    grad_x_ptr,
    partial_ptr,
    n,
    BLOCK: tl.constexpr,
    NEED_X: tl.constexpr,
    NEED_EPS: tl.constexpr,
):
    pid = tl.program_id(0)
    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_out_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr).to(tl.float32)
    gauss = tl.exp(-0.5 * x * x)
    if NEED_X:
        step = tl.where(x > 0.0, 1.0, 0.0)
        grad_x = g * (step + eps * (1.0 - x * x) * gauss)
        tl.store(grad_x_ptr + offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if NEED_EPS:
        tl.store(partial_ptr + pid, tl.sum(g * x * gauss, axis=0))


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


# Per call, only what the kernels need: a contiguous input (free when it already is), the
# output, and eps as a pointer (detached: the launcher reads its address, autograd is ours).


def crrelu_forward(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        _crrelu_fwd_kernel[_grid(n)](x, eps.detach(), out, n, BLOCK=BLOCK)
    return out


def crrelu_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    need_x: bool = True,
    need_eps: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    x = x.contiguous()
    grad_output = grad_output.contiguous()
    n = x.numel()
    blocks = triton.cdiv(n, BLOCK)
    grad_x = torch.empty_like(x) if need_x else x  # placeholder pointer when unused
    partial = torch.empty(max(blocks, 1), device=x.device, dtype=torch.float32) if need_eps else x
    if n:
        _crrelu_bwd_kernel[_grid(n)](
            grad_output,
            x,
            eps.detach(),
            grad_x,
            partial,
            n,
            BLOCK=BLOCK,
            NEED_X=need_x,
            NEED_EPS=need_eps,
        )
    grad_eps = None
    if need_eps:
        grad_eps = partial.sum() if n else partial.new_zeros(())  # partial holds exactly `blocks` sums
        if grad_eps.dtype != eps.dtype:
            grad_eps = grad_eps.to(eps.dtype)
    return (grad_x if need_x else None), grad_eps
