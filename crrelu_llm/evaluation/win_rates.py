"""A judged comparison summarised: a judge's verdict per prompt (model against baseline) in, the
win rate with its interval, test and detectable difference (:mod:`crrelu_llm.stats`), the length
of both sides' texts and the position consistency out (:class:`WinRate`).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from crrelu_llm.stats import win_rate_estimate, win_scores


def length_stats(texts: list[str]) -> dict:
    lengths = [len(t) for t in texts]
    if not lengths:
        return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
    return {
        "mean": statistics.fmean(lengths),
        "median": statistics.median(lengths),
        "min": min(lengths),
        "max": max(lengths),
    }


@dataclass
class WinRate:
    wins: int
    ties: int
    losses: int
    n: int
    win_rate: float  # ties count 1/2
    interval: tuple[float, float]  # 95%, Bonett-Price (ties as their own outcome)
    sign_test_p: float  # exact, decisive pairs only
    position_consistency: float | None  # pairwise judges: share of pairs judged the same in both orders
    length_model: dict
    length_baseline: dict
    estimate: dict | None = None  # the full :class:`Estimate` (standard error, test, detectable difference)
    scores: list | None = None  # per prompt, in prompt order: 1 win, 0.5 tie, 0 loss
    # crrelu_llm.evaluation.length_control: value, 95% interval and n (value None, with the reason, if undefined)
    length_controlled: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate(
    outcomes: list[int | None],
    model_texts: list[str],
    baseline_texts: list[str],
    consistent: list[bool | None] | None = None,
) -> WinRate:
    """Summarise judge outcomes of (model, baseline) pairs: 0 = model wins, 1 = baseline wins,
    None = tie."""
    wins = sum(o == 0 for o in outcomes)
    losses = sum(o == 1 for o in outcomes)
    ties = len(outcomes) - wins - losses
    estimate = win_rate_estimate(wins, ties, losses)
    flags = [c for c in (consistent or []) if c is not None]
    return WinRate(
        wins=wins,
        ties=ties,
        losses=losses,
        n=len(outcomes),
        win_rate=estimate.value,
        interval=estimate.interval,
        sign_test_p=estimate.p_value,
        position_consistency=(sum(flags) / len(flags)) if flags else None,
        length_model=length_stats(model_texts),
        length_baseline=length_stats(baseline_texts),
        estimate=estimate.to_dict(),
        scores=win_scores(outcomes),
    )
