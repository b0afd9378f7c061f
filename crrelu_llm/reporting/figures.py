"""The report's plots: one colour per arm and one line style per stage in every figure."""

from __future__ import annotations

from pathlib import Path

PROBE_PANELS = (("epsilon", "learned eps"), ("least_squares_epsilon", "least-squares eps"),
                ("excess_kurtosis", "input excess kurtosis"), ("skewness", "input skewness"),
                ("share_negative", "input share negative"), ("output_small", "output share |y| < 1e-3"))


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
            points = [(layer["layer"], layer[key]) for layer in r["probe"]["layers"]
                      if layer[key] is not None and layer["layer"] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", color=colours[r["arm"]], linestyle=line_style(r["stage"]),
                        label=f"{r['arm']} {r['stage']}")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # the legend from the rows themselves: every line has an entry, whichever panels it appears in
    handles = [Line2D([], [], color=colours[r["arm"]], linestyle=line_style(r["stage"]), marker="o",
                      label=f"{r['arm']} {r['stage']}") for r in probed]
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
        return {f"epsilon/{layer_index(path):02d}": v for path, v in report["calibrated_epsilons"].items()
                if layer_index(path) is not None}
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
        ax.errorbar(st["win_rate"], i, xerr=[[st["win_rate"] - lo], [hi - st["win_rate"]]], marker="o", capsize=4,
                    color=colours[arm])
        lc = st.get("length_controlled") or {}
        if lc.get("value") is not None and lc.get("interval"):  # hollow: the length-controlled rate, just below
            llo, lhi = lc["interval"]
            ends += [llo, lhi]
            ax.errorbar(lc["value"], i - 0.25, xerr=[[lc["value"] - llo], [lhi - lc["value"]]], marker="o",
                        mfc="white", capsize=3, color=colours[arm], alpha=0.8)
            hi = max(hi, lhi)
        ax.annotate(f"{st['wins']} W / {st['ties']} T / {st['losses']} L", (hi, i), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.axvline(0.5, color="grey", linestyle="--")
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    width = max(ends) - min(ends)
    ax.set_xlim(min(ends) - 0.1 * width - 0.01, max(ends) + 0.45 * width + 0.01)  # room for the counts
    ax.set_xlabel("win rate of the DPO model, ties as 1/2\nfilled: raw, 95% Bonett-Price; hollow: length-controlled, "
                  "95% bootstrap; W/T/L: wins, ties, losses", fontsize=8)
    fig.tight_layout()
    return fig
