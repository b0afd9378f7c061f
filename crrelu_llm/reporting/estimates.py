"""Every seed's estimate and the pooled one, from result files: what the report, the console
table and the reading all say about an arm, computed once.

Input: for one arm and one comparison, the results of each seed (a win-rate result's ``stats``,
a rewards result). Output: per seed an :class:`~crrelu_llm.stats.Estimate` (as a dict), and one
pooled over seeds (:func:`crrelu_llm.stats.pooled`: seeds and items crossed, so its interval
carries the between-seed spread). Two arms' reward accuracies are compared paired, on the same
pairs, seed by seed (McNemar) and pooled over seeds.

Example:
    >>> stats = {"wins": 1, "ties": 2, "losses": 1, "n": 4, "scores": [1.0, 0.5, 0.5, 0.0]}
    >>> entry = win_rates([{"seed": 0, "stats": stats}])
    >>> entry["seeds"], entry["pooled_note"][:8]
    (1, 'one seed')
"""

from __future__ import annotations

from crrelu_llm.stats import (
    Z95,
    accuracy_estimate,
    paired_difference,
    paired_permutation_test,
    pooled,
    win_rate_estimate,
)

ONE_SEED = "one seed: the between-seed spread is not measured"


def _pool(
    per_seed: list[list[float]] | None, null: float | None, why_not: str | None, seed_estimates: list[dict]
) -> tuple[dict | None, str]:
    if per_seed is None:
        return None, why_not or "not pooled"
    # the least standard error: the seeds' own intervals (pseudo-counts: never zero), over sqrt(k)
    halves = [(e["interval"][1] - e["interval"][0]) / (2 * Z95) for e in seed_estimates]
    floor = (sum(halves) / len(halves)) / len(halves) ** 0.5 if halves else 0.0
    estimate = pooled(per_seed, null=null, floor_se=floor).to_dict()
    return estimate, ONE_SEED if len(per_seed) == 1 else (
        f"pooled over {len(per_seed)} seeds: seeds and items crossed, the interval carries the between-seed spread"
    )


def win_rates(results: list[dict]) -> dict:
    """``results``: ``[{"seed", "stats", ...}]`` of one arm against one baseline, one per seed.
    Each gets its estimate (recomputed from its counts: an older result's Wilson interval is
    not reused); the pooled estimate needs every seed's per-prompt scores on the same prompts."""
    per_seed = []
    for r in results:
        s = r["stats"]
        per_seed.append(
            {
                **{k: v for k, v in r.items() if k != "stats"},
                "wins": s["wins"],
                "ties": s["ties"],
                "losses": s["losses"],
                "n": s["n"],
                "estimate": win_rate_estimate(s["wins"], s["ties"], s["losses"]).to_dict(),
                "length_controlled": s.get("length_controlled"),
            }
        )
    scores = [r["stats"].get("scores") for r in results]
    why = None
    if any(s is None for s in scores):
        why = "a result predates per-prompt scores: rerun its win-rate evaluation to pool it"
        scores = None
    elif len({len(s) for s in scores}) > 1:
        why = "the seeds were judged on different numbers of prompts"
        scores = None
    estimate, note = _pool(scores, 0.5, why, [p["estimate"] for p in per_seed])
    return {"per_seed": per_seed, "pooled": estimate, "pooled_note": note, "seeds": len(results)}


def accuracies(results: list[dict]) -> dict:
    """``results``: ``[{"seed", "rewards", ...}]`` of one arm. Each seed's Wilson estimate, and
    the pooled one over the per-pair outcomes."""
    per_seed, correct = [], []
    for r in results:
        rewards = r["rewards"]
        outcome = rewards.get("correct")
        estimate = (
            accuracy_estimate(outcome).to_dict()
            if outcome
            else {"value": rewards["accuracy"], "interval": rewards["accuracy_interval"], "n": rewards["n"]}
        )
        per_seed.append(
            {**{k: v for k, v in r.items() if k != "rewards"}, "estimate": estimate, "ties": rewards.get("ties")}
        )
        correct.append(outcome)
    why = None
    if any(c is None for c in correct):
        why, correct = "a result predates per-pair outcomes: rerun its eval rewards to pool it", None
    elif len({len(c) for c in correct}) > 1:
        why, correct = "the seeds were scored on different numbers of pairs", None
    estimate, note = _pool(correct, None, why, [p["estimate"] for p in per_seed])
    return {"per_seed": per_seed, "pooled": estimate, "pooled_note": note, "seeds": len(results)}


def paired_accuracies(arm: dict[int, dict], baseline: dict[int, dict]) -> dict | None:
    """``arm`` and ``baseline``: seed -> rewards result. Per seed both have, the paired
    difference of their reward accuracies on the same pairs (McNemar), and the pooled
    difference over those seeds. None when no seed has per-pair outcomes on both sides."""
    per_seed, diffs, skipped = [], [], []
    for seed in sorted(set(arm) & set(baseline), key=lambda s: (s is None, s)):
        a, b = arm[seed].get("correct"), baseline[seed].get("correct")
        if a is None or b is None or len(a) != len(b):
            skipped.append(seed)
            continue
        per_seed.append({"seed": seed, "estimate": paired_difference(a, b).to_dict()})
        diffs.append([x - y for x, y in zip(a, b)])
    if not per_seed:
        return None
    estimate, note = _pool(diffs, 0.0, None, [p["estimate"] for p in per_seed])
    if skipped:
        note += f"; seeds {skipped} left out (no per-pair outcomes on both sides)"
    return {"per_seed": per_seed, "pooled": estimate, "pooled_note": note, "seeds": len(per_seed)}


METRICS = ("reward accuracy (eval rewards)", "TRL's eval_rewards/accuracies (batch mean, ties as wrong)")


def over_seeds(label: str, ours: tuple[dict, dict], baseline: str, theirs: tuple[dict, dict]) -> dict | None:
    """The exact sign-flip test over the seeds two arms share, on the first metric both have for
    at least two seeds: ``ours``/``theirs`` are (seed -> our reward accuracy, seed -> TRL's)."""
    for metric, a, b in zip(METRICS, ours, theirs):
        common = [s for s in a if s in b]
        if len(common) >= 2:
            return {
                "arms": [label, baseline],
                "metric": metric,
                "pairs": len(common),
                "seeds": common,
                "p_value": paired_permutation_test([a[s] for s in common], [b[s] for s in common]),
                "test": "exact sign-flip permutation over seeds",
            }
    return None


def interval_text(estimate: dict, digits: int = 3) -> str:
    lo, hi = estimate["interval"]
    return f"{estimate['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
