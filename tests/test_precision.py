"""The report's precision: ties and pairing counted, every seed reported, no false sentence.

The reports are built from run directories written here by hand (the files crrelu-llm's stages
write, with known outcomes), so every figure they print can be checked against its inputs.
"""

import json
from pathlib import Path

import pytest
import yaml

from crrelu_llm.evaluation.win_rates import win_rate
from crrelu_llm.reporting.report import compare
from crrelu_llm.reporting.summary import readings
from crrelu_llm.stats import win_rate_estimate


def _outcomes(wins, ties, losses):
    return [0] * wins + [None] * ties + [1] * losses


def _winrate_file(folder: Path, name: str, baseline: str, wins: int, ties: int, losses: int) -> None:
    outcomes = _outcomes(wins, ties, losses)
    stats = win_rate(outcomes, ["12."] * len(outcomes), ["12."] * len(outcomes)).to_dict()
    (folder / f"winrate-rule_arithmetic-vs-{name}.json").write_text(
        json.dumps({"model": str(folder.parent), "baseline": baseline, "judge": "rule:arithmetic", "stats": stats})
    )


def _run(
    root: Path,
    arm: str,
    seed: int,
    correct: list[int],
    vs_sft: tuple,
    vs_gelu: tuple | None = None,
    activation: str | None = None,
    calibrated: bool = False,
) -> Path:
    """A DPO run directory as the experiment writes it: recipe, trainer state, final metrics,
    rewards (per-pair outcomes) and win rates against its SFT start and the gelu arm."""
    run = root / arm / f"dpo-beta0.5-seed{seed}"
    (run / "eval").mkdir(parents=True)
    sft = root / arm / "sft"
    sft.mkdir(parents=True, exist_ok=True)
    (run / "recipe.yaml").write_text(
        yaml.safe_dump(
            {"activation": activation, "beta": 0.5, "seed": seed, "model_name_or_path": str(sft), "learning_rate": 1e-4}
        )
    )
    eps = {"epsilon/00": 0.05 + seed / 100, "epsilon/01": 0.07} if activation == "crrelu" else {}
    (run / "trainer_state.json").write_text(
        json.dumps(
            {
                "log_history": [
                    {
                        "step": s,
                        "loss": 0.7 - s / 100,
                        "rewards/accuracies": 0.5 + s / 100,
                        "rewards/margins": s / 10,
                        **eps,
                    }
                    for s in (1, 2, 3)
                ]
            }
        )
    )
    (run / "final_metrics.json").write_text(
        json.dumps({"eval_rewards/accuracies": 0.8 + seed / 100, **{f"final_{k}": v for k, v in eps.items()}})
    )
    if activation:
        record = {
            "already_patched": True,
            "activation": activation,
            "epsilon": {"epsilon/00": 0.04, "epsilon/01": 0.06},
        }
        (run / "patch_report.json").write_text(json.dumps(record))
        if calibrated:
            (sft / "patch_report.json").write_text(
                json.dumps(
                    {
                        "activation": activation,
                        "calibrated_epsilons": {"transformer.h.0.mlp.act": 0.041, "transformer.h.1.mlp.act": 0.062},
                    }
                )
            )
    n = len(correct)
    (run / "eval" / "rewards.json").write_text(
        json.dumps(
            {
                "n": n,
                "accuracy": sum(correct) / n,
                "accuracy_interval": [0, 1],
                "correct": correct,
                "ties": 0.0,
                "training_beta": 0.5,
                "preference_accuracy": 0.6,
                "margins_per_evaluation_beta": [{"beta": 0.5, "margin": 0.1, "margin_interval": [0.0, 0.2]}],
            }
        )
    )
    _winrate_file(run / "eval", f"{arm}_sft", str(sft), *vs_sft)
    if vs_gelu:
        _winrate_file(
            run / "eval", f"gelu_dpo-beta0.5-seed{seed}", str(root / "gelu" / f"dpo-beta0.5-seed{seed}"), *vs_gelu
        )
    return run


