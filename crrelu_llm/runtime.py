"""Facts about the running process that several modules need (no project imports: a leaf)."""

from __future__ import annotations


def deepspeed_zero3_enabled() -> bool:
    """True in a process that trains with DeepSpeed ZeRO-3, where modules are built inside
    ``deepspeed.zero.Init`` and their parameters are partitioned as they are created."""
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return is_deepspeed_zero3_enabled()

