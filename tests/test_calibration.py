"""The contract of every interval, test and "detectable" figure (crrelu_llm.stats), by simulation
with known truth, and against the field's own implementations of the same estimators.

Coverage: each 95% interval covers the true value in 93-97% of replicates. Power: at the
detectable difference the estimator reports for such data, its test rejects in 75-85% of
replicates. Seeded; 2000 replicates per cell. The evaluation sizes are the ones experiments use
(200 and 500 items). With fewer than 20 decisive items expected (95% ties at n = 200) the
interval's pseudo-counts and the exact test are conservative: coverage up to 99% and power down
to 70% are accepted there, and docs/evaluation.md says so.
"""

import math

import numpy as np
import pytest

from crrelu_llm.stats import accuracy_estimate, paired_difference, pooled, win_rate_estimate

R = 2000
LOW, HIGH = 0.93, 0.97
POWER_LOW, POWER_HIGH = 0.75, 0.85


def _expected_counts(n, decisive_share, effect=0.0):
    wins = round(n * (decisive_share / 2 + effect))
    losses = round(n * (decisive_share / 2 - effect))
    return wins, n - wins - losses, losses


@pytest.mark.parametrize("n", [200, 500])
@pytest.mark.parametrize("tie_share", [0.0, 0.25, 0.5, 0.75, 0.9, 0.95])
def test_win_rate_interval_covers_and_its_detectable_difference_has_80_percent_power(n, tie_share):
    few = n * (1 - tie_share) < 20  # the pseudo-counts and the exact test are conservative there (documented)
    rng = np.random.default_rng(int(100 * tie_share) + n)
    q = 1 - tie_share
    detectable = win_rate_estimate(*_expected_counts(n, q)).detectable  # what a user is told for such data
    for effect in (0.0, detectable):
        truth = 0.5 + effect
        p_win, p_loss = q / 2 + effect, q / 2 - effect
        counts = rng.multinomial(n, [p_win, 1 - p_win - p_loss, p_loss], size=R)
        estimates = [win_rate_estimate(int(w), int(t), int(losses)) for w, t, losses in counts]
        coverage = np.mean([e.interval[0] <= truth <= e.interval[1] for e in estimates])
        rejected = np.mean([e.detected for e in estimates])
        assert LOW <= coverage <= (0.99 if few else HIGH), (n, tie_share, effect, coverage)
        if effect:
            assert (0.70 if few else POWER_LOW) <= rejected <= POWER_HIGH, (n, tie_share, effect, rejected)
        else:
            assert rejected <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / R)  # the test's size


@pytest.mark.parametrize("disagreement", [0.05, 0.1, 0.25, 0.5])
def test_paired_difference_covers_and_its_detectable_difference_has_80_percent_power(disagreement):
    n = 500
    rng = np.random.default_rng(int(1000 * disagreement))
    a_only, _, b_only = _expected_counts(n, disagreement)
    detectable = paired_difference(
        [1] * a_only + [0] * (n - a_only), [0] * a_only + [1] * b_only + [0] * (n - a_only - b_only)
    ).detectable
    for effect in (0.0, detectable):
        p_a, p_b = disagreement / 2 + effect / 2, disagreement / 2 - effect / 2
        base = 0.7 - p_a  # both right on the rest of a 0.7-accurate arm's correct items
        cells = rng.multinomial(n, [base, p_a, p_b, 1 - base - p_a - p_b], size=R)
        covered = rejected = 0
        for both, only_a, only_b, neither in cells:
            a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
            b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
            e = paired_difference(a, b)
            covered += e.interval[0] <= effect <= e.interval[1]
            rejected += e.detected
        assert LOW <= covered / R <= HIGH, (disagreement, effect, covered / R)
        if effect:
            assert POWER_LOW <= rejected / R <= POWER_HIGH, (disagreement, effect, rejected / R)


@pytest.mark.parametrize("p", [0.5, 0.8, 0.95])
def test_accuracy_interval_covers(p):
    rng = np.random.default_rng(int(100 * p))
    n = 500
    hits = rng.binomial(n, p, size=R)
    covered = np.mean(
        [(lambda e: e.interval[0] <= p <= e.interval[1])(accuracy_estimate([1] * k + [0] * (n - k))) for k in hits]
    )
    assert LOW <= covered <= HIGH, (p, covered)


@pytest.mark.parametrize("seed_spread", [0.0, 0.05])
@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_pooled_interval_over_seeds_covers_with_item_and_seed_spread(seeds, seed_spread):
    """Seeds and items crossed, as in an experiment: every seed's model is judged on the same
    prompts. Prompt i is easier or harder by a_i, seed s's model better or worse by b_s; the
    arm's true win rate (over prompts and seeds) is 0.55."""
    rng = np.random.default_rng(seeds * 10 + int(100 * seed_spread))
    n, truth, replicates = 200, 0.55, 1000
    covered = 0
    for _ in range(replicates):
        a = rng.uniform(-0.15, 0.15, size=n)
        b = rng.uniform(-seed_spread, seed_spread, size=seeds)
        rows = []
        for shift in b:
            p_win = 0.35 + shift + a  # ties 0.4 everywhere: mean score p_win + 0.2
            u = rng.random(n)
            rows.append(list(np.where(u < p_win, 1.0, np.where(u < p_win + 0.4, 0.5, 0.0))))
        e = pooled(rows, null=0.5)
        covered += e.interval[0] <= truth <= e.interval[1]
    assert LOW <= covered / replicates <= HIGH, (seeds, seed_spread, covered / replicates)


