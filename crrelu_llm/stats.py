"""Estimation: per-item outcomes in, an estimate with its interval, test and detectable
difference out. The one owner of every interval, test and power figure the reports print.

Three kinds of per-item outcome, one estimator each:

- a **win rate**: a judge's verdict per prompt, scored 1 (win), 1/2 (tie) or 0 (loss)
  (:func:`win_rate_estimate`). A tie is its own outcome, not a coin flip: the win rate is
  ``1/2 + (p_win - p_loss) / 2``, a paired difference of two proportions;
- a **reward accuracy**: 0 or 1 per preference pair (:func:`accuracy_estimate`);
- the **difference between two arms scored on the same items**, paired (:func:`paired_difference`).

The win rate and the paired difference share one interval and one test: Bonett and Price's
adjusted Wald interval for a difference of paired proportions (Bonett & Price 2012, "Adjusted
Wald confidence interval for a difference of binomial proportions based on paired data"; one
pseudo-observation added to each discordant cell, so it never collapses to a point), and the
exact binomial test on the discordant items (the sign test for a win rate, McNemar's exact test
for two arms; ``scipy.stats.binomtest`` and ``statsmodels``' ``mcnemar``). Their standard error
is AlpacaEval's (``describe_head2head``: the standard error of the mean per-item preference).

A detectable difference is the smallest true difference the test finds with 80% power at this
n *and this data's spread* (the share of decisive or discordant items), from the normal power
of a test whose variance differs under the null and the alternative (Connor 1987; statsmodels'
``normal_power_het``). :func:`detectable_difference` keeps the worst case (p = 1/2, no ties) for
planning, where nothing is measured yet.

Across seeds, :func:`pooled` treats seeds and items as crossed random effects (every seed's
model is scored on the same items): the standard error of the grand mean comes from the two-way
ANOVA mean squares, with Satterthwaite's degrees of freedom, so the interval carries the
between-seed spread as well as the items'. ``tests/test_calibration.py`` checks every interval's
coverage and every detectable figure's power by simulation.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from dataclasses import asdict, dataclass

Z95 = 1.959963984540054
ALPHA = 0.05
POWER = 0.80


# --------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """An estimate with its 95% interval, the test of "no effect" and what this n detects."""

    value: float
    interval: tuple[float, float]
    standard_error: float
    n: int
    p_value: float | None
    test: str | None  # which test gave p_value
    interval_method: str
    null: float | None = None  # the value "no effect" means (1/2 for a win rate, 0 for a difference)
    detectable: float | None = None  # 80% power, two-sided 5%: the true distance from ``null``
    detectable_basis: str | None = None  # what the detectable figure was computed from
    seeds: int = 1

    @property
    def detected(self) -> bool:
        """The test rejects "no effect" at 5%."""
        return self.p_value is not None and self.p_value < ALPHA

    def to_dict(self) -> dict:
        """The fields, whether it was detected, and its :func:`verdict` sentence."""
        out = {**asdict(self), "detected": self.detected}
        return {**out, "verdict": verdict(out)}


def verdict(estimate: dict, unit: str = "points") -> str:
    """``detected: above 0.5`` or ``no difference detectable at n = 500 (...)``, from an
    :class:`Estimate`'s dict."""
    null = estimate.get("null") or 0.0
    if estimate.get("p_value") is not None and estimate["p_value"] < ALPHA:
        return f"detected, {'above' if estimate['value'] > null else 'below'} {null:g}"
    need = estimate.get("detectable")
    shown = f"{100 * need:.1f} {unit} from {null:g}" if need is not None else "a larger difference"
    return (
        f"no difference detectable at n = {estimate['n']}"
        + (f" over {estimate['seeds']} seeds" if estimate.get("seeds", 1) > 1 else "")
        + f" ({shown} would be, {estimate.get('detectable_basis') or 'worst case'})"
    )


# --------------------------------------------------------------------------- building blocks


