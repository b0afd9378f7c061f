"""A 2x2 design read as one: the main effect of each factor and their interaction, on every
measure, with intervals paired over the same items.

Arms declare ``factors`` (``{base: gelu|relu, correction: off|on}``); the baseline arm sits at
the reference level of both. With the four cells ``y(a, b)`` (a: the first factor, b: the
second, 0 the reference level), per item:

- main effect of a: ``(y(1,0) + y(1,1) - y(0,0) - y(0,1)) / 2``, the change a makes, averaged
  over both levels of b (the swap's cost, averaged over correction off and on);
- main effect of b: ``(y(0,1) + y(1,1) - y(0,0) - y(1,0)) / 2``;
- interaction: ``(y(1,1) - y(1,0)) - (y(0,1) - y(0,0))``, how much b's effect depends on a.

Each contrast is a per-item value, estimated with :func:`crrelu_llm.stats.pooled` (seeds and
items crossed; with one seed, items alone), so its interval is paired over the items every arm
was scored on. Measures: reward accuracy (per pair), the win rate against the baseline arm (per
prompt; the baseline against itself is 1/2), the KL at step 0 (per example), benchmarks (per item,
from lm-eval's logged samples; a result without them combines the arms' standard errors as
independent), and output sparsity, which keeps no per-item outcome and comes without an interval
(a mean over layers).
"""

from __future__ import annotations

import math

from crrelu_llm.stats import Z95, pooled
from crrelu_llm.training.objectives import OBJECTIVES


def design(factors: dict[str, dict[str, str]], baseline: str) -> dict | None:
    """The factor names, their levels (the baseline arm's first) and ``{(i, j): arm}``."""
    if not factors or baseline not in factors:
        return None
    names = sorted(factors[baseline])
    levels = [[factors[baseline][n]] + sorted({f[n] for f in factors.values()} - {factors[baseline][n]}) for n in names]
    cells = {(levels[0].index(f[names[0]]), levels[1].index(f[names[1]])): arm for arm, f in factors.items()}
    return {"factors": names, "levels": levels, "cells": cells}


def _contrasts(y: dict[tuple[int, int], list[float]]) -> dict[str, list[float]]:
    rows = list(zip(y[0, 0], y[1, 0], y[0, 1], y[1, 1]))
    return {
        "a": [(c + d - a - b) / 2 for a, c, b, d in rows],
        "b": [(b + d - a - c) / 2 for a, c, b, d in rows],
        "ab": [(d - c) - (b - a) for a, c, b, d in rows],
    }


def _effects(per_seed: list[dict[tuple[int, int], list[float]]]) -> dict | None:
    """Per-seed cell outcomes (every cell on the same items) -> each contrast's pooled estimate."""
    per_seed = [y for y in per_seed if len(y) == 4 and len({len(v) for v in y.values()}) == 1]
    if not per_seed:
        return None
    by_contrast = [_contrasts(y) for y in per_seed]
    n = len(by_contrast[0]["a"])
    # the least standard error: one item of n off by the contrast's largest step (1 for a main effect of
    # 0/1 outcomes, 2 for the interaction), so identical outcomes everywhere get no zero-width interval
    floor = {"a": 1 / n, "b": 1 / n, "ab": 2 / n}
    return {
        name: pooled([c[name] for c in by_contrast], null=0.0, floor_se=floor[name]).to_dict()
        for name in ("a", "b", "ab")
    }


def read(inputs: dict, baseline: str, help_or_harm: list[dict]) -> dict | None:
    """Every measure's effects for the experiment's 2x2 arms (per beta). ``inputs``: the cells'
    per-item outcomes (:func:`crrelu_llm.experiments.evidence.factorial_inputs`); ``help_or_harm``:
    every model's drift, benchmark and probe rows."""
    shape = inputs["shape"]
    cell_of = {arm: cell for cell, arm in shape["cells"].items()}
    measures = []
    several = len(inputs["per_beta"]) > 1
    for part in inputs["per_beta"]:
        winrate = []
        for wr in part["winrate"]:
            n = next((len(v) for v in wr.values() if v), 0)
            winrate.append({**wr, (0, 0): [0.5] * n} if n else wr)  # the baseline arm (cell 0, 0) against itself
        label = f" (beta {part['beta']:g})" if several else ""
        for name, per_seed in (
            (f"reward accuracy{label}", part["accuracy"]),
            (f"win rate vs {baseline}{label}", winrate),
        ):
            found = _effects(per_seed)
            if found:
                measures.append({"measure": name, "unit": "points", "seeds": len(per_seed), **found})
        labels = {OBJECTIVES[c].label for c in part["objectives"] if c in OBJECTIVES}
        after = labels.pop() if len(labels) == 1 else "preference tuning"  # DPO, SimPO...; one phrase if they differ
        measures += _benchmarks(help_or_harm, cell_of, part["seeds"], part["steps"], after, label)
    drift = inputs["drift"]
    if all(drift.get(c) for c in drift if c != (0, 0)) and any(drift.values()):
        n = next(len(v) for v in drift.values() if v)
        drift = {c: v if v else [0.0] * n for c, v in drift.items()}  # an unpatched arm's step 0 is the original
        found = _effects([drift])
        if found:
            measures.append({"measure": "KL to the original at step 0", "unit": "nats/token", "seeds": 1, **found})
    measures += _sparsity(help_or_harm, cell_of)
    return {
        **{k: v for k, v in shape.items() if k != "cells"},
        "cells": {f"{i},{j}": arm for (i, j), arm in shape["cells"].items()},
        "measures": measures,
    }


