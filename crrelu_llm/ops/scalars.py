"""0-dim activation parameters held with shape ``(1,)`` where a library needs it, and stored 0-dim
whatever their shape in memory: the one mechanism, on torch's public state-dict hooks.

DeepSpeed cannot broadcast a 0-dim parameter, so under DeepSpeed CRReLU's ``epsilon``, SwishBeta's
``beta`` and any activation class's scalars are held as ``(1,)`` (built so under ZeRO-3, converted
by :func:`hold_as_vectors` otherwise). A module marked by :func:`keep_scalars_in_state_dict` puts
them in ``state_dict()`` 0-dim and loads either shape, so checkpoints look the same everywhere.
ZeRO-3's consolidated state dict is built from the parameters, not through the hooks:
:func:`as_saved` gives it the same shape.

Example::

    >>> import torch
    >>> from crrelu_llm import CRReLU
    >>> from crrelu_llm.ops.scalars import hold_as_vectors
    >>> act = CRReLU()
    >>> hold_as_vectors(act, ["epsilon"]), tuple(act.epsilon.shape), tuple(act.state_dict()["epsilon"].shape)
    (1, (1,), ())
"""

from __future__ import annotations

import torch
from torch import nn

_SCALARS = "_crrelu_llm_scalar_parameters"  # names of a module's parameters stored 0-dim


def keep_scalars_in_state_dict(module: nn.Module, names: list[str]) -> None:
    """Parameters ``names`` of ``module`` go into ``state_dict()`` 0-dim and load from either
    shape, whether the module holds them 0-dim or ``(1,)``."""
    if names and not hasattr(module, _SCALARS):
        module.register_state_dict_post_hook(_scalars_in_state_dict)
        module.register_load_state_dict_pre_hook(_shape_on_load)
    setattr(module, _SCALARS, sorted(set(getattr(module, _SCALARS, [])) | set(names)))


def hold_as_vectors(module: nn.Module, names: list[str] | None = None) -> int:
    """Hold ``module``'s 0-dim parameters ``names`` (default: every 0-dim one of its own) with
    shape ``(1,)``: same values, new Parameters, stored 0-dim. Call before the optimizer is
    built. Returns how many were converted."""
    names = [n for n, p in module.named_parameters(recurse=False) if p.dim() == 0 and (names is None or n in names)]
    for name in names:
        old = getattr(module, name)
        setattr(module, name, nn.Parameter(old.detach().reshape(1).clone(), requires_grad=old.requires_grad))
    keep_scalars_in_state_dict(module, names)
    return len(names)


def as_saved(state_dict: dict, names) -> dict:
    """``state_dict`` with the one-element parameters ``names`` 0-dim, as the hooks store them."""
    names = set(names)
    return {
        k: (v.reshape(()) if k in names and isinstance(v, torch.Tensor) and v.shape == (1,) else v)
        for k, v in state_dict.items()
    }


def _scalars_in_state_dict(module, state_dict, prefix, local_metadata) -> None:
    for name in getattr(module, _SCALARS, []):
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and value.shape == (1,):
            state_dict[prefix + name] = value.reshape(())


def _shape_on_load(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for name in getattr(module, _SCALARS, []):
        value, param = state_dict.get(prefix + name), getattr(module, name, None)
        if isinstance(value, torch.Tensor) and param is not None and value.numel() == param.numel() == 1:
            state_dict[prefix + name] = value.reshape(param.shape)  # 0-dim on disk, (1,) or 0-dim in memory