def _check_n(n: int) -> None:
    if n <= 0:
        raise ValueError("an estimate needs at least one item")


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test on the decisive pairs (ties excluded): P-value under p = 1/2."""
    if wins + losses == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5).pvalue)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (statsmodels' ``proportion_confint``)."""
    if n <= 0:
        return (0.0, 1.0)
    from statsmodels.stats.proportion import proportion_confint

    alpha = 2 * (1 - statistics.NormalDist().cdf(z))
    lo, hi = proportion_confint(successes, n, alpha=alpha, method="wilson")
    return (float(lo), float(hi))


def _paired_interval(plus: int, minus: int, n: int) -> tuple[float, float]:
    """Bonett-Price adjusted Wald 95% interval of ``(plus - minus) / n``."""
    p1, p2 = (plus + 1) / (n + 2), (minus + 1) / (n + 2)
    centre = p1 - p2
    half = Z95 * math.sqrt(max(p1 + p2 - centre**2, 0.0) / (n + 2))
    return (max(-1.0, centre - half), min(1.0, centre + half))


@functools.lru_cache(maxsize=4096)
def _detectable_paired(discordant: int, n: int) -> float:
    """The smallest |p_plus - p_minus| a test of paired proportions detects with 80% power, with
    ``discordant`` of ``n`` items discordant (decisive): null sd sqrt(q), alternative sd
    sqrt(q - d^2), q the discordant share (at least one item's worth)."""
    from scipy.optimize import brentq
    from statsmodels.stats.power import normal_power_het

    q = min(max(discordant, 1) / n, 1.0)

    def short(d: float) -> float:
        alternative = math.sqrt(max(q - d * d, 1e-12))
        return normal_power_het(d, n, ALPHA, std_null=math.sqrt(q), std_alternative=alternative) - POWER

    top = q * (1 - 1e-9)
    if short(top) < 0:  # even every discordant item one way is not enough at this n
        return q
    return float(brentq(short, 1e-12, top))


MIN_TO_SIZE = 5  # fewer discordant items than this: their share is not measured well enough to size a test


def _detectable(discordant: int, n: int, basis: str, kind: str) -> tuple[float, str]:
    """The detectable paired difference and what it rests on: this data's discordant share, or
    the worst case (every item discordant) when too few items are discordant to measure it."""
    if discordant < MIN_TO_SIZE:
        measured = "the share of ties" if kind == "decisive" else "how often the arms disagree"
        return (
            _detectable_paired(n, n),
            f"the worst case: only {discordant} {kind} item(s), too few to measure {measured}",
        )
    return _detectable_paired(discordant, n), basis


def planned_detectable(n: int, discordant_share: float) -> float:
    """For planning: the paired difference ``n`` items detect with 80% power if a share
    ``discordant_share`` of them turns out discordant (decisive, for a win rate: halve it for
    the distance from 1/2).

    Example:
        >>> round(planned_detectable(500, 0.1), 3)
        0.04
    """
    return _detectable_paired(max(1, round(discordant_share * n)), n)


def _score_sem(counts: dict[float, int]) -> float:
    """The standard error of the mean of per-item values given as {value: count} (ddof 1)."""
    n = sum(counts.values())
    if n < 2:
        return float("nan")
    mean = sum(v * c for v, c in counts.items()) / n
    return math.sqrt(sum(c * (v - mean) ** 2 for v, c in counts.items()) / (n - 1) / n)


def _sem(values) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


# --------------------------------------------------------------------------- the three estimators


def win_rate_estimate(wins: int, ties: int, losses: int) -> Estimate:
    """The win rate with ties as 1/2, its 95% interval, the exact sign test on decisive pairs,
    and the distance from 1/2 this n detects given this data's share of ties.

    Example:
        >>> e = win_rate_estimate(7, 480, 13)
        >>> round(e.value, 3), round(e.standard_error, 4)
        (0.494, 0.0045)
    """
    n = wins + ties + losses
    _check_n(n)
    lo, hi = _paired_interval(wins, losses, n)
    detectable, basis = _detectable(wins + losses, n, f"with this data's {100 * ties / n:.0f}% ties", "decisive")
    return Estimate(
        value=(wins + ties / 2) / n,
        interval=(0.5 + lo / 2, 0.5 + hi / 2),
        n=n,
        standard_error=_score_sem({1.0: wins, 0.5: ties, 0.0: losses}),
        p_value=sign_test(wins, losses),
        test="exact sign test on the decisive pairs",
        null=0.5,
        interval_method="Bonett-Price adjusted Wald (ties as their own outcome)",
        detectable=detectable / 2,
        detectable_basis=basis,
    )


