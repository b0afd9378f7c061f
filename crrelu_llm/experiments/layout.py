"""Where an experiment keeps everything: the one owner of the run-directory layout.

    <output_dir>/
      data/                         the built-in task's files (when the recipe names a task)
      init/  original/              the pretrain spec's model before and after its training
      <arm>/patched/                the arm's model at step 0 (patched, not trained)
      <arm>/recover/                distillation from the original (recipe key ``recover``)
      <arm>/sft/                    SFT
      <arm>/pairs/                  on-policy pairs from the arm's SFT model (recipe key ``on_policy``)
      <arm>/<objective>-beta<B>-seed<S>/  one preference run: dpo-beta0.1-seed0, simpo-beta2-seed0...
                                    (with rounds: its last round)
      <arm>/<objective>-beta<B>-seed<S>-round<R>/  an earlier round of iterative training
      <arm>/pairs-beta<B>-seed<S>-round<R>/  the pairs of round R, from round R - 1's model
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

    def preference(self, arm: str, objective: str, beta: float, seed: int, round_: int = 1, rounds: int = 1) -> Path:
        """A preference run, named after its objective (``dpo``, ``simpo``, ``orpo``, ``kto``); with
        ``rounds`` > 1, round ``round_`` of iterative training, the last one being the run itself."""
        run = self.root / arm / f"{objective}-beta{beta:g}-seed{seed}"
        return run if round_ == rounds else run.with_name(f"{run.name}-round{round_}")

    @staticmethod
    def before_objective_names(run: Path, objective: str) -> Path:
        """Where versions before runs were named after their objective kept a preference run:
        ``dpo-beta<B>-seed<S>...`` whatever it trained."""
        return run.with_name("dpo" + run.name.removeprefix(objective))

    def pairs(self, arm: str, beta: float | None = None, seed: int | None = None, round_: int = 1) -> Path:
        """On-policy pairs: round 1's from the arm's SFT model, later rounds' per DPO chain."""
        if round_ == 1:
            return self.root / arm / "pairs"
        return self.root / arm / f"pairs-beta{beta:g}-seed{seed}-round{round_}"

    def ref_logps(self, arm: str) -> Path:
        return self.root / arm / "ref_logps"

    def eval_dir(self, model) -> Path:
        """Where a model's evaluations go, known before the model exists (the rule of
        :func:`crrelu_llm.evaluation.results.eval_dir`): beside a model of this experiment or a
        local directory, and beside the original for a hub model."""
        from crrelu_llm.evaluation.results import eval_dir

        if str(model).startswith(str(self.root)) or Path(model).is_dir():
            return eval_dir(model, local=True)
        return eval_dir(self.original, local=True)

    @property
    def tracking(self) -> Path:
        """Where the evaluation stages' tracker runs go (``tensorboard/<experiment>/<stage>``, W&B's ``wandb/``)."""
        return self.root / "tracking"

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
