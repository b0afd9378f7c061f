"""Timing helpers shared by the benchmark scripts: interleaved repeats after warm-ups, medians
with interquartile ranges, and a verdict on a ratio against its target that says when the
range crosses it. (A module beside the scripts, imported by them; not part of the package.)"""

from __future__ import annotations

import contextlib
import random
import statistics

from crrelu_llm.ops import kernels

MIN_WARMUP, MIN_REPEATS = 2, 10


def check_counts(parser, warmup: int, repeats: int) -> None:
    if warmup < MIN_WARMUP or repeats < MIN_REPEATS:
        parser.error(
            f"use at least {MIN_WARMUP} warm-up rounds and {MIN_REPEATS} repeats: fewer gave misleading "
            "ratios before (a 9% slowdown that 10 repeats did not reproduce)"
        )


def quartiles(values: list[float]) -> dict[str, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"q1": q[0], "median": statistics.median(values), "q3": q[2]}


def interleaved(fns: dict, warmup: int, repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """``{name: [seconds per repeat]}``: every round runs each function once, in a shuffled order
    (drift in the machine hits every variant alike); the first ``warmup`` rounds are not kept."""
    rng = random.Random(seed)
    order = list(fns)
    times = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        rng.shuffle(order)
        for name in order:
            seconds = fns[name]()
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def ratio(times: dict[str, list[float]], name: str, baseline: str) -> dict[str, float]:
    """Quartiles of the per-round ratio ``name / baseline`` (paired by round)."""
    return quartiles([a / b for a, b in zip(times[name], times[baseline])])


def verdict(r: dict[str, float], target: float) -> str:
    return "meets" if r["q3"] <= target else "misses" if r["q1"] > target else "range crosses"


def describe(r: dict[str, float], target: float) -> str:
    return f"{r['median']:.3f} [IQR {r['q1']:.3f}-{r['q3']:.3f}] ({verdict(r, target)} the {target:g} target)"


@contextlib.contextmanager
def using_kernel(name: str):
    """CRReLU's kernel set to ``name`` for the block (forward and backward), then put back."""
    before = kernels.get_kernel()
    kernels.set_kernel(name)
    try:
        yield
    finally:
        kernels.set_kernel(before)
