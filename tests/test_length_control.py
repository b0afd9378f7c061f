"""Length-controlled win rates (crrelu_llm.evaluation.length_control): a judge that prefers the
shorter answer and nothing else moves the raw win rate, not the length-controlled one."""

import math
import random

import pytest

from crrelu_llm.errors import EvaluationError
from crrelu_llm.evaluation.length_control import describe, length_controlled_win_rate


def _judged(n: int, shorter_share: float, seed: int = 1, quality: float = 0.0):
    """(outcomes, model lengths, baseline lengths): the model's response is the shorter one in
    ``shorter_share`` of the prompts; the judge prefers the shorter answer (by length, noisily) plus
    a ``quality`` edge for the model (0: none)."""
    rng = random.Random(seed)
    outcomes, ours, theirs = [], [], []
    for _ in range(n):
        base, gap = rng.randint(20, 80), rng.randint(1, 30)
        mine = base - gap if rng.random() < shorter_share else base + gap
        p_model = 1 / (1 + math.exp((mine - base) / 6 - quality))
        outcomes.append(0 if rng.random() < p_model else 1)
        ours.append(mine)
        theirs.append(base)
    return outcomes, ours, theirs


@pytest.mark.parametrize("shorter_share", [0.5, 0.9])
def test_a_judge_that_prefers_shorter_answers_moves_the_raw_rate_not_the_length_controlled_one(shorter_share):
    outcomes, ours, theirs = _judged(300, shorter_share)
    lc = length_controlled_win_rate(outcomes, ours, theirs, n_boot=300)
    raw = lc["raw_win_rate"]
    assert raw == pytest.approx(sum(o == 0 for o in outcomes) / 300)
    if shorter_share == 0.9:
        assert raw > 0.75  # the raw rate follows the length difference...
    lo, hi = lc["interval"]
    assert lo < 0.5 < hi and abs(lc["value"] - 0.5) < 0.12  # ...the length-controlled one sits near 0.5
    assert lc["n"] == 300 and lc["length_coefficient"] < 0 and lc["bootstrap_resamples"] > 250


def test_a_real_edge_survives_length_control():
    outcomes, ours, theirs = _judged(300, 0.5, quality=1.5)
    lc = length_controlled_win_rate(outcomes, ours, theirs, n_boot=300)
    assert lc["interval"][0] > 0.6


def test_undefined_rates_say_why():
    outcomes, ours, theirs = _judged(100, 0.5)
    same = length_controlled_win_rate(outcomes, [10] * 100, [7] * 100)
    assert same["value"] is None and "no variation" in same["undefined"]
    few = length_controlled_win_rate([0, 1, None, None, 0], [1, 2, 3, 4, 5], [2, 2, 2, 2, 2])
    assert few["value"] is None and "only 3 decisive pairs" in few["undefined"]
    by_length = length_controlled_win_rate([0 if a < b else 1 for a, b in zip(ours, theirs)], ours, theirs)
    assert by_length["value"] is None and "length alone separates" in by_length["undefined"]
    assert describe(by_length).startswith("length-controlled: undefined (length alone separates")
    one_way = length_controlled_win_rate([0] * 50, ours[:50], theirs[:50])
    assert "every pair went to the model" in one_way["undefined"]
    with pytest.raises(EvaluationError):
        length_controlled_win_rate([0], [1, 2], [1])
