"""Kernels for CRReLU, kept apart from the module and from the code that patches models.

``crrelu_forward`` / ``crrelu_backward`` use the implementation chosen for the tensor's kind of
device (chosen once per kind, and again after :func:`set_kernel`):

- ``triton`` (:mod:`.triton_ops`): one-pass Triton kernels, used for CUDA tensors in eager mode
  when Triton is installed;
- ``torch`` (:mod:`.torch_ops`): plain PyTorch operations, everywhere else, and always while
  ``torch.compile`` traces (their functional form: inductor then fuses them into its own kernel);
- ``compiled``: the PyTorch operations compiled once by ``torch.compile`` (dynamic shapes), an
  opt-in for eager CPU training, where it is much faster than ``torch`` after a compile
  that takes tens of seconds per dtype.

The environment variable ``CRRELU_LLM_KERNEL`` (``auto``, ``torch``, ``triton``, ``compiled``)
or :func:`set_kernel` overrides the choice, for benchmarks and debugging.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from crrelu_llm.errors import UsageError
from crrelu_llm.ops.kernels import torch_ops

KERNELS = ("auto", "torch", "triton", "compiled")
_choice = os.environ.get("CRRELU_LLM_KERNEL", "auto")


def set_kernel(name: str) -> None:
    """Choose the implementation: ``auto`` (default), ``torch``, ``triton`` or ``compiled``."""
    global _choice
    if name not in KERNELS:
        raise UsageError(f"unknown CRReLU kernel {name!r}; choose one of {', '.join(KERNELS)}")
    if name == "triton" and not triton_available():
        raise UsageError("the triton kernel needs the triton package (pip install 'crrelu-llm[triton]')")
    _choice = name
    _chosen.clear()


def get_kernel() -> str:
    return _choice


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _compiled():
    forward = torch.compile(torch_ops.crrelu_forward_functional, dynamic=True, fullgraph=True)
    backward = torch.compile(torch_ops.crrelu_backward_functional, dynamic=True, fullgraph=True)
    return forward, backward


_chosen: dict[bool, tuple] = {}  # x.is_cuda -> (forward, backward), filled on first use


def _choose(cuda: bool):
    choice = _choice
    if choice == "auto":
        choice = "triton" if cuda and triton_available() else "torch"
    if choice == "triton":
        from crrelu_llm.ops.kernels import triton_ops

        return triton_ops.crrelu_forward, triton_ops.crrelu_backward
    if choice == "compiled":
        return _compiled()
    return torch_ops.crrelu_forward, torch_ops.crrelu_backward


def _implementation(x: torch.Tensor):
    if torch.compiler.is_compiling():
        return torch_ops.crrelu_forward_functional, torch_ops.crrelu_backward_functional
    cuda = x.is_cuda
    implementation = _chosen.get(cuda)
    if implementation is None:
        implementation = _chosen[cuda] = _choose(cuda)
    return implementation


def crrelu_forward(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return _implementation(x)[0](x, eps)


def crrelu_backward(grad_output, x, eps, need_x: bool = True, need_eps: bool = True):
    if torch.is_grad_enabled():  # a double backward (create_graph=True) records this: no in-place ops
        return torch_ops.crrelu_backward_functional(grad_output, x, eps, need_x, need_eps)
    return _implementation(x)[1](grad_output, x, eps, need_x, need_eps)


__all__ = ["crrelu_forward", "crrelu_backward", "set_kernel", "get_kernel", "triton_available", "KERNELS"]
