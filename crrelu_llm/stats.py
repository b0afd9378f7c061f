"""The statistics the reports use: intervals, exact tests and win-rate summaries. Pure Python."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion (``successes`` may be fractional: ties count 1/2)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test on the decisive pairs (ties excluded): P-value under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(values: list[float], statistic=statistics.fmean, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over examples."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = draws[int((1 - level) / 2 * n_boot)]
    hi = draws[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return (lo, hi)


def paired_permutation_test(a: list[float], b: list[float]) -> float:
    """Exact two-sided sign-flip test of mean(a - b) = 0 for paired samples (e.g. seeds)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired test needs two lists of the same, non-zero length")
    diffs = [x - y for x, y in zip(a, b)]
    observed = abs(sum(diffs))
    n = len(diffs)
    count = 0
    for mask in range(2**n):
        total = sum(d if (mask >> i) & 1 else -d for i, d in enumerate(diffs))
        count += abs(total) >= observed - 1e-12
    return count / 2**n


def length_stats(texts: list[str]) -> dict:
    lengths = [len(t) for t in texts]
    if not lengths:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {"mean": statistics.fmean(lengths), "median": statistics.median(lengths), "min": min(lengths),
            "max": max(lengths)}


@dataclass
class WinRate:
    wins: int
    ties: int
    losses: int
    n: int
    win_rate: float  # ties count 1/2
    interval: tuple[float, float]  # Wilson, 95%
    sign_test_p: float  # exact, decisive pairs only
    position_consistency: float | None  # pairwise judges: share of pairs judged the same in both orders
    length_model: dict
    length_baseline: dict
    # crrelu_llm.evaluation.length_control: value, 95% interval and n (value None, with the reason, if undefined)
    length_controlled: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(outcomes: list[int | None], model_texts: list[str], baseline_texts: list[str],
             consistent: list[bool | None] | None = None) -> WinRate:
    """Summarise judge outcomes of (model, baseline) pairs: 0 = model wins, 1 = baseline wins,
    None = tie."""
    wins = sum(o == 0 for o in outcomes)
    losses = sum(o == 1 for o in outcomes)
    ties = len(outcomes) - wins - losses
    n = len(outcomes)
    score = wins + ties / 2
    flags = [c for c in (consistent or []) if c is not None]
    return WinRate(
        wins=wins, ties=ties, losses=losses, n=n,
        win_rate=score / n if n else float("nan"),
        interval=wilson_interval(score, n),
        sign_test_p=sign_test(wins, losses),
        position_consistency=(sum(flags) / len(flags)) if flags else None,
        length_model=length_stats(model_texts), length_baseline=length_stats(baseline_texts),
    )


Z80_POWER = 0.8416212335729143  # standard normal quantile at 0.80


def detectable_difference(n: int, two_samples: bool = True, p: float = 0.5, z_alpha: float = Z95,
                          z_power: float = Z80_POWER) -> float:
    """The smallest difference in a proportion that ``n`` items per group detect with a
    two-sided 5% test and 80% power (normal approximation, at ``p``; 0.5 is the worst case).

    ``two_samples``: two arms measured on ``n`` items each (their accuracies compared);
    otherwise one arm against a fixed value (a win rate against 1/2). With n = 256 the 95%
    interval of one accuracy is about +-6 points, and two arms must differ by about 12 points
    to be told apart with 80% power."""
    if n <= 0:
        return float("nan")
    return (z_alpha + z_power) * math.sqrt(p * (1 - p) * ((2 if two_samples else 1) / n))
