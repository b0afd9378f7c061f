"""Kernels for CRReLU, kept apart from the module and from the code that patches models.

``crrelu_forward`` / ``crrelu_backward`` pick an implementation for the tensor's device:
PyTorch operations (:mod:`.torch_ops`) everywhere.
"""

from .torch_ops import crrelu_backward, crrelu_forward

__all__ = ["crrelu_forward", "crrelu_backward"]
