"""Measuring activation memory: the bytes autograd keeps for backward."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def count_saved_bytes():
    """``with count_saved_bytes() as saved: ...`` then ``saved["bytes"]``: every tensor autograd
    saves for backward inside the block, counted once per save (what GELU vs CRReLU differ in)."""
    counter = {"bytes": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        counter["bytes"] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield counter
