"""Length-controlled win rates: what a judge's preference says once the length difference is
accounted for (Dubois et al. 2024, AlpacaEval 2.0's length-controlled GLM).

Each prompt's judgment (win 1, tie 1/2, loss 0 for the model) is regressed, by logistic
regression (scikit-learn), on a model term (an intercept: one model against one baseline) and
``tanh(d / sd(d))``, with ``d`` the model's response length minus the baseline's in tokens of the
policy's tokenizer. The length-controlled win rate is ``sigmoid(intercept)``: the predicted win
rate at equal length. AlpacaEval's per-instruction difficulty term is left out: it is estimated
on its own 805 prompts and undefined elsewhere.

The fit is the plain maximum-likelihood one (no penalty). It has no finite solution when the
verdicts are separated by length (every win at a length difference no smaller than every loss's,
ties all at that one difference, say: a judge that decides by length and nothing else) or all
went one way with no tie; the rate is then undefined, with the reason, as it is with no
variation in length or too few decisive pairs. A tie counts as half a win and half a loss, so
ties at two or more length differences keep the fit finite (``tests/test_calibration.py``
checks the fit and this condition against statsmodels' ``GLM(Binomial)``). The 95% interval is a
percentile bootstrap over prompts; resamples that are separated in the same way are left out and
counted.
"""

from __future__ import annotations

import math
import random
import statistics
import warnings

from crrelu_llm.errors import EvaluationError

MIN_DECISIVE = 10  # fewer wins + losses than this: no fit worth printing
N_BOOT = 1000


def _fit(scores: list[float], terms: list[float]) -> tuple[float, float]:
    """(model term, length coefficient) of the logistic fit."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    n = len(scores)
    # a fractional outcome y is the binomial likelihood of one success with weight y and one
    # failure with weight 1 - y: each row becomes (term, 1; y) and (term, 0; 1 - y)
    x = np.asarray(terms * 2, dtype=float).reshape(-1, 1)
    y = np.asarray([1] * n + [0] * n)
    weights = np.asarray(scores + [1.0 - s for s in scores], dtype=float)
    keep = weights > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs' convergence chatter on nearly separated resamples
        # C = inf: no penalty (scikit-learn's spelling from 1.8 on; penalty=None goes in 1.10, older ones read it too)
        fit = LogisticRegression(C=np.inf, fit_intercept=True, max_iter=10000, tol=1e-10)
        fit.fit(x[keep], y[keep], weights[keep])
    return float(fit.intercept_[0]), float(fit.coef_[0][0])


def _separated(scores: list[float], terms: list[float]) -> str | None:
    """Why the weighted rows admit no finite fit, or None: the exact condition for a logistic fit
    of one covariate and an intercept. A win is a row of class 1, a loss of class 0, a tie one
    of each (weight 1/2). The maximum-likelihood estimate is infinite exactly when some threshold
    c puts every class-1 row on one side (inclusive) and every class-0 row on the other
    (quasi-complete separation), or when one class is empty. So ties at two or more length
    differences always keep it finite, and a win and a loss at one shared difference do not."""
    ones = [t for s, t in zip(scores, terms) if s > 0]
    zeros = [t for s, t in zip(scores, terms) if s < 1]
    if not zeros or not ones:
        return f"every pair went to the {'model' if ones else 'baseline'}"
    if max(zeros) <= min(ones) or max(ones) <= min(zeros):
        side = "longer" if max(zeros) <= min(ones) else "shorter"
        return (
            f"length alone separates the verdicts (the model never lost where its response was the {side} "
            "one, nor won where it was not), so the judge's verdicts cannot be told apart from a length "
            "preference"
        )
    return None


def _undefined(reason: str, n: int) -> dict:
    return {"value": None, "interval": None, "n": n, "undefined": reason}


def length_controlled_win_rate(
    outcomes: list[int | None],
    model_lengths: list[int],
    baseline_lengths: list[int],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict:
    """``{"value", "interval", "n", "length_coefficient", "unit"}`` from judge ``outcomes`` (0: the
    model wins, 1: the baseline wins, None: tie) and the responses' lengths; ``value`` None with
    ``undefined`` (the reason) when no length-controlled rate can be given."""
    if not len(outcomes) == len(model_lengths) == len(baseline_lengths):
        raise EvaluationError("outcomes and both length lists must have one entry per prompt")
    n = len(outcomes)
    scores = [1.0 if o == 0 else 0.0 if o == 1 else 0.5 for o in outcomes]
    diffs = [float(a - b) for a, b in zip(model_lengths, baseline_lengths)]
    wins, losses = outcomes.count(0), outcomes.count(1)
    if n < 2 or statistics.pstdev(diffs) == 0:
        return _undefined(
            "no variation in the length difference between the model's and the baseline's "
            "responses, so length and model cannot be told apart",
            n,
        )
    if wins + losses < MIN_DECISIVE:
        return _undefined(f"only {wins + losses} decisive pairs (wins + losses); the fit needs {MIN_DECISIVE}", n)
    sd = statistics.pstdev(diffs)
    terms = [math.tanh(d / sd) for d in diffs]
    if why := _separated(scores, terms):
        return _undefined(why + ": the model term has no finite estimate", n)
    theta, slope = _fit(scores, terms)
    rng = random.Random(seed)
    draws = []
    for _ in range(n_boot):
        pick = [rng.randrange(n) for _ in range(n)]
        sample = [scores[i] for i in pick]
        picked_terms = [terms[i] for i in pick]
        if _separated(sample, picked_terms):
            continue  # no finite model term in this resample
        draws.append(_sigmoid(_fit(sample, picked_terms)[0]))
    draws.sort()
    interval = (draws[int(0.025 * len(draws))], draws[min(len(draws) - 1, int(0.975 * len(draws)))]) if draws else None
    return {
        "value": _sigmoid(theta),
        "interval": interval,
        "n": n,
        "unit": "tokens of the policy's tokenizer",
        "length_coefficient": slope,
        "bootstrap_resamples": len(draws),
        "length_sd": sd,
        "raw_win_rate": sum(scores) / n,
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Each text's length in tokens of ``tokenizer`` (no special tokens)."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def describe(entry: dict | None) -> str:
    """``length-controlled 0.512 [0.43, 0.59], n = 200`` or ``length-controlled: undefined (why)``."""
    if not entry:
        return "length-controlled: not computed (a result from before length control)"
    if entry.get("value") is None:
        return f"length-controlled: undefined ({entry.get('undefined')})"
    lo, hi = entry["interval"] or (float("nan"), float("nan"))
    return f"length-controlled {entry['value']:.3f} [{lo:.3f}, {hi:.3f}], n = {entry['n']}"
