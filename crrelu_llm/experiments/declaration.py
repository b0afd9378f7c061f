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

TRAINING_KINDS = ("original", "recover", "sft", "dpo")


@dataclass
class StageSpec:
    name: str
    kind: str  # data, init, original, patch, recover, sft, dpo, rewards, winrate, drift, benchmark, probe
    keys: dict  # resolved: what the stage computes from
    done: Path | None  # its completion file (None: an input from outside, never run here)
    action: Callable[[], None] | None
    after: list[str] = field(default_factory=list)
    clear: Path | None = None
    arm: str | None = None
    step: str | None = None  # place in the pipeline of the model: original, step 0, recovered, SFT, DPO ...
    beta: float | None = None
    seed: int | None = None
    model: str | None = None  # the model this stage produces (training, patch) or evaluates
    command: str | None = None  # training: the crrelu-llm command it runs (a "dpo" stage may run simpo, orpo, kto)
    baseline: str | None = None  # winrate: the other side
    results: list[Path] = field(default_factory=list)
    final: bool = True  # dpo: the run itself, not an earlier round of iterative DPO

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
            if s.kind in ("patch", "recover", "sft", "dpo"):
                out[s.arm][s.step] = s.model
        return out

    @property
    def dpo_runs(self) -> list[StageSpec]:
        """The preference runs the experiment compares (the last round of each, with rounds)."""
        return [s for s in self.by_kind("dpo") if s.final]

    def start_of(self, dpo: StageSpec) -> str:
        """The model a DPO run's chain started from (the arm's SFT, recovered or step-0 model),
        through its earlier rounds."""
        spec = next(s for s in self.stages if s.name == dpo.after[0])
        return self.start_of(spec) if spec.kind == "dpo" else spec.model

    def eval_dirs(self) -> dict[str, Path]:
        return {str(self.original): self.layout.eval_dir(self.original)}
