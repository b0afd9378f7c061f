"""Facts about the running process that several modules need (no project imports: a leaf)."""

from __future__ import annotations

import logging
import os
import sys

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
        logger.warning(
            "the CPUs are busy (%.1f of %d in use by other processes): a second torch job on them makes "
            "both several times slower; run one at a time, or give each OMP_NUM_THREADS=%d",
            busy,
            threads,
            max(1, threads // 2),
        )
    return threads


# Messages the libraries this project drives print on every run, that a user cannot act on: the
# project passes lm-eval an already loaded model on purpose, and DeepSpeed guesses the accelerator
# when it is imported on a machine without a GPU.
UNACTIONABLE = (
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("lm_eval", "`pretrained` model kwarg is not of type `str`"),
    ("lm_eval", "Passed an already-initialized model through `pretrained`"),
    ("lm_eval", "Custom kwargs can be passed to `--metadata`"),
)


class QuietFilter(logging.Filter):
    """Drops the :data:`UNACTIONABLE` messages, and lets every other warning through once."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(record.name.startswith(name) and text in message for name, text in UNACTIONABLE):
            return False
        if record.levelno >= logging.WARNING:
            if (record.name, message) in self.seen:
                return False
            self.seen.add((record.name, message))
        return True


def configure_logging(fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """``logging.basicConfig`` at INFO on stderr, with :class:`QuietFilter` on the handler it
    creates, and on DeepSpeed's own logger (which prints to stdout by itself). Like basicConfig,
    it leaves a process whose root logger already has handlers (a test's capture, an
    application's own) as it is."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(QuietFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
    deepspeed = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, QuietFilter) for f in deepspeed.filters):
        deepspeed.addFilter(QuietFilter())