def _independent(values: dict, errors: dict) -> dict:
    """The three contrasts of cell values whose standard errors combine as independent."""
    a, c, b, d = (values[k] for k in ((0, 0), (1, 0), (0, 1), (1, 1)))
    spread = math.sqrt(sum(e * e for e in errors.values()))
    out = {}
    for name, value, se in (
        ("a", (c + d - a - b) / 2, spread / 2),
        ("b", (b + d - a - c) / 2, spread / 2),
        ("ab", (d - c) - (b - a), spread),
    ):
        out[name] = {
            "value": value,
            "interval": (value - Z95 * se, value + Z95 * se),
            "standard_error": se,
            "p_value": None,
            "interval_method": "lm-eval standard errors combined as independent",
        }
    return out


def _benchmarks(rows: list[dict], cell_of: dict, seeds: list, steps: list[dict], after: str, label: str) -> list[dict]:
    """Each task's effects after preference tuning, per seed: ``steps`` holds, per seed, each arm's
    preference stage."""
    out = []
    by = {(r["arm"], r["stage"]): r for r in rows}
    for seed, step_of in zip(seeds, steps):
        found_rows = {arm: by.get((arm, step_of.get(arm))) or {} for arm in cell_of}
        tasks = set.intersection(*[set(r.get("benchmarks", {})) for r in found_rows.values()]) if cell_of else set()
        for task in sorted(tasks):
            cells = {cell: found_rows[arm]["benchmarks"][task] for arm, cell in cell_of.items()}
            found = _effects([paired]) if (paired := _items(cells)) else None  # per item, on the same items
            if found is None and any(b["stderr"] is None for b in cells.values()):
                continue
            found = found or _independent(
                {c: b["value"] for c, b in cells.items()}, {c: b["stderr"] for c, b in cells.items()}
            )
            out.append({"measure": f"{task} after {after}, seed {seed}{label}", "unit": "points", "seeds": 1, **found})
    return out


def _items(cells: dict) -> dict | None:
    """Each cell's per-item outcomes on its headline metric, when all four answered the same items."""
    first = next(iter(cells.values()))
    metric, ids = first.get("metric"), (first.get("items") or {}).get("doc_id")
    outcomes = {}
    for cell, b in cells.items():
        items = b.get("items") or {}
        if ids is None or b.get("metric") != metric or items.get("doc_id") != ids or metric not in items:
            return None
        outcomes[cell] = items[metric]
    return outcomes


def _sparsity(rows: list[dict], cell_of: dict) -> list[dict]:
    """The share of activation outputs below 1e-3 at step 0 (mean over layers), per cell."""
    by = {r["arm"]: r for r in rows if r["stage"] == "step 0" and r.get("probe")}
    if not all(arm in by for arm in cell_of):
        return []
    means = {}
    for arm, cell in cell_of.items():
        layers = [
            layer["output_small"] for layer in by[arm]["probe"]["layers"] if layer.get("output_small") is not None
        ]
        if not layers:
            return []
        means[cell] = sum(layers) / len(layers)
    a, c, b, d = (means[k] for k in ((0, 0), (1, 0), (0, 1), (1, 1)))
    point = {"a": (c + d - a - b) / 2, "b": (b + d - a - c) / 2, "ab": (d - c) - (b - a)}
    return [
        {
            "measure": "output share abs(y) < 1e-3 at step 0 (mean over layers)",
            "unit": "points",
            "seeds": 1,
            **{
                k: {"value": v, "interval": None, "interval_method": "no per-item outcome: no interval"}
                for k, v in point.items()
            },
        }
    ]


def markdown(result: dict | None) -> list[str]:
    if not result or not result.get("measures"):
        return []
    (fa, fb), (la, lb) = result["factors"], result["levels"]
    head = [
        f"main effect of {fa} ({la[1]} - {la[0]})",
        f"main effect of {fb} ({lb[1]} - {lb[0]})",
        f"interaction ({fa} x {fb})",
    ]
    cells = ", ".join(f"{fa}={la[int(k[0])]}, {fb}={lb[int(k[2])]}: {arm}" for k, arm in result["cells"].items())
    lines = [
        f"## The 2x2 design: {fa} x {fb}",
        "",
        f"Cells: {cells}. Each effect is a contrast of per-item outcomes, "
        "paired over the items every arm was scored on, pooled over seeds (docs/evaluation.md, reading the 2x2 "
        "table).",
        "",
        "| measure | " + " | ".join(head) + " | seeds |",
        "|---|---|---|---|---|",
    ]

    def cell(e, unit):
        scale, form = (100, "+.1f") if unit == "points" else (1, "+.3g")
        value = f"{scale * e['value']:{form}}"
        if not e.get("interval"):
            return f"{value} (no interval)"
        lo, hi = e["interval"]
        p = f", p = {e['p_value']:.2g}" if e.get("p_value") is not None else ""
        return f"{value} [{scale * lo:{form}}, {scale * hi:{form}}]{p}"

    for m in result["measures"]:
        lines.append(
            f"| {m['measure']} ({m['unit']}) | "
            + " | ".join(cell(m[k], m["unit"]) for k in ("a", "b", "ab"))
            + f" | {m['seeds']} |"
        )
    return [*lines, ""]
