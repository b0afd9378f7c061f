"""The CRReLU epsilons under distributed training: FSDP2 sharing, DeepSpeed shapes, ZeRO gathers.

eps is a 0-dim parameter, which neither FSDP2 nor DeepSpeed handles as it is:

- FSDP2's ``fully_shard`` refuses 0-dim parameters. :func:`fsdp2_share_epsilons` keeps the
  CRReLU modules whole on every rank (``ignored_modules``) and averages their gradients.
- DeepSpeed broadcasts every parameter as bytes, which a 0-dim tensor cannot do.
  :func:`use_vector_epsilons` holds them as ``(1,)`` (checkpoints stay 0-dim).
- Under ZeRO-3 (and FSDP2) a parameter is partitioned: :func:`full_parameter` gathers it.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from crrelu_llm.ops.activation import CRReLU


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


def use_vector_epsilons(model: nn.Module) -> int:
    """Hold every CRReLU ``epsilon`` with shape ``(1,)``, for DeepSpeed (which cannot broadcast
    0-dim parameters). Values, ``state_dict()`` and checkpoints are unchanged. Returns how many
    were converted. Call before the optimizer is built."""
    converted = 0
    for module in model.modules():
        if isinstance(module, CRReLU) and module.epsilon.dim() == 0:
            module.use_vector_epsilon()
            converted += 1
    return converted


def fsdp2_share_epsilons(plugin, model, device=None) -> list:
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
    modules = [m for m in model.modules() if isinstance(m, CRReLU)]
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
        if module.epsilon.requires_grad and not getattr(module.epsilon, "_crrelu_rank_mean_hook", False):
            module.epsilon.register_post_accumulate_grad_hook(average_over_ranks)
            module.epsilon._crrelu_rank_mean_hook = True
    return modules


def average_over_ranks(param: torch.Tensor) -> None:
    """Post-accumulate-grad hook: the data-parallel mean of ``param``'s gradient."""
    import torch.distributed as dist

    if param.grad is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(dist.get_world_size())
