"""Where an experiment keeps everything: the one owner of the run-directory layout.

    <output_dir>/
      data/                         the built-in task's files (when the recipe names a task)
      init/  original/              the pretrain spec's model before and after its training
      <arm>/patched/                the arm's model at step 0 (patched, not trained)
      <arm>/recover/                distillation from the original (recipe key ``recover``)
      <arm>/sft/                    SFT
      <arm>/dpo-beta<B>-seed<S>/    one DPO run
      <arm>/ref_logps/              the reference log-probabilities the arm's DPO runs share
      MODEL/eval/                   every evaluation of MODEL (a hub original's: original/eval)
      report/                       the compare report
      stages.json  summary.json  jobs/

Every other module asks this one for a path; none spells a directory name itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def init(self) -> Path:
        return self.root / "init"

    @property
    def original(self) -> Path:
        return self.root / "original"

    def arm(self, arm: str) -> Path:
        return self.root / arm

    def patched(self, arm: str) -> Path:
        return self.root / arm / "patched"

    def recover(self, arm: str) -> Path:
        return self.root / arm / "recover"

    def sft(self, arm: str) -> Path:
        return self.root / arm / "sft"

    @staticmethod
    def dpo_name(beta: float, seed: int) -> str:
        return f"dpo-beta{beta:g}-seed{seed}"

    def dpo(self, arm: str, beta: float, seed: int) -> Path:
        return self.root / arm / self.dpo_name(beta, seed)

    def ref_logps(self, arm: str) -> Path:
        return self.root / arm / "ref_logps"

    def eval_dir(self, model) -> Path:
        """Where a model's evaluations go, known before the model exists: ``MODEL/eval`` for a
        model of this experiment or a local directory, ``original/eval`` for a hub model."""
        if str(model).startswith(str(self.root)) or Path(model).is_dir():
            return Path(model) / "eval"  # evaluate.eval_dir's rule, before the model exists
        return self.original / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def ledger(self) -> Path:
        return self.root / "stages.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"
