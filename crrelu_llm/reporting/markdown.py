"""``report.md``: the report dict of :func:`crrelu_llm.reporting.report.compare`, written out.

Every results section shows each seed's result on its own row, and a pooled row over the seeds
(:mod:`crrelu_llm.reporting.estimates`); with one seed it says that the between-seed spread is
not measured. Every number names the file it was read from.
"""

from __future__ import annotations

from crrelu_llm.evaluation.length_control import describe
from crrelu_llm.reporting import factorial, report_stages
from crrelu_llm.reporting.estimates import ONE_SEED, interval_text
from crrelu_llm.stats import verdict


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _short(path) -> str:
    from pathlib import Path

    return "/".join(Path(str(path)).parts[-2:]) if path else "?"


def _pooled_cell(group: dict) -> str:
    pooled = group.get("pooled")
    if not pooled:
        return f"– ({group.get('pooled_note')})"
    return f"{interval_text(pooled)}" + (f", {pooled['seeds']} seeds" if pooled["seeds"] > 1 else ", one seed")


def _summary_table(report: dict) -> list[str]:
    rows = []
    for label, arm in report["arms"].items():
        acc = arm.get("reward_accuracy")
        if acc:
            seeds = "; ".join(f"seed {s['seed']}: {interval_text(s['estimate'])}" for s in acc["per_seed"])
            shown = f"{seeds} | {_pooled_cell(acc)}"
        else:
            shown = "– (not evaluated: evaluations.rewards) | –"
        drift = arm.get("drift")
        kl = (
            ", ".join(f"{d['kl_patched_original']:.4f} ({d['stage']})" for d in drift)
            if drift
            else "– (" + arm.get("drift_note", "not evaluated") + ")"
        )
        preference = ", ".join(_fmt(r["preference_accuracy"]) for r in arm.get("rewards", [])) or "–"
        rows.append(f"| {label} | {len(arm['runs'])} | {shown} | {preference} | {kl} |")
    return [
        "| arm | runs | reward accuracy per seed (95% Wilson) | pooled over seeds (95%) | preference accuracy "
        "(reference-free), per seed | KL to original (model it was measured on) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Reward accuracy is `crrelu-llm eval rewards`' per-pair accuracy (a tie is not correct); TRL's "
        "`eval_rewards/accuracies`, a mean of batch means, is in report.json only. The pooled interval treats "
        "seeds and pairs as crossed (every seed is scored on the same pairs), so it carries the between-seed "
        "spread (with one seed, the between-seed spread is not measured).",
        "",
    ]


