"""Facts about the running process that several modules need (no project imports: a leaf)."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("crrelu_llm.runtime")


def deepspeed_zero3_enabled() -> bool:
    """True in a process that trains with DeepSpeed ZeRO-3, where modules are built inside
    ``deepspeed.zero.Init`` and their parameters are partitioned as they are created."""
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return is_deepspeed_zero3_enabled()



def cpu_threads() -> int:
    """CPUs this process may run on (its affinity: a container or ``taskset`` can give fewer
    than the machine has, which torch's own default does not see)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def set_cpu_threads() -> int:
    """Give torch one thread per CPU this process may use (``OMP_NUM_THREADS`` wins when set),
    and say so when other processes already keep the CPUs busy: two torch jobs that each take
    every core run several times slower than one after the other."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = cpu_threads()
    torch.set_num_threads(threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= threads - 0.5:
        logger.warning("the CPUs are busy (load %.1f on %d): a second torch job on them makes both several times "
                       "slower; run one at a time, or give each OMP_NUM_THREADS=%d", load, threads,
                       max(1, threads // 2))
    return threads
