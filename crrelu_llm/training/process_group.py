"""The end of a launched run: every rank leaves the process group, and nothing of the group is left
running when Python exits.

``torch.distributed.destroy_process_group`` forgets the group, but the group itself (with gloo:
two worker threads and a transport thread per rank) lives until its last reference goes. A library
that binds ``GroupMember.WORLD`` as a default argument when it is imported after the group exists
keeps that reference for the life of the interpreter. DeepSpeed's ``TorchBackend.barrier`` and
``monitored_barrier`` do so; TRL's trainers import DeepSpeed (through accelerate's
``extract_model_from_parallel``) after accelerate has created the group, so under a launcher every
SFT and DPO run ended with gloo's threads still running. They are then torn down while Python
finalizes, the state in which a C++ thread that touches a Python object aborts the process
("terminate called without an active exception", SIGABRT; pytorch/pytorch#179291): a rank dies
after its run was saved, and the launcher reports the job failed.

:func:`leave_process_group` therefore unbinds such defaults (``None`` means "the default group"
to every collective) and collects, so the group is freed, its threads joined, while the
interpreter is whole. Under ZeRO-3 the models hold the groups too (each partitioned parameter
keeps its ``ds_process_group``), and DeepSpeed keeps every engine's model for the life of the
interpreter in two places: the module-level ``FWD_MODULE_STACK`` of
``deepspeed.runtime.zero.parameter_offload``, to which each engine's set-up pushes its model and
nothing pops it, and the ``functools.lru_cache`` on ``PartitionedParameterCoordinator``'s
``__params_to_release``, whose keys are the coordinator and the sub-modules it released.
:func:`release_zero3_models` empties both once training is over. What still holds the group
afterwards is named in a warning.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import types

logger = logging.getLogger(__name__)


def leave_process_group() -> None:
    """Under a launcher, after a run has finished: wait for every rank, destroy the process
    group, and free it now. A no-op outside a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.group.WORLD
    dist.barrier()  # no rank closes the group while another still uses it
    deepspeed_comm = sys.modules.get("deepspeed.comm.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's references to the groups it made
    else:
        dist.destroy_process_group()
    release_zero3_models()
    unbound = unbind_defaults(world)
    if unbound:
        logger.debug("unbound the destroyed process group from the defaults of %s", ", ".join(unbound))
    del world
    gc.collect()  # the trainer's reference cycles (accelerator, DDP wrapper) hold the groups too
    left = native_threads("gloo")
    if left:
        logger.warning(
            "the process group outlived destroy_process_group (%d gloo threads still run: "
            "something still references it); Python may abort as it exits",
            len(left),
        )


def release_zero3_models() -> int:
    """Let go of the models DeepSpeed's ZeRO-3 keeps after its engines are done (see the module
    docstring): empties ``FWD_MODULE_STACK`` and the coordinator's method caches. For the end of
    a run only (no forward pass in flight). Returns how many references it dropped; 0 where
    ZeRO-3 was never imported."""
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    dropped = 0
    if offload is not None:
        dropped += len(offload.FWD_MODULE_STACK)
        offload.FWD_MODULE_STACK.clear()
    if coordinator is not None:
        for cache in method_caches(coordinator.PartitionedParameterCoordinator):
            dropped += cache.cache_info().currsize
            cache.cache_clear()
    return dropped


def method_caches(cls) -> list:
    """The ``functools.lru_cache`` wrappers among ``cls``'s methods, also where another decorator
    wraps one without ``functools.wraps`` (DeepSpeed's ``instrument_w_nvtx`` does)."""
    caches, seen = [], set()
    layers = list(vars(cls).values())
    while layers:
        fn = layers.pop()
        if id(fn) in seen:  # a closure that refers to itself
            continue
        seen.add(id(fn))
        if hasattr(fn, "cache_clear") and hasattr(fn, "cache_info"):
            caches.append(fn)
        elif isinstance(fn, types.FunctionType):
            for cell in fn.__closure__ or ():
                try:
                    layers.append(cell.cell_contents)
                except ValueError:  # a cell not yet filled
                    pass
    return caches


def unbind_defaults(group) -> list[str]:
    """Replace ``group`` by ``None`` wherever a function holds it as a default argument; returns
    the functions' qualified names. For a destroyed group only: ``None`` then means the current
    default group, as it does to every ``torch.distributed`` collective."""
    unbound = []
    for obj in gc.get_objects():
        if not isinstance(obj, types.FunctionType):
            continue
        defaults, kwdefaults = obj.__defaults__, obj.__kwdefaults__
        if defaults and any(d is group for d in defaults):
            obj.__defaults__ = tuple(None if d is group else d for d in defaults)
            unbound.append(f"{obj.__module__}.{obj.__qualname__}")
        if kwdefaults and any(d is group for d in kwdefaults.values()):
            obj.__kwdefaults__ = {k: None if d is group else d for k, d in kwdefaults.items()}
            unbound.append(f"{obj.__module__}.{obj.__qualname__}")
    return unbound


def native_threads(name_part: str) -> list[str]:
    """Names of this process's OS threads that contain ``name_part`` (gloo names its threads
    ``pt_gloo_runloop`` and ``gloo_tcp_loop``). Linux only: elsewhere an empty list."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return []
    names = []
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended while we looked
            continue
        if name_part in name:
            names.append(name)
    return sorted(names)
