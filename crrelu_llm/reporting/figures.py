"""The report's plots: one colour per arm and one line style per stage in every figure."""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.reporting.runs import Run, objective, seed_label, short

PROBE_PANELS = (
    ("epsilon", "learned eps"),
    ("least_squares_epsilon", "least-squares eps"),
    ("excess_kurtosis", "input excess kurtosis"),
    ("skewness", "input skewness"),
    ("share_negative", "input share negative"),
    ("output_small", "output share |y| < 1e-3"),
)


STAGE_STYLES = {"original": ":", "step 0": "-.", "recovered": (0, (5, 1, 1, 1, 1, 1)), "SFT": "--"}


def line_style(stage: str):
    """One line style per place in the pipeline, the same in every plot (DPO runs: solid)."""
    return STAGE_STYLES.get(stage, "-")


def arm_colours(arms) -> dict[str, str]:
    """One colour per arm, the same in every plot of a report (in the order the arms come)."""
    return {arm: f"C{i % 10}" for i, arm in enumerate(dict.fromkeys(arms))}


def probe_plot(rows: list[dict], out: Path, colours: dict[str, str] | None = None) -> str | None:
    """One panel per probe statistic, x = layer, one line per (arm, stage): the arm's colour and
    the stage's line style in every panel, and one legend entry for each line."""
    fig = probe_figure(rows, colours)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    name = "probe_per_layer.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def probe_figure(rows: list[dict], colours: dict[str, str] | None = None):
    probed = [r for r in rows if r.get("probe")]
    if not probed:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    colours = {**arm_colours(r["arm"] for r in probed), **(colours or {})}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, title) in zip(axes.flat, PROBE_PANELS):
        for r in probed:
            points = [
                (layer["layer"], layer[key])
                for layer in r["probe"]["layers"]
                if layer[key] is not None and layer["layer"] is not None
            ]
            if points:
                ax.plot(
                    *zip(*points),
                    marker="o",
                    color=colours[r["arm"]],
                    linestyle=line_style(r["stage"]),
                    label=f"{r['arm']} {r['stage']}",
                )
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # the legend from the rows themselves: every line has an entry, whichever panels it appears in
    handles = [
        Line2D(
            [],
            [],
            color=colours[r["arm"]],
            linestyle=line_style(r["stage"]),
            marker="o",
            label=f"{r['arm']} {r['stage']}",
        )
        for r in probed
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize="small")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * ((len(handles) + 3) // 4), 1, 1))
    return fig


def starting_epsilons(run) -> dict[str, float]:
    """``epsilon/<block>`` -> the eps the run started from: the kept eps of an already patched
    start (DPO from SFT), the calibrated values, or the recipe's epsilon_init."""
    from crrelu_llm.patching.discovery import layer_index

    report = run.patch_report or {}
    if report.get("already_patched"):
        return {k: v for k, v in (report.get("epsilon") or {}).items() if k[8:].isdigit()}
    if report.get("calibrated_epsilons"):
        return {
            f"epsilon/{layer_index(path):02d}": v
            for path, v in report["calibrated_epsilons"].items()
            if layer_index(path) is not None
        }
    start = report.get("epsilon_init", (run.recipe or {}).get("epsilon_init"))
    return {} if start is None else {"*": float(start)}


def win_rate_figure(bars: list[tuple[str, str, dict]], colours: dict[str, str]):
    """One row per (label, arm, win-rate stats): the win rate with its interval in the arm's
    colour, its wins/ties/losses beside it, on an axis zoomed to the intervals and 0.5."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(bars) + 1.4))
    ends = [0.5]
    for i, (_, arm, st) in enumerate(bars):
        lo, hi = st["interval"]
        ends += [lo, hi]
        ax.errorbar(
            st["win_rate"],
            i,
            xerr=[[st["win_rate"] - lo], [hi - st["win_rate"]]],
            marker="o",
            capsize=4,
            color=colours[arm],
        )
        lc = st.get("length_controlled") or {}
        if lc.get("value") is not None and lc.get("interval"):  # hollow: the length-controlled rate, just below
            llo, lhi = lc["interval"]
            ends += [llo, lhi]
            ax.errorbar(
                lc["value"],
                i - 0.25,
                xerr=[[lc["value"] - llo], [lhi - lc["value"]]],
                marker="o",
                mfc="white",
                capsize=3,
                color=colours[arm],
                alpha=0.8,
            )
            hi = max(hi, lhi)
        ax.annotate(
            f"{st['wins']} W / {st['ties']} T / {st['losses']} L",
            (hi, i),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.axvline(0.5, color="grey", linestyle="--")
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    width = max(ends) - min(ends)
    ax.set_xlim(min(ends) - 0.1 * width - 0.01, max(ends) + 0.45 * width + 0.01)  # room for the counts
    ax.set_xlabel(
        "win rate of the DPO model, ties as 1/2\nfilled: raw, 95% Bonett-Price; hollow: length-controlled, "
        "95% bootstrap; W/T/L: wins, ties, losses",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


TRAIN_CURVES = ("loss", "rewards/accuracies", "rewards/margins")


def _series(run: Run, key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in run.log_history if key in e and "step" in e]
    return [p[0] for p in points], [p[1] for p in points]


def report_plots(arms: dict[str, list[Run]], out: Path, colours: dict[str, str], report_arms: dict) -> list[str]:
    """The report's plots: training curves and eps from the runs' logs, reward accuracy and win
    rates from the report's estimates (``report_arms``: the report's ``arms``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if any(r.log_history for runs in arms.values() for r in runs):
        fig, axes = plt.subplots(1, len(TRAIN_CURVES), figsize=(5 * len(TRAIN_CURVES), 3.6), sharex=True)
        for ax, key in zip(axes, TRAIN_CURVES):
            for label, runs in arms.items():
                for i, run in enumerate(runs):
                    x, y = _series(run, key)
                    if x:  # one shade per seed, each named in the legend
                        ax.plot(
                            x,
                            y,
                            color=colours[run.arm],
                            linestyle=line_style("DPO"),
                            alpha=max(0.35, 0.95 - 0.25 * i),
                            label=seed_label(label, run, runs),
                        )
            ax.set_title(key)
            ax.set_xlabel("training step")
            ax.set_ylabel(key)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=110)
        plt.close(fig)
        files.append("training_curves.png")
    eps_arms = {
        seed_label(label, run, runs): run
        for label, runs in arms.items()
        for run in runs
        if any(k.startswith("epsilon/") and k[8:].isdigit() for e in run.log_history for k in e)
    }
    if eps_arms:
        fig, axes = plt.subplots(1, len(eps_arms), figsize=(5 * len(eps_arms), 3.6), squeeze=False)
        for ax, (label, run) in zip(axes[0], eps_arms.items()):
            keys = sorted({k for e in run.log_history for k in e if k.startswith("epsilon/") and k[8:].isdigit()})
            start = starting_epsilons(run)
            for key in keys:
                x, y = _series(run, key)
                first = start.get(key, start.get("*"))
                if first is not None:  # the eps this run started from, at step 0
                    x, y = [0, *x], [first, *y]
                ax.plot(x, y, marker=".", label=f"block {int(key[8:])}")
            ax.set_ylabel("epsilon")
            ax.set_title(f"epsilon per block: {label}" + (" (from its start)" if start else ""), fontsize=9)
            ax.set_xlabel("training step (0: the eps it started from)" if start else "training step")
            if len(keys) <= 12:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "epsilon.png", dpi=110)
        plt.close(fig)
        files.append("epsilon.png")
    by_arm = accuracy_by_training_beta(arms)
    if by_arm:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        betas = sorted({p[0] for points in by_arm.values() for p in points})
        slots = [(arm, seed) for arm, points in by_arm.items() for seed in dict.fromkeys(p[3] for p in points)]
        spread = 0.6 / max(len(slots), 1)
        for arm, points in by_arm.items():
            for seed in dict.fromkeys(p[3] for p in points):
                mine = sorted(p for p in points if p[3] == seed)
                i = slots.index((arm, seed))
                # one slot per training beta, every (arm, seed) side by side inside it
                x = [betas.index(p[0]) + spread * (i - (len(slots) - 1) / 2) for p in mine]
                y = [p[1] for p in mine]
                err = [[p[1] - p[2][0] for p in mine], [p[2][1] - p[1] for p in mine]]
                ax.errorbar(
                    x,
                    y,
                    yerr=err,
                    marker="o",
                    linestyle="-" if len(mine) > 1 else "none",
                    capsize=3,
                    color=colours[arm],
                    alpha=max(0.4, 1 - 0.3 * [s for a, s in slots if a == arm].index(seed)),
                    label=f"{arm} seed {seed}" if seed is not None else arm,
                )
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_xlim(-0.6, len(betas) - 0.4)
        ax.set_xlabel("training beta (one point per DPO run: arm and seed)")
        ax.set_ylabel("reward accuracy, 95% Wilson")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "reward_accuracy.png", dpi=110)
        plt.close(fig)
        files.append("reward_accuracy.png")
    bars = [  # the report's estimates, each computed once (estimates.win_rates)
        (
            f"{seed_label(label, run, runs)} ({objective(run).upper()}) vs {short(entry.get('baseline'))}",
            run.arm,
            _bar(entry),
        )
        for label, runs in arms.items()
        for group in (report_arms.get(label, {}).get("win_rates") or {}).values()
        for run in runs
        for entry in group["per_seed"]
        if entry["from"] in run.sources.values()
    ]
    if bars:
        fig = win_rate_figure(bars, colours)
        fig.savefig(out / "win_rates.png", dpi=110)
        plt.close(fig)
        files.append("win_rates.png")
    return files


def _bar(entry: dict) -> dict:
    """A report's per-seed win-rate entry as one bar: its estimate, counts and length control."""
    keys = ("wins", "ties", "losses", "length_controlled", "position_consistency")
    return {
        **{k: entry.get(k) for k in keys},
        "win_rate": entry["estimate"]["value"],
        "interval": entry["estimate"]["interval"],
    }


def accuracy_by_training_beta(arms: dict[str, list[Run]]) -> dict[str, list]:
    """arm -> [(training beta, reward accuracy, interval, seed)] over every run whose rewards were
    evaluated and whose training beta is known."""
    points: dict[str, list] = {}
    for runs in arms.values():
        for run in runs:
            if not run.rewards or "accuracy" not in run.rewards:
                continue
            beta = run.rewards.get("training_beta") or (run.recipe or {}).get("beta")
            if beta is None:
                continue
            points.setdefault(run.arm, []).append(
                (beta, run.rewards["accuracy"], run.rewards["accuracy_interval"], run.seed)
            )
    return points