def _rewards(label: str, arm: dict) -> list[str]:
    acc = arm["reward_accuracy"]
    lines = [
        f"## Reward accuracy: {label}",
        "",
        "| seed | run | reward accuracy (95% Wilson) | n pairs | ties | trained with beta | from |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, r in zip(acc["per_seed"], arm["rewards"]):
        beta = f"{r['training_beta']:g}" if r.get("training_beta") is not None else "unknown"
        lines.append(
            f"| {s['seed']} | {r['stage']} | {interval_text(s['estimate'])} | {r['n']} | {r['ties']:.3f} | "
            f"{beta} | `{r['from']}` |"
        )
    lines.append(f"| pooled | | {_pooled_cell(acc)} | | | | |")
    lines += ["", f"- {acc['pooled_note']}"]
    if arm["rewards"][0].get("objective"):  # reference-free: not DPO's reward, nor on its scale
        lines.append(
            f"- {arm['rewards'][0]['objective'].upper()} run, no reference model: its reward is "
            f"{arm['rewards'][0]['implicit_reward']}"
        )
    lines += [
        "- for one model, accuracy does not depend on the evaluation beta; the margin scales with it",
        "",
        "| seed | evaluation beta | mean margin | 95% CI |",
        "|---|---|---|---|",
    ]
    for r in arm["rewards"]:
        for b in r["margins_per_evaluation_beta"]:
            lo, hi = b["margin_interval"]
            lines.append(f"| {r['seed']} | {b['beta']:g} | {b['margin']:.4f} | [{lo:.4f}, {hi:.4f}] |")
    return [*lines, ""]


def _win_rates(label: str, arm: dict, key: str, group: dict) -> list[str]:
    lines = [
        f"## {label} ({arm['objective'].upper()}) vs {group['baseline']} (judge {group['judge']})",
        "",
        "| seed | run | wins / ties / losses | win rate (95%) | exact sign test p | verdict | length-controlled |",
        "|---|---|---|---|---|---|---|",
    ]
    undefined = {}
    for s in group["per_seed"]:
        e, lc = s["estimate"], s.get("length_controlled") or {}
        if lc.get("value") is None:
            mark = undefined.setdefault(
                lc.get("undefined") or "not computed (a result from before length control)", f"({len(undefined) + 1})"
            )
            controlled = f"undefined {mark}"
        else:
            controlled = describe(lc).removeprefix("length-controlled ")
        lines.append(
            f"| {s['seed']} | {s['stage']} | {s['wins']} / {s['ties']} / {s['losses']} of {s['n']} | "
            f"{interval_text(e)} | {e['p_value']:.4g} | {verdict(e)} | {controlled} |"
        )
    pooled = group.get("pooled")
    if pooled:
        several = pooled["seeds"] > 1
        test = f"{pooled['p_value']:.4g} (t test)" if several else "–"
        lines.append(
            f"| pooled | {group['seeds']} seed(s) | | {interval_text(pooled)} | {test} | "
            f"{verdict(pooled) if several else ONE_SEED} | |"
        )
    first = group["per_seed"][0]
    lines += [
        "",
        f"- win rate: ties as 1/2; interval: {first['estimate']['interval_method']}; test: "
        f"{first['estimate']['test']}; {group['pooled_note']}",
        "- length-controlled: the judge's preference at equal length, 95% bootstrap over prompts "
        "(docs/evaluation.md)" + "".join(f"; undefined {mark}: {why}" for why, mark in undefined.items()),
        "- position consistency: "
        + ", ".join(
            f"seed {s['seed']} {_fmt(s['position_consistency'])}"
            for s in group["per_seed"]
            if s.get("position_consistency") is not None
        )
        if any(s.get("position_consistency") is not None for s in group["per_seed"])
        else "- position consistency: n/a (this judge does not see an order)",
        "- mean response length (chars), model / baseline: "
        + ", ".join(
            f"seed {s['seed']} {s['length_model']['mean']:.1f} / {s['length_baseline']['mean']:.1f}"
            for s in group["per_seed"]
            if s.get("length_model")
        ),
        "- from: " + ", ".join(f"`{s['from']}`" for s in group["per_seed"]),
        "",
    ]
    return lines


def _drift(label: str, arm: dict) -> list[str]:
    lines = [
        f"## Drift: {label}",
        "",
        "| measured on | perplexity (model / original) | KL per token | tokens | from |",
        "|---|---|---|---|---|",
    ]
    for d in arm["drift"]:
        lines.append(
            f"| {d['stage']} | {d['perplexity_patched']:.3f} / {d['perplexity_original']:.3f} | "
            f"{d['kl_patched_original']:.4f} | {d['tokens']} | `{d['from']}` |"
        )
    return [*lines, ""]


def _epsilon(label: str, arm: dict) -> list[str]:
    lines = [
        f"## Activation parameters: {label}",
        "",
        "| seed | run | started from (per block) | ended at (per block) | mean at the end |",
        "|---|---|---|---|---|",
    ]
    for e in arm["epsilon"]:
        start = ", ".join(f"{k.split('/')[-1]}: {v:.4f}" for k, v in sorted(e["start"].items())) or "–"
        calibrated = e.get("calibrated_from")
        if calibrated:
            values = ", ".join(f"{k}: {v:.4f}" for k, v in sorted(calibrated["values"].items()))
            start += f"; calibrated at patching: {values} (least squares against the original, `{calibrated['from']}`)"
        blocks = {k: v for k, v in e["final"].items() if k.split("/")[-1].isdigit()}
        end = ", ".join(f"{k.split('/')[-1]}: {v:.4f}" for k, v in sorted(blocks.items())) or "–"
        mean = e["final"].get("epsilon/mean")
        lines.append(f"| {e['seed']} | {e['stage']} | {start} | {end} | {_fmt(mean) if mean is not None else '–'} |")
    return [*lines, ""]


def _vs_baseline(report: dict) -> list[str]:
    lines = []
    for label, group in report.get("reward_accuracy_vs_baseline", {}).items():
        lines += [
            f"## Reward accuracy, {label} minus {report['baseline']}: paired on the same pairs",
            "",
            "| seed | difference (95% Bonett-Price) | McNemar exact p | verdict |",
            "|---|---|---|---|",
        ]
        for s in group["per_seed"]:
            e = s["estimate"]
            lines.append(f"| {s['seed']} | {interval_text(e)} | {e['p_value']:.4g} | {verdict(e)} |")
        pooled = group.get("pooled")
        if pooled:
            test = f"{pooled['p_value']:.4g} (t test)" if pooled["seeds"] > 1 else "–"
            lines.append(
                f"| pooled | {interval_text(pooled)} | {test} | "
                f"{verdict(pooled) if pooled['seeds'] > 1 else ONE_SEED} |"
            )
        lines += ["", f"- {group['pooled_note']}", ""]
    for t in report.get("paired_tests", []):
        if not lines or lines[-1] != "":
            lines.append("")
        lines += [
            f"## Paired test over seeds: {t['arms'][0]} vs {t['arms'][1]}",
            "",
            f"{t['metric']}, seeds {t['seeds']}: p = {t['p_value']:.4g} ({t['test']}; with {t['pairs']} seeds "
            f"the smallest possible p is {2 / 2 ** t['pairs']:.3g})",
            "",
        ]
    return lines


def _pairs(report: dict) -> list[str]:
    if not report.get("pairs"):
        return []
    lines = [
        "## On-policy pairs: each arm's own samples, best against worst",
        "",
        "| arm | stage | judge | samples per prompt | prompts | pairs kept | dropped (all tied) | dropped (< 2 "
        "non-empty) | best minus worst score, mean [min, max] | from |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in report["pairs"]:
        c, spread = p["counts"], p["counts"]["score_spread"] or {}
        shown = f"{spread['mean']:.3g} [{spread['min']:.3g}, {spread['max']:.3g}]" if spread else "–"
        lines.append(
            f"| {p['arm']} | {p['stage']} | {p['judge_name']} | {p['inputs']['settings']['num_samples']} | "
            f"{c['prompts']} | {c['pairs']} | {c['dropped_all_tied']} | "
            f"{c['dropped_fewer_than_two_nonempty']} | {shown} | `{p['from']}` |"
        )
    return [*lines, ""]


def _reading(record: dict) -> list[str]:
    if "runs" not in record:  # a plain `compare` of run directories: no experiment to read
        return []
    from crrelu_llm.reporting.summary import opening, readings, summary_view

    view, baseline = summary_view(record), record["runs"]["baseline_arm"]
    lines = ["## Reading", "", *(f"**{line}**  " for line in opening(view, baseline)), ""]
    lines += [f"- {line}" for line in readings(view, baseline)]
    return [*lines, ""]


def _outcomes(report: dict) -> dict[str, str]:
    """Each arm's reward accuracy (pooled), as the mechanism section sets it beside the entropy change."""
    out = {}
    for label, arm in report["arms"].items():
        acc = (arm.get("reward_accuracy") or {}).get("pooled")
        if acc:
            out[label.split(" beta=")[0]] = f"reward accuracy {interval_text(acc)}"
    return out


def render(report: dict) -> str:
    """report.md from the report (``compare``) or an experiment's evidence record: for an
    experiment, the reading first (its three opening lines, then every line with its interval and
    test, and the multiplicity adjustment), then the tables."""
    lines = ["# crrelu-llm comparison", "", *_reading(report), *_summary_table(report), *_pairs(report)]
    counted = [(label, arm["data"]) for label, arm in report["arms"].items() if "data" in arm]
    if counted:
        from crrelu_llm.data.accounting import line

        lines += ["Data that reached each run, per split (`data_summary.json`):", ""]
        lines += [
            f"- {label}, seed {d['seed']} ({d['stage']}): "
            + "; ".join(line(split, c) for split, c in d["splits"].items())
            for label, ds in counted
            for d in ds
        ]
        lines.append("")
    for label, arm in report["arms"].items():
        if arm.get("reward_accuracy"):
            lines += _rewards(label, arm)
        for key, group in arm.get("win_rates", {}).items():
            lines += _win_rates(label, arm, key, group)
        if arm.get("drift"):
            lines += _drift(label, arm)
        if arm.get("epsilon"):
            lines += _epsilon(label, arm)
    lines += _vs_baseline(report)
    lines += factorial.markdown(report.get("factorial"))
    lines += report_stages.markdown(report.get("stages", []), report.get("benchmark_contrasts") or [])
    lines += report_stages.mechanism(report.get("stages", []), _outcomes(report))
    for plot in report["plots"]:
        lines.append(f"![{plot}]({plot})")
    return "\n".join(lines) + "\n"