@pytest.fixture
def two_seeds(tmp_path):
    """Three arms x seeds 0 and 1, 500 items each; the crrelu arm calibrated."""
    gelu_correct = [[1] * 450 + [0] * 50, [1] * 440 + [0] * 60]
    runs = []
    for seed in (0, 1):
        runs.append(_run(tmp_path, "gelu", seed, gelu_correct[seed], (7, 480, 13)))
        runs.append(
            _run(
                tmp_path,
                "crrelu",
                seed,
                gelu_correct[seed][:-30] + [1] * 30,
                (30, 460, 10),
                (9, 483, 8),
                activation="crrelu",
                calibrated=True,
            )
        )
        runs.append(_run(tmp_path, "relu", seed, gelu_correct[seed], (8, 477, 15), (8, 485, 7), activation="relu"))
    return tmp_path, runs


# --------------------------------------------------------------------------- defect 1: ties are not coin flips


def test_a_ties_heavy_win_rate_gets_the_standard_error_interval_not_wilsons():
    """7 wins, 480 ties, 13 losses: the per-prompt score's standard error is 0.0045, so the 95%
    interval is about [0.485, 0.503]; Wilson with ties as half-successes said [0.450, 0.538]."""
    w = win_rate(_outcomes(7, 480, 13), ["a"] * 500, ["a"] * 500)
    lo, hi = w.interval
    standard = 2 * 1.96 * w.estimate["standard_error"]
    assert abs((hi - lo) - standard) / standard < 0.10
    assert lo == pytest.approx(0.485, abs=1e-3) and hi == pytest.approx(0.503, abs=1e-3)
    # the demo issue's 550-step case: 71 / 399 / 30 is detected, and the interval says so too
    e = win_rate_estimate(71, 399, 30)
    assert e.detected and e.interval[0] > 0.52


# --------------------------------------------------------------------------- defect 2: detectable from the data


def test_the_detectable_figures_come_from_the_ties_and_the_pairing(two_seeds):
    root, runs = two_seeds
    e = win_rate_estimate(7, 480, 13)
    assert e.detectable == pytest.approx(0.0125, abs=5e-4)  # not the worst case's 6.3 points
    assert "96% ties" in e.detectable_basis
    report = compare([f"{r.parts[-2]}={r}" for r in runs], root / "report", baseline="gelu")
    paired = report["reward_accuracy_vs_baseline"]["crrelu"]
    first = paired["per_seed"][0]["estimate"]
    # the arms disagree on 30 of 500 pairs (6%): paired, that detects about 3 points, not 8.9
    assert first["value"] == pytest.approx(0.06) and first["p_value"] < 1e-6
    assert first["detectable"] == pytest.approx(0.0305, abs=0.003) and "disagree on 6%" in first["detectable_basis"]
    text = (root / "report" / "report.md").read_text()
    assert "8.9 points" not in text and "6.3 points" not in text


# --------------------------------------------------------------------------- defects 3 and 5: every seed


def test_a_two_seed_report_names_seed_1_in_every_results_section_beside_a_pooled_row(two_seeds):
    root, runs = two_seeds
    report = compare([f"{r.parts[-2]}={r}" for r in runs], root / "report", baseline="gelu")
    text = (root / "report" / "report.md").read_text()
    sections = text.split("\n## ")[1:]
    results = [s for s in sections if s.startswith(("Reward accuracy", "crrelu (", "gelu (", "relu (", "Activation"))]
    assert len(results) >= 3 * 2 + 2 + 1  # rewards and vs-SFT per arm, vs gelu for two arms, eps for crrelu
    for section in results:
        assert "| 1 |" in section, section.splitlines()[0]  # seed 1's own row
        if not section.startswith("Activation"):
            assert "| pooled |" in section, section.splitlines()[0]
    crrelu = report["arms"]["crrelu"]
    assert [s["seed"] for s in crrelu["win_rates"]["winrate-rule_arithmetic-vs-crrelu_sft"]["per_seed"]] == [0, 1]
    assert crrelu["win_rates"]["winrate-rule_arithmetic-vs-crrelu_sft"]["pooled"]["seeds"] == 2
    # the paired test over seeds covers every arm against the baseline, relu too
    assert {t["arms"][0] for t in report["paired_tests"]} == {"crrelu", "relu"}
    # the top table's header says what its cells hold; the calibrated eps appear, per seed
    assert "95% bootstrap CI" not in text and "| pooled over seeds (95%) |" in text
    assert "calibrated at patching: 00: 0.0410, 01: 0.0620 (least squares against the original" in text
    assert "Sources:" not in text and "Benchmarks are" not in text  # nothing here was benchmarked
    # the plots have a point, a bar and a panel for each seed
    from crrelu_llm.reporting.figures import accuracy_by_training_beta
    from crrelu_llm.reporting.runs import load_run

    arms = {}
    for r in runs:
        run = load_run(f"{r.parts[-2]}={r}")
        arms.setdefault(run.label, []).append(run)
    assert {len(points) for points in accuracy_by_training_beta(arms).values()} == {2}


