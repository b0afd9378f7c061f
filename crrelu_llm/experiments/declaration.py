"""What an experiment's stages are, as every part that reads them sees them: a
:class:`StageSpec` per stage (kind, arm, beta, seed, step, model, resolved keys, inputs,
completion file, action) and the :class:`Declaration` that holds them all.
:mod:`crrelu_llm.experiments.stages` builds it; the runner and its executors, the ledger,
``--plan``, ``summary.json`` and the report read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from crrelu_llm.experiments.layout import RunLayout
from crrelu_llm.training.objectives import OBJECTIVES

TRAINING_KINDS = ("original", "recover", "sft", "preference")


@dataclass
class StageSpec:
    name: str
    kind: str  # data, init, original, patch, recover, sft, preference, rewards, winrate, drift, benchmark, probe
    keys: dict  # resolved: what the stage computes from
    done: Path | None  # its completion file (None: an input from outside, never run here)
    action: Callable[[], None] | None
    after: list[str] = field(default_factory=list)
    clear: Path | None = None
    arm: str | None = None
    step: str | None = None  # place in the pipeline: original, step 0, recovered, SFT, DPO beta=...
    # (a preference run: preference_step)
    beta: float | None = None
    seed: int | None = None
    model: str | None = None  # the model this stage produces (training, patch) or evaluates
    command: str | None = None  # training: the crrelu-llm command it runs (a preference stage: dpo, simpo, orpo or kto)
    baseline: str | None = None  # winrate: the other side
    results: list[Path] = field(default_factory=list)
    final: bool = True  # preference: the run itself, not an earlier round of iterative training

    @property
    def external(self) -> bool:
        return self.done is None


@dataclass
class Declaration:
    layout: RunLayout
    data: str
    original: str
    arms: list[str]
    stages: list[StageSpec]

    def by_kind(self, *kinds: str) -> list[StageSpec]:
        return [s for s in self.stages if s.kind in kinds]

    def models(self) -> dict[str, dict[str, str]]:
        """arm -> {step: model directory} for every model of the arm (step 0 is the original for
        an unpatched arm)."""
        out: dict[str, dict[str, str]] = {arm: {"step 0": str(self.original)} for arm in self.arms}
        for s in self.stages:
            if s.kind in ("patch", "recover", "sft", "preference"):
                out[s.arm][s.step] = s.model
        return out

    @property
    def preference_runs(self) -> list[StageSpec]:
        """The preference runs the experiment compares (the last round of each, with rounds)."""
        return [s for s in self.by_kind("preference") if s.final]

    def start_of(self, run: StageSpec) -> str:
        """The model a preference run's chain started from (the arm's SFT, recovered or step-0
        model), through its earlier rounds."""
        spec = next(s for s in self.stages if s.name == run.after[0])
        return self.start_of(spec) if spec.kind == "preference" else spec.model

    def starts(self) -> dict[tuple[str, str], str]:
        """``(arm, step) -> the step it started from``: each model of :meth:`models` after the first
        against the one before it, a preference run against its chain's start (its SFT)."""
        out = {}
        for arm, steps in self.models().items():
            names = list(steps)
            at = {model: step for step, model in steps.items()}
            for earlier, later in zip(names, names[1:]):
                out[(arm, later)] = earlier
            for run in self.by_kind("preference"):
                if run.arm == arm and run.step in steps:
                    out[(arm, run.step)] = at.get(self.start_of(run), out.get((arm, run.step)))
        return out

    def eval_dirs(self) -> dict[str, Path]:
        return {str(self.original): self.layout.eval_dir(self.original)}


def preference_step(objective: str, beta: float, seed: int, round_: int | None = None) -> str:
    """A preference run's place in its arm's pipeline, as stages, tables and reports name it: its
    objective's label, beta and seed (``DPO beta=0.1 seed=0``, ``SimPO beta=2 seed=0``)."""
    return f"{OBJECTIVES[objective].label} beta={beta:g} seed={seed}" + (f" round {round_}" if round_ else "")
