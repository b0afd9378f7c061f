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


def busy_cpus(cpus: int, interval: float = 0.3) -> float:
    """How many of this process's CPUs other processes keep busy now, measured over ``interval``
    seconds (not the load average, which still counts a job that has just ended)."""
    import psutil

    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        allowed = list(range(cpus))
    per_cpu = psutil.cpu_percent(interval=interval, percpu=True)
    return sum(per_cpu[i] for i in allowed if i < len(per_cpu)) / 100


def set_cpu_threads() -> int:
    """Give torch one thread per CPU this process may use (``OMP_NUM_THREADS`` wins when set),
    and say so when other processes keep the CPUs busy right now: two torch jobs that each take
    every core run several times slower than one after the other."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = cpu_threads()
    torch.set_num_threads(threads)
    busy = busy_cpus(threads)
    if busy >= threads - 0.5:
        logger.warning("the CPUs are busy (%.1f of %d in use by other processes): a second torch job on them makes "
                       "both several times slower; run one at a time, or give each OMP_NUM_THREADS=%d", busy, threads,
                       max(1, threads // 2))
    return threads