def test_the_console_reading_shows_every_seed_and_a_pooled_line(two_seeds):
    from crrelu_llm.reporting import estimates

    root, runs = two_seeds
    groups = []
    for arm in ("gelu", "crrelu"):
        results = [
            {
                "seed": s,
                "stats": json.loads(
                    next((root / arm / f"dpo-beta0.5-seed{s}" / "eval").glob("winrate-*_sft.json")).read_text()
                )["stats"],
            }
            for s in (0, 1)
        ]
        groups.append({"arm": arm, "beta": 0.5, "comparison": "vs-sft", **estimates.win_rates(results)})
    positive, *lines = readings({"rows": [], "win_rates": groups, "reward_accuracy": []}, "gelu")
    # the positive control comes first: gelu's DPO is not told from its SFT start, crrelu's is in both seeds
    assert positive.startswith("positive control, DPO vs its own SFT start, per arm: gelu not detected (n = 500")
    assert "crrelu detected (n = 500, 0.520 [" in positive and "detected in 2 of 2 seeds" in positive
    assert lines[0].startswith("gelu DPO model vs its own SFT start, 2 seeds: seed 0 ") and "seed 1 " in lines[0]
    assert "pooled 0.494" in lines[0] and "96% ties" not in lines[0].split("pooled")[0]
    assert "detected, above 0.5" in lines[1]  # crrelu: 30 wins, 10 losses in each seed
    one = readings(
        {
            "rows": [],
            "win_rates": [
                {
                    **groups[0],
                    **estimates.win_rates(
                        [{"seed": 0, "stats": win_rate(_outcomes(7, 480, 13), ["a"] * 500, ["a"] * 500).to_dict()}]
                    ),
                }
            ],
        },
        "gelu",
    )
    assert "1.2 points from 0.5 would be, with this data's 96% ties" in one[1]
    assert one[1].endswith("one seed: the between-seed spread is not measured")


def test_the_win_rate_plot_keeps_its_axis_label_inside_the_figure():
    from crrelu_llm.reporting.figures import win_rate_figure

    stats = {"win_rate": 0.52, "interval": [0.49, 0.54], "wins": 40, "ties": 440, "losses": 20}
    fig = win_rate_figure([("crrelu seed 0 (DPO) vs crrelu/sft", "crrelu", stats)], {"crrelu": "C1"})
    fig.canvas.draw()
    label = fig.axes[0].xaxis.label.get_window_extent()
    assert label.x0 >= 0 and label.x1 <= fig.bbox.x1 and label.y0 >= 0


# --------------------------------------------------------------------------- defect 4: no false sentence


def test_a_patched_arm_whose_step_0_was_not_evaluated_is_not_called_unpatched(two_seeds):
    root, runs = two_seeds
    report = compare(
        [f"{r.parts[-2]}={r}" for r in runs],
        root / "report",
        baseline="gelu",
        step0_drift={"gelu": None, "crrelu": None, "relu": None},
    )
    assert "unpatched original" in report["arms"]["gelu"]["drift_note"]
    for arm in ("crrelu", "relu"):
        note = report["arms"][arm]["drift_note"]
        assert "unpatched" not in note and "not evaluated" in note and "drift:" in note
