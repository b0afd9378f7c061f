"""matched_<base>: the correction placed at each layer's measured inputs. Measured on the unpatched
model (position 0 left out), the original bit for bit at step 0, and carried by every path that
carries corrected_<base>: save and load, training, LoRA, DeepSpeed shapes, export, probes."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from crrelu_llm import patch_model
from crrelu_llm.cli import main as cli_main
from crrelu_llm.errors import PatchError
from crrelu_llm.ops.activation import CRReLU
from crrelu_llm.ops.candidates import CorrectedActivation, MatchedActivation
from crrelu_llm.ops.entropy import binned_entropy_change, correction_cosine, entropy_change
from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matched")
    rows = [
        {"prompt": f"{a}+{b}=", "chosen": f"{a + b}.", "rejected": f"{a + b + 1}."} for a in range(6) for b in range(5)
    ]
    data = tmp / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    original = tmp / "original"
    tiny_causal_lm("gpt2").save_pretrained(original)
    tiny_tokenizer().save_pretrained(original)
    return tmp, original, data, rows


def _independent_fit(model, tokenizer, rows):
    """Each layer's inputs over every non-padding token but each row's first, by hooks written here;
    then the median and IQR/1.349 after the 0.01% largest |x| (numpy)."""
    seen = {}
    hooks = [
        model.get_submodule(f"transformer.h.{i}.mlp.act").register_forward_hook(
            lambda m, inp, out, i=i: seen.setdefault(i, []).append(inp[0][0, 1:].flatten().double().numpy())
        )
        for i in range(2)
    ]
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(row["prompt"])["input_ids"]
            ids += tokenizer(row["chosen"], add_special_tokens=False)["input_ids"]
            model(input_ids=torch.tensor([ids]))
    for h in hooks:
        h.remove()
    fits = {}
    for i, parts in seen.items():
        x = np.concatenate(parts)
        if x.size > 10_000:
            x = x[np.abs(x) <= np.quantile(np.abs(x), 0.9999)]
        q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
        fits[f"transformer.h.{i}.mlp.act"] = (q50, (q75 - q25) / 1.3489795003921634)
    return fits


def test_measured_from_the_model_the_original_at_step_0_and_mu_sigma_survive_save_and_load(setup, capsys):
    tmp, original, data, rows = setup
    out = tmp / "step0"
    argv = ["patch", str(original), "--activation", "matched_gelu_new", "--out", str(out)]
    assert cli_main(argv) == 2  # without data: one line, nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not out.exists()
    assert "measures each layer's inputs (mu, sigma) on text: give --calibration-data DATA" in err[0]
    assert cli_main([*argv, "--calibration-data", str(data), "--calibration-samples", "30"]) == 0
    from crrelu_llm.data.preference import DataArguments, load_preference_splits

    train, _, _ = load_preference_splits(DataArguments(dataset_name=str(data)))  # the rows calibration reads
    expected = _independent_fit(AutoModelForCausalLM.from_pretrained(original), tiny_tokenizer(), list(train))
    report = json.loads((out / "patch_report.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(out)
    record = loaded.config.crrelu_llm_patch["modules"]
    for path, (mu, sigma) in expected.items():
        act = loaded.get_submodule(path)
        assert isinstance(act, MatchedActivation) and float(act.epsilon.detach()) == 0.0
        # rel 1e-4: batched rows against one row at a time
        assert report["calibrated"][path] == pytest.approx({"mu": mu, "sigma": sigma}, rel=1e-4)
        assert record[path]["activation_kwargs"] == report["calibrated"][path]
        assert float(act.mu) == pytest.approx(mu, rel=1e-4) and float(act.sigma) == pytest.approx(sigma, rel=1e-4)
    ids = torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    plain = AutoModelForCausalLM.from_pretrained(original)
    assert torch.equal(loaded(ids).logits, plain(ids).logits)  # eps = 0: the original, bit for bit
    # the buffers are in the checkpoint: a record that lost them still loads the measured values
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert float(weights["transformer.h.1.mlp.act.sigma"]) == pytest.approx(expected["transformer.h.1.mlp.act"][1])
    with pytest.raises(PatchError, match="activation_kwargs with mu and sigma"):
        patch_model(tiny_causal_lm("gpt2"), "matched_gelu_new")
    with pytest.raises(PatchError, match="sigma positive"):
        patch_model(tiny_causal_lm("gpt2"), "matched_gelu_new", activation_kwargs={"mu": 0.0, "sigma": 0.0})
    # plain transformers refuses the checkpoint rather than building GELU without the correction
    script = f"from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained({str(out)!r})"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0


def test_its_eps_trains_from_0_with_lora_and_the_adapter_run_loads_with_the_measured_mu_sigma(setup):
    tmp, original, data, _ = setup
    run = tmp / "lora"
    argv = ["dpo", "--model_name_or_path", str(original), "--dataset_name", str(data)]
    argv += ["--activation", "matched_gelu_new", "--calibration_samples", "20", "--use_peft", "true", "--lora_r", "4"]
    argv += ["--max_steps", "3", "--learning_rate", "1e-3", "--activation_learning_rate", "5e-2"]
    argv += ["--per_device_train_batch_size", "4", "--report_to", "none", "--output_dir", str(run)]
    assert cli_main(argv) == 0
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["final_epsilon/00"] != 0.0 and final["final_epsilon/01"] != 0.0  # eps moved from 0
    measured = json.loads((run / "patch_report.json").read_text())["calibrated"]
    from crrelu_llm.patching.loading import load_causal_lm

    loaded = load_causal_lm(str(run))
    for path, fit in measured.items():
        act = loaded.get_submodule(path)
        assert (float(act.mu), float(act.sigma)) == pytest.approx((fit["mu"], fit["sigma"]))
        assert float(act.epsilon) == pytest.approx(final[f"final_epsilon/{path.split('.')[2].zfill(2)}"], abs=1e-6)


@pytest.mark.slow  # a subprocess without crrelu-llm: 5 s, kept out of the fast tier
def test_the_export_carries_it_and_deepspeed_gets_a_1_element_eps(setup, monkeypatch):
    tmp, original, data, _ = setup
    model = tiny_causal_lm("gpt2")
    folded = [[0.3, 0.1, 0.5]]  # an earlier correction, folded by a refit
    patch_model(model, "matched_gelu_new", activation_kwargs={"mu": -0.5, "sigma": 0.25, "folded": folded})
    with torch.no_grad():
        model.transformer.h[1].mlp.act.epsilon.fill_(0.25)
    model.save_pretrained(tmp / "ckpt")
    tiny_tokenizer().save_pretrained(tmp / "ckpt")
    assert cli_main(["export", str(tmp / "ckpt"), "--out", str(tmp / "shared")]) == 0
    ids = [[1, 5, 9, 13, 2]]
    script = (
        "import sys, torch; sys.modules['crrelu_llm'] = None\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp / 'shared')!r}, trust_remote_code=True)\n"
        "a = m.transformer.h[1].mlp.act\n"
        "print(type(a).__name__, float(a.mu), float(a.sigma), float(a.epsilon), a.folded.tolist())\n"
        f"print(m(torch.tensor({ids})).logits.sum().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2].split()[:4] == ["MatchedActivation", "-0.5", "0.25", "0.25"]
    (row,) = json.loads(lines[-2].split(" ", 4)[4])
    assert row == pytest.approx(folded[0], rel=1e-6)
    assert float(lines[-1]) == pytest.approx(model(torch.tensor(ids)).logits.sum().item(), rel=1e-5)
    from crrelu_llm.ops import candidates

    monkeypatch.setattr(candidates, "deepspeed_zero3_enabled", lambda: True)
    built = MatchedActivation("gelu_new", mu=-1.0, sigma=0.5)
    assert built.epsilon.shape == (1,) and built.state_dict()["epsilon"].shape == ()
    assert set(built.state_dict()) == {"epsilon", "mu", "sigma", "folded"}


def test_the_probe_reports_its_mechanism_and_the_cosine_s_sign_agrees_with_the_exact_change_away_from_s_star():
    g = torch.Generator().manual_seed(0)
    for mu, sigma in [(1.0, 0.5), (2.0, 0.5), (0.0, 0.11)]:  # inputs that keep away from GELU's turning point
        s = torch.randn(100_000, generator=g, dtype=torch.float64) * sigma + mu
        for module in (CorrectedActivation("gelu_new", 0.002), MatchedActivation("gelu_new", mu, sigma)):
            with torch.no_grad():
                module.epsilon.fill_(0.002)
            total, covered, _ = entropy_change(module, s)
            cosine = correction_cosine(module, s, mu, sigma)
            assert math.copysign(1, cosine * 0.002) == -math.copysign(1, total)  # eps·cos > 0 <=> lower entropy
            assert entropy_change(module, s)[2] == 0  # a small correction away from s*: one-to-one
    # a large correction turns the map back: those inputs are counted as folded (the figure is not exact there)
    s = torch.randn(100_000, generator=g, dtype=torch.float64)
    _, covered, folded = entropy_change(MatchedActivation("gelu_new", 0.0, 0.5), s)
    assert folded == 0
    big = MatchedActivation("gelu_new", 0.0, 0.5)
    with torch.no_grad():
        big.epsilon.fill_(-2.0)  # slope at z = 0: gelu'(0) - 2 / 0.5 < 0
    _, covered, folded = entropy_change(big, s)
    x_above = s[s > -0.7525]
    z = x_above / 0.5
    slope = 0.5 * (1 + torch.erf(x_above / 2**0.5)) + x_above * torch.exp(-(x_above**2) / 2) / (2 * math.pi) ** 0.5
    slope = slope - 2.0 * (1 - z * z) * torch.exp(-z * z / 2) / 0.5
    assert abs(folded - int((slope <= 0).sum())) <= 0.002 * covered  # erf GELU here, tanh GELU there
    # ReLU base, N(0, 1): the paper's start eps > 0 raises entropy, and the cosine says so
    s = torch.randn(100_000, generator=g, dtype=torch.float64)
    assert correction_cosine(CRReLU(0.01), s, 0.0, 1.0) < 0
    # the cosine against an independent computation: numpy, finite differences
    x = s.numpy()
    f = lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))  # noqa: E731
    h = 1e-4
    d1, d2 = (f(x + h) - f(x - h)) / (2 * h), (f(x + h) - 2 * f(x) + f(x - h)) / h**2
    v = (d1 * -(x - 0.3) / 0.8**2 - d2) / (d1**2 + 0.05**2)
    c = x * np.exp(-x * x / 2)
    expected = (c * v).mean() / math.sqrt((c * c).mean() * (v * v).mean())
    assert correction_cosine(CorrectedActivation("gelu_new", 0.0), s, 0.3, 0.8) == pytest.approx(expected, rel=1e-4)
    # the binned change below s*, against numpy at the same common width
    module = CorrectedActivation("gelu_new", -0.2)
    change, n, width = binned_entropy_change(module, s)
    base = f(x)
    assert width == pytest.approx(1e-3 * base.std(ddof=1), rel=1e-6)
    from scipy.optimize import minimize_scalar

    s_star = minimize_scalar(f, bounds=(-2, 0), method="bounded", options={"xatol": 1e-9}).x
    below = x <= s_star

    def quantised(y):
        _, counts = np.unique(np.floor(y / width), return_counts=True)
        p = counts / counts.sum()
        return -(p * np.log(p)).sum()

    arm = base[below] - 0.2 * c[below]
    assert abs(n - below.sum()) <= 2 and change == pytest.approx(quantised(arm) - quantised(base[below]), abs=2e-3)
    # the probe on a matched model: eps, mu and sigma, and the three measures per layer
    from crrelu_llm.patching.probe import activation_statistics, reference_activations

    model = tiny_causal_lm("gpt2")
    patch_model(model, "matched_gelu_new", activation_kwargs={"mu": 0.0, "sigma": 0.1})
    with torch.no_grad():
        model.transformer.h[0].mlp.act.epsilon.fill_(-0.001)
    text = [("1+1=", "2."), ("3+4=", "7.")]
    layers = activation_statistics(model, tiny_tokenizer(), text, reference_activations(model))
    first = layers[0]
    assert first["epsilon"] == pytest.approx(-0.001) and first["buffers"] == pytest.approx({"mu": 0.0, "sigma": 0.1})
    assert first["entropy_change"] < 0 and -1 <= first["correction_cosine"] <= 1
    assert first["entropy_change_share"] + first["entropy_change_binned_share"] == pytest.approx(1.0, abs=0.05)


def test_the_reservoir_sample_is_uniform_and_does_not_depend_on_batching():
    from crrelu_llm.patching.probe import Reservoir

    values = torch.arange(100_000, dtype=torch.float32)
    whole, parts = Reservoir(size=5000), Reservoir(size=5000)
    whole.add(values)
    for chunk in values.split(7919):
        parts.add(chunk)
    assert torch.equal(whole.values[0].sort().values, parts.values[0].sort().values)
    kept = whole.values[0]
    assert len(kept.unique()) == 5000
    # uniform: a Kolmogorov-Smirnov test against U(0, 100000)
    from scipy import stats

    assert stats.kstest(kept.numpy() / 100_000, "uniform").pvalue > 0.01


def test_refit_between_stages_folds_the_correction_keeps_the_function_and_measures_again(setup, capsys):
    """The paper's dynamic variant: a run that starts from a trained matched checkpoint with `refit: true`
    starts from the same function, its eps at 0, the learned terms folded, mu and sigma measured anew."""
    from crrelu_llm.data.preference import DataArguments, load_preference_splits
    from crrelu_llm.experiments.stage_actions import write_step0

    tmp, original, data, _ = setup
    trained = tmp / "trained"
    assert cli_main(["patch", str(original), "--activation", "matched_gelu_new", "--out", str(trained),
                     "--calibration-data", str(data), "--calibration-samples", "30"]) == 0  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(trained)
    learned = {"transformer.h.0.mlp.act": -0.3, "transformer.h.1.mlp.act": 0.2}  # as if training had moved them
    with torch.no_grad():
        for path, eps in learned.items():
            model.get_submodule(path).epsilon.fill_(eps)
    model.save_pretrained(trained)
    before = {p: (float(model.get_submodule(p).mu), float(model.get_submodule(p).sigma)) for p in learned}
    keys = {"model_name_or_path": str(trained), "dataset_name": str(data), "activation": "matched_gelu_new"}
    report = write_step0("dpo", {**keys, "refit": True, "calibration_samples": 30}, tmp / "refit")
    assert set(report["refit"]) == set(learned)
    refitted = AutoModelForCausalLM.from_pretrained(tmp / "refit")
    ids = torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(refitted(ids).logits, model(ids).logits)  # the same function, bit for bit
    train, _, _ = load_preference_splits(DataArguments(dataset_name=str(data)))
    expected = _independent_fit(model, tiny_tokenizer(), list(train))  # the trained model's inputs now
    for path, eps in learned.items():
        act = refitted.get_submodule(path)
        assert float(act.epsilon.detach()) == 0.0
        (row,) = act.folded.tolist()
        assert row == pytest.approx([eps, *before[path]])
        assert (float(act.mu), float(act.sigma)) == pytest.approx(expected[path], rel=1e-4)
        assert refitted.config.crrelu_llm_patch["modules"][path]["activation_kwargs"]["folded"] == act.folded.tolist()
    # the probe measures the whole correction (folded and current) against the base
    from crrelu_llm.ops.entropy import entropy_change as change

    x = torch.randn(20_000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert change(refitted.transformer.h[0].mlp.act, x)[0] == pytest.approx(
        change(model.transformer.h[0].mlp.act, x)[0]
    )
    # refused where it cannot hold: another activation; a LoRA run (the adapter does not rebuild buffers)
    argv = ["dpo", "--model_name_or_path", str(trained), "--dataset_name", str(data), "--refit", "true"]
    assert cli_main([*argv, "--activation", "crrelu", "--output_dir", str(tmp / "x")]) == 2
    assert "refit: true folds and re-measures a matched_<base> correction" in capsys.readouterr().err
    argv += ["--activation", "matched_gelu_new", "--use_peft", "true", "--output_dir", str(tmp / "y")]
    assert cli_main(argv) == 2 and "which a LoRA adapter run does not rebuild" in capsys.readouterr().err
    assert not (tmp / "x").exists() and not (tmp / "y").exists()