# --------------------------------------------------------------------------- the field's own implementations


def test_win_rate_and_standard_error_are_alpacaevals():
    """AlpacaEval's ``describe_head2head``: preference 1 (baseline), 1.5 (tie) or 2 (model);
    win_rate = mean(pref - 1), standard_error = scipy.stats.sem(pref - 1)."""
    from scipy.stats import sem

    for wins, ties, losses in [(7, 480, 13), (71, 399, 30), (250, 0, 250), (3, 10, 1)]:
        preference = np.array([2.0] * wins + [1.5] * ties + [1.0] * losses)
        e = win_rate_estimate(wins, ties, losses)
        assert e.value == pytest.approx(float(np.mean(preference - 1)), abs=1e-12)
        assert e.standard_error == pytest.approx(float(sem(preference - 1)), rel=1e-9)
    # the demo's gelu DPO vs its SFT start: the interval is about +-1.96 standard errors, not Wilson's +-0.044
    e = win_rate_estimate(7, 480, 13)
    assert e.interval == pytest.approx((0.485, 0.503), abs=1e-3)
    assert (e.interval[1] - e.interval[0]) / (2 * 1.96 * e.standard_error) == pytest.approx(1, abs=0.1)
    assert e.detectable == pytest.approx(0.0125, abs=5e-4) and "96% ties" in e.detectable_basis


def test_paired_difference_is_mcnemars_exact_test():
    from statsmodels.stats.contingency_tables import mcnemar

    rng = np.random.default_rng(3)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.75
    e = paired_difference(list(a), list(b))
    table = [[int(np.sum(a & b)), int(np.sum(a & ~b))], [int(np.sum(~a & b)), int(np.sum(~a & ~b))]]
    assert e.p_value == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    assert e.value == pytest.approx(a.mean() - b.mean())


def _glm_rate(scores, terms):
    # the GLM module itself: statsmodels.api also imports its time-series code, which the lowest
    # statsmodels this project allows cannot import beside a newer pandas
    from statsmodels.genmod.families import Binomial
    from statsmodels.genmod.generalized_linear_model import GLM

    design = np.column_stack([np.ones(len(terms)), np.asarray(terms)])
    fit = GLM(np.asarray(scores), design, family=Binomial()).fit(tol=1e-12)
    return 1 / (1 + math.exp(-fit.params[0]))


def _lc(wins, losses, ties, rng):
    """Outcomes and lengths: wins, losses and ties at random length differences."""
    from crrelu_llm.evaluation.length_control import length_controlled_win_rate

    outcomes = [0] * wins + [1] * losses + [None] * ties
    model = [int(x) for x in rng.integers(5, 40, size=len(outcomes))]
    baseline = [int(x) for x in rng.integers(5, 40, size=len(outcomes))]
    return outcomes, model, baseline, length_controlled_win_rate(outcomes, model, baseline, n_boot=20)


def _terms(model, baseline):
    d = np.asarray(model, float) - np.asarray(baseline, float)
    return list(np.tanh(d / d.std()))


@pytest.mark.parametrize("wins,losses,ties", [(40, 25, 135), (25, 0, 275), (0, 12, 100), (60, 40, 0)])
def test_length_controlled_rate_is_statsmodels_glm(wins, losses, ties):
    """The same formula fitted by statsmodels' GLM(Binomial) (IRLS to 1e-12): the rate agrees to
    1e-6, ties included (a tie is half a win and half a loss), and one-sided decisive pairs with
    ties at many lengths have a finite fit."""
    from crrelu_llm.stats import win_scores

    outcomes, model, baseline, lc = _lc(wins, losses, ties, np.random.default_rng(wins + ties))
    assert lc["value"] is not None, lc
    assert lc["value"] == pytest.approx(_glm_rate(win_scores(outcomes), _terms(model, baseline)), abs=1e-6)


def test_length_controlled_rate_is_undefined_exactly_where_no_finite_fit_exists():
    from crrelu_llm.evaluation.length_control import length_controlled_win_rate

    # a length-only judge: the shorter response wins, equal lengths tie; a win and a loss share no
    # difference, but the ties sit at the one difference (0) where wins end and losses begin
    model = [10, 12, 8, 20, 15, 9, 30, 11, 14, 13, 7, 25, 16, 18, 10, 12]
    baseline = [12, 10, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 10, 12]
    outcomes = [0 if m < b else 1 if m > b else None for m, b in zip(model, baseline)]
    assert length_controlled_win_rate(outcomes, model, baseline)["value"] is None
    # wins at d <= 2, losses at d >= 2, a win and a loss both at d = 2: quasi-separated, no finite fit
    model = [12, 13, 14, 14, 14, 16, 17, 18, 11, 10, 14, 19]
    baseline = [12] * 12
    outcomes = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    result = length_controlled_win_rate(outcomes, model, baseline)
    assert result["value"] is None and "separates" in result["undefined"]
    # equal lengths: no variation to fit
    assert length_controlled_win_rate([0, 1] * 10, [5] * 20, [5] * 20)["value"] is None
