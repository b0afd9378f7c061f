"""The paper's mechanism, measured: the output entropy a correction adds to its base, per layer,
checked against an independent computation (numpy, finite differences, written out here)."""

import math

import numpy as np
import pytest
import torch

from crrelu_llm.ops.activation import CRReLU
from crrelu_llm.ops.candidates import CorrectedActivation
from crrelu_llm.ops.entropy import entropy_change


def _gelu_tanh(s):
    return 0.5 * s * (1 + np.tanh(math.sqrt(2 / math.pi) * (s + 0.044715 * s**3)))


def _independent(arm, base, s, threshold):
    """Mean of log|f_arm'| - log|f_base'| over s > threshold, central differences in float64."""
    s = s[s > threshold]
    h = 1e-5
    d_arm = (arm(s + h) - arm(s - h)) / (2 * h)
    d_base = (base(s + h) - base(s - h)) / (2 * h)
    return float(np.mean(np.log(np.abs(d_arm)) - np.log(np.abs(d_base)))), s.size


@pytest.mark.parametrize("mu, sigma", [(0.0, 1.0), (-1.5, 0.7)])
@pytest.mark.parametrize("eps", [0.01, -0.01, 0.3])
def test_entropy_change_matches_an_independent_computation_and_its_sign(mu, sigma, eps):
    s = np.random.default_rng(0).normal(mu, sigma, 200_000)
    x = torch.from_numpy(s)

    def bump(v):
        return eps * v * np.exp(-v * v / 2)

    # CRReLU against ReLU, on s > 0 (ReLU's outputs below are exactly zero: left out, share apart)
    total, covered, _ = entropy_change(CRReLU(epsilon_init=eps), x)
    expected, n = _independent(lambda v: np.maximum(v, 0) + bump(v), lambda v: np.maximum(v, 0), s, 0.0)
    assert covered == n and total / covered == pytest.approx(expected, rel=1e-5, abs=1e-9)
    # corrected GELU (tanh form) against GELU, above GELU's turning point
    module = CorrectedActivation("gelu_new", epsilon_init=eps)
    total, covered, _ = entropy_change(module, x)
    expected, n = _independent(lambda v: _gelu_tanh(v) + bump(v), _gelu_tanh, s, -0.7525)
    assert covered == n and total / covered == pytest.approx(expected, rel=1e-4, abs=1e-8)
    # the sign for CRReLU under N(0, 1): dH/deps = E[(1 - S^2) exp(-S^2/2) | S > 0] > 0, so eps > 0 raises it
    if (mu, sigma) == (0.0, 1.0) and abs(eps) == 0.01:
        crrelu = entropy_change(CRReLU(epsilon_init=eps), x)
        assert math.copysign(1, crrelu[0]) == math.copysign(1, eps)
        slope = 2 * np.mean(np.where(s > 0, (1 - s * s) * np.exp(-s * s / 2), 0.0))  # conditional on S > 0
        assert crrelu[0] / crrelu[1] == pytest.approx(eps * slope, rel=0.02)  # first order: eps * 1/(2*sqrt(2))


def test_the_probe_reports_entropy_change_per_layer_and_leaves_a_model_as_it_was():
    from crrelu_llm import patch_model
    from crrelu_llm.patching.probe import activation_statistics, reference_activations
    from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm("gpt2")
    references = reference_activations(model)  # taken before the patch: GELU
    patch_model(model, "crrelu", epsilon_init=-0.05)
    layers = activation_statistics(model, tiny_tokenizer(), [("1+1=", "2."), ("3+4=", "7.")], references)
    for layer in layers:
        assert layer["entropy_change"] < 0  # eps < 0 lowers it
        assert layer["entropy_change_share"] == pytest.approx(1 - layer["share_negative"], abs=1e-9)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    plain = tiny_causal_lm("gpt2")
    layers = activation_statistics(plain, tiny_tokenizer(), [("1+1=", "2.")], reference_activations(plain))
    assert all(layer["entropy_change"] is None and layer["entropy_change_share"] is None for layer in layers)


@pytest.mark.slow
def test_the_report_has_a_mechanism_section_for_the_corrected_arms(demo_run):
    import json

    _, out = demo_run
    md = (out / "report" / "report.md").read_text()
    section = md[md.index("## Mechanism") :]
    assert "| crrelu | step 0 |" in section and "| crrelu | SFT |" in section
    assert "| gelu |" not in section and "| relu |" not in section  # no correction: nothing to measure
    stages = {(r["arm"], r["stage"]): r for r in json.loads((out / "report" / "report.json").read_text())["stages"]}
    layer = stages[("crrelu", "step 0")]["probe"]["layers"][0]
    assert layer["entropy_change"] > 0 and layer["epsilon"] == pytest.approx(0.01)  # eps > 0 raises it
    assert f"{layer['entropy_change']:+.4f} [{layer['entropy_change_share']:.2f}]" in section
    assert "- crrelu: from step 0 to DPO beta=0.5 seed=0 training moved the correction toward" in section
    reading = md[md.index("## Reading") : md.index("## Mechanism")].split("\n\n")[1]
    assert "mechanism (entropy vs own base, nats; reward acc. vs gelu, points): crrelu " in reading


def test_the_reading_sets_each_arm_s_entropy_change_beside_its_outcome():
    from crrelu_llm.reporting.report_stages import mechanism_reading

    rows = [
        {"arm": "gelu", "stage": "step 0", "entropy_change_mean": None},
        {"arm": "crrelu", "stage": "step 0", "entropy_change_mean": 0.02},
        {"arm": "crrelu", "stage": "DPO beta=0.5 seed=0", "entropy_change_mean": -0.01},
        {"arm": "matched", "stage": "step 0", "entropy_change_mean": 0.0},
        {"arm": "matched", "stage": "DPO beta=0.5 seed=0", "entropy_change_mean": 0.25},
    ]
    tests = [
        {"kind": "reward accuracy", "arm": "crrelu", "value": 0.012, "detected_holm": False},
        {"kind": "reward accuracy", "arm": "matched", "value": -0.05, "detected_holm": True},
    ]
    assert mechanism_reading(rows, tests, "gelu") == (
        "mechanism (entropy vs own base, nats; reward acc. vs gelu, points): "
        "crrelu +0.020 -> -0.010 (lower), acc. +1.2; matched +0.000 -> +0.250 (higher), acc. -5.0*"
    )
    rows[2] = {**rows[2], "entropy_change_mean": 0.0201}  # below what three decimals show: unchanged
    assert "crrelu +0.020 -> +0.020 (unchanged)" in mechanism_reading(rows, tests, "gelu")
    assert mechanism_reading(rows[:1], tests, "gelu") is None


def test_the_mechanism_reaches_the_trackers_and_the_report_from_one_mean():
    """results.estimates owns the mean over layers: the trackers get it, and the report's stage rows
    (report.md's Mechanism section, the reading) read the same number."""
    from crrelu_llm.evaluation.results import estimates

    layers = [
        {"epsilon": -0.1, "entropy_change": -0.2, "correction_cosine": 0.5},
        {"epsilon": 0.3, "entropy_change": 0.1, "correction_cosine": -0.25},
        {"epsilon": None, "entropy_change": None, "correction_cosine": None},
    ]
    told = estimates("probe", {"layers": layers})
    assert told["entropy_change_mean"] == {"value": pytest.approx(-0.05), "low": None, "high": None, "n": 2}
    assert told["correction_cosine_mean"]["value"] == pytest.approx(0.125)