def accuracy_estimate(correct: list) -> Estimate:
    """A proportion of 0/1 outcomes (reward accuracy: a pair is correct or not) with its Wilson
    interval. No test: whether it beats another arm is :func:`paired_difference`'s question.

    Example:
        >>> accuracy_estimate([1, 1, 0, 1]).value
        0.75
    """
    n = len(correct)
    _check_n(n)
    k = int(sum(1 for c in correct if c))
    p = k / n
    return Estimate(
        value=p,
        interval=wilson_interval(k, n),
        standard_error=math.sqrt(p * (1 - p) / n),
        n=n,
        p_value=None,
        test=None,
        interval_method="Wilson score",
    )


def paired_difference(a: list, b: list) -> Estimate:
    """``mean(a) - mean(b)`` for two arms' 0/1 outcomes on the same items, paired: the
    Bonett-Price interval, McNemar's exact test on the items where they disagree, and the
    difference this n detects given how often they disagree.

    Example:
        >>> e = paired_difference([1, 1, 0, 1, 1], [1, 0, 0, 1, 0])
        >>> e.value, e.test
        (0.4, "McNemar's exact test on the discordant items")
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same items: {len(a)} against {len(b)}")
    n = len(a)
    _check_n(n)
    from statsmodels.stats.contingency_tables import mcnemar

    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    both = sum(1 for x, y in zip(a, b) if x and y)
    table = [[both, a_only], [b_only, n - both - a_only - b_only]]
    detectable, basis = _detectable(
        a_only + b_only, n, f"paired, the arms disagree on {100 * (a_only + b_only) / n:.0f}% of items", "discordant"
    )
    p = float(mcnemar(table, exact=True).pvalue) if a_only + b_only else 1.0
    return Estimate(
        value=(a_only - b_only) / n,
        interval=_paired_interval(a_only, b_only, n),
        standard_error=_score_sem({1.0: a_only, -1.0: b_only, 0.0: n - a_only - b_only}),
        n=n,
        p_value=p,
        test="McNemar's exact test on the discordant items",
        interval_method="Bonett-Price adjusted Wald, paired",
        null=0.0,
        detectable=detectable,
        detectable_basis=basis,
    )


def win_scores(outcomes: list[int | None]) -> list[float]:
    """Judge outcomes (0: the model wins, 1: the baseline wins, None: tie) as per-prompt scores."""
    return [1.0 if o == 0 else 0.0 if o == 1 else 0.5 for o in outcomes]


# --------------------------------------------------------------------------- across seeds


def pooled(per_seed: list[list[float]], null: float | None = None, label: str = "", floor_se: float = 0.0) -> Estimate:
    """The mean over seeds of per-item outcomes ``per_seed[s][i]`` (every seed on the same items),
    with a 95% interval that carries the between-seed spread: crossed random effects of seed and
    item, the grand mean's variance ``(MS_item + MS_seed - MS_residual) / (n k)`` from the two-way
    ANOVA mean squares, Student's t with Satterthwaite's degrees of freedom. With one seed it is
    the items' interval alone (the between-seed spread is not measured). ``floor_se``: the least
    standard error to report (callers pass the per-seed intervals' own, over sqrt(k)), so that
    outcomes that happen to be identical everywhere (every prompt a tie) get no zero-width interval.

    Example:
        >>> e = pooled([[1, 0.5, 0.5, 0], [1, 1, 0.5, 0.5]], null=0.5)
        >>> e.value, e.seeds
        (0.625, 2)
    """
    import numpy as np
    from scipy import stats as scipy_stats

    lengths = {len(s) for s in per_seed}
    if len(lengths) != 1:
        raise ValueError(f"pooling over seeds needs every seed on the same items: {sorted(lengths)} items")
    y = np.asarray(per_seed, dtype=float)
    k, n = y.shape
    _check_n(n)
    grand = float(y.mean())
    if k == 1:
        variance, df = float(y[0].var(ddof=1)) / n if n > 1 else 0.0, n - 1
        method = "one seed: items only (the between-seed spread is not measured)"
    else:
        item_means, seed_means = y.mean(0), y.mean(1)
        ms_item = k * float(item_means.var(ddof=1)) if n > 1 else 0.0
        ms_seed = n * float(seed_means.var(ddof=1))
        resid = y - item_means[None, :] - seed_means[:, None] + grand
        ms_resid = float((resid**2).sum()) / ((k - 1) * (n - 1)) if n > 1 else 0.0
        variance = max(ms_item + ms_seed - ms_resid, ms_seed, 0.0) / (n * k)
        parts = [(ms_item, n - 1), (ms_seed, k - 1), (ms_resid, (k - 1) * (n - 1))]
        denominator = sum(ms * ms / d for ms, d in parts if d > 0)
        df = (ms_item + ms_seed - ms_resid) ** 2 / denominator if denominator > 0 else k - 1
        df = min(max(df, k - 1), k * n - 1)
        method = "crossed seeds x items (two-way ANOVA, Satterthwaite t)"
    se = max(math.sqrt(variance), floor_se)
    t = float(scipy_stats.t.ppf(0.975, df)) if df >= 1 else float("inf")
    p = None
    if null is not None:
        p = (
            1.0
            if se == 0 and grand == null
            else 0.0
            if se == 0
            else float(2 * scipy_stats.t.sf(abs(grand - null) / se, df))
            if df >= 1
            else 1.0
        )
    detectable = None
    if df >= 1 and se > 0:  # the t test's 80%-power distance, at this spread (noncentrality t_a + t_b)
        detectable = (t + float(scipy_stats.t.ppf(POWER, df))) * se
    return Estimate(
        value=grand,
        interval=(grand - t * se, grand + t * se) if math.isfinite(t * se) else (float("-inf"), float("inf")),
        standard_error=se,
        n=n,
        p_value=p,
        test=f"t test over {k} seeds x {n} items" if null is not None else None,
        interval_method=method,
        null=null,
        detectable=detectable,
        detectable_basis=f"this data's spread over {k} seeds" + (f" ({label})" if label else ""),
        seeds=k,
    )


def paired_permutation_test(a: list[float], b: list[float]) -> float:
    """Exact two-sided sign-flip test of mean(a - b) = 0 for paired samples (e.g. seeds)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired test needs two lists of the same, non-zero length")
    from scipy.stats import permutation_test

    diffs = [x - y for x, y in zip(a, b)]
    result = permutation_test(
        (diffs,), lambda d: sum(d), permutation_type="samples", n_resamples=float("inf"), alternative="two-sided"
    )
    return min(1.0, float(result.pvalue))


def bootstrap_interval(
    values: list, statistic=statistics.fmean, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over examples (margins, KL: statistics
    with no closed form here)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    draws = sorted(statistic([values[rng.randrange(n)] for _ in range(n)]) for _ in range(n_boot))
    lo = draws[int((1 - level) / 2 * n_boot)]
    hi = draws[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return (lo, hi)


Z80_POWER = 0.8416212335729143  # standard normal quantile at 0.80


def detectable_difference(
    n: int, two_samples: bool = True, p: float = 0.5, z_alpha: float = Z95, z_power: float = Z80_POWER
) -> float:
    """The worst-case smallest difference in a proportion that ``n`` items detect with a
    two-sided 5% test and 80% power (normal approximation at ``p``; 1/2, no ties, independent
    samples is the worst case): for planning, before anything is measured. Once outcomes exist,
    the estimators above give the figure for the data's own spread and pairing.

    ``two_samples``: two arms measured on ``n`` items each, treated as independent; otherwise
    one arm against a fixed value (a win rate against 1/2)."""
    if n <= 0:
        return float("nan")
    return (z_alpha + z_power) * math.sqrt(p * (1 - p) * ((2 if two_samples else 1) / n))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (statsmodels' ``multipletests``): each
    adjusted p is read against 5% for a family-wise error rate of 5%.

    Example:
        >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
    """
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(p_values, alpha=0.05, method="holm")[1]]
