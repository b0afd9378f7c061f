"""Activation parameters under distributed training: FSDP2 sharing, DeepSpeed shapes, ZeRO gathers.

CRReLU's eps (and a Swish's beta, and any patched class's scalars) is a 0-dim parameter, which
neither FSDP2 nor DeepSpeed handles as it is:

- FSDP2's ``fully_shard`` refuses 0-dim parameters. :func:`fsdp2_share_activation_parameters` keeps the
  CRReLU modules whole on every rank (``ignored_modules``) and averages their gradients.
- DeepSpeed broadcasts every parameter as bytes, which a 0-dim tensor cannot do.
  :func:`hold_scalars_as_vectors` holds them as ``(1,)`` (checkpoints stay 0-dim).
- Under ZeRO-3 (and FSDP2) a parameter is partitioned: :func:`full_parameter` gathers it.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch
from torch import nn

from crrelu_llm.ops.activation import CRReLU, is_patched_activation
from crrelu_llm.ops.scalars import hold_as_vectors


@contextmanager
def outside_zero3_init():
    """Build modules outside DeepSpeed's ``zero.Init`` (while it is active): plain parameters,
    for looking at a class without partitioning (or breaking on) what it builds."""
    from crrelu_llm.runtime import deepspeed_zero3_enabled

    context = None
    if deepspeed_zero3_enabled():
        from deepspeed.runtime.zero import partition_parameters

        context = partition_parameters.top_level_context
    if context is not None:
        partition_parameters.shutdown_init_context()
    try:
        yield
    finally:
        if context is not None:
            partition_parameters.restore_init_context()


def full_parameter(param: torch.Tensor) -> torch.Tensor:
    """A detached copy of the whole parameter, however it is held: plain, an FSDP2 DTensor, or
    partitioned by DeepSpeed ZeRO-3 (gathered; a collective, so every rank must call it)."""
    full = getattr(param, "full_tensor", None)  # FSDP2 DTensor
    if callable(full):
        return full().detach()
    if param.numel() == 0 and hasattr(param, "ds_id"):  # ZeRO-3 partitioned
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()
    return param.detach()


def hold_scalars_as_vectors(model: nn.Module) -> int:
    """Hold every 0-dim parameter of the patched activations (CRReLU's ``epsilon``, any class's
    scalars) with shape ``(1,)``, for DeepSpeed (which cannot broadcast 0-dim parameters).
    Values, ``state_dict()`` and checkpoints are unchanged (element-wise forwards broadcast a
    ``(1,)`` as they do a scalar). Returns how many were converted. Call before the optimizer is built."""
    converted = 0
    for module in model.modules():
        if isinstance(module, CRReLU) or is_patched_activation(module):
            converted += hold_as_vectors(module)
    return converted


def fsdp2_share_activation_parameters(plugin, model, device=None) -> list:
    """Make an FSDP2 plugin leave the CRReLU epsilons of ``model`` unsharded, and keep them in sync.

    ``fully_shard`` refuses 0-dim parameters ("doesn't support scalar parameters"), and the
    epsilons are 0-dim. They are tiny, so they stay whole on every rank: the CRReLU modules go
    into the plugin's ``ignored_modules``. ``fully_shard`` does not move ignored parameters, so
    they are moved to ``device`` (the accelerator's) here. FSDP does not reduce their gradients
    either, so a hook averages each trainable epsilon's gradient over the ranks (the same
    data-parallel mean FSDP takes). Call it for the policy and for a DPO reference (frozen: no
    hook) before either is sharded. Returns the CRReLU modules it added."""
    if plugin is None or getattr(plugin, "fsdp_version", 1) != 2 or model is None:
        return []
    modules = [
        m for m in model.modules() if is_patched_activation(m) and next(m.parameters(recurse=False), None) is not None
    ]
    if not modules:
        return []
    existing = plugin.ignored_modules
    if isinstance(existing, str):  # accelerate's regex form: resolve it to modules
        existing = [m for n, m in model.named_modules() if re.fullmatch(existing, n)]
    existing = list(existing or [])
    plugin.ignored_modules = existing + [m for m in modules if not any(m is e for e in existing)]
    for module in modules:
        if device is not None:
            module.to(device)
        for param in module.parameters(recurse=False):
            if param.requires_grad and not getattr(param, "_crrelu_rank_mean_hook", False):
                param.register_post_accumulate_grad_hook(average_over_ranks)
                param._crrelu_rank_mean_hook = True
    return modules


def average_over_ranks(param: torch.Tensor) -> None:
    """Post-accumulate-grad hook: the data-parallel mean of ``param``'s gradient."""
    import torch.distributed as dist

    if param.grad is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(dist.get_world_size())
