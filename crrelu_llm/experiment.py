"""Experiments: arms x betas x seeds, each stage in its own directory, resumable.

    crrelu-llm experiment --config recipes/experiments/paper_gpt2_hh.yaml
    crrelu-llm demo          # the same runner with the embedded offline recipe (demo.yaml)

An experiment recipe (YAML) says:

- ``task`` (a built-in synthetic task, generated into ``<output_dir>/data``) or ``dataset_name``;
- ``original``: a hub id / path, or ``pretrain`` to build a small GELU model here and train it
  briefly on the task (a competent but imperfect "pretrained original");
- ``arms``: name -> recipe keys (``activation: null`` is the GELU baseline);
- ``sft`` and ``dpo``: recipe keys shared by every arm (TRL field names, as in training recipes);
- ``betas``, ``seeds``; ``evaluations`` (rewards, win rates, drift); ``launcher`` (e.g.
  ``accelerate launch --config_file ...``) to run the training stages under accelerate.

Stages: data, original, per arm ``patched`` (step 0) and ``sft``, per arm/beta/seed ``dpo``,
their evaluations, then the ``compare`` report. Every stage is a library call in this process
(:func:`crrelu_llm.train.run_keys`, :mod:`crrelu_llm.evaluate`, :func:`crrelu_llm.report.compare`);
only a ``launcher`` turns training stages into commands. A stage is skipped when its
completion file exists; a training stage that was interrupted resumes from its last checkpoint.
"""

from __future__ import annotations

import difflib
import logging
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import evaluate
from .config import check_recipe_keys
from .generation import GenerationSettings
from .errors import ExperimentError
from .files import read_json, write_json, write_text_atomic

logger = logging.getLogger("crrelu_llm.experiment")

DEMO_RECIPE = Path(__file__).with_name("demo.yaml")
KEYS = {"name", "output_dir", "task", "dataset_name", "original", "pretrain", "arms", "sft", "dpo", "betas", "seeds",
        "evaluations", "launcher", "baseline_arm"}


@dataclass
class Experiment:
    name: str
    output_dir: Path
    arms: dict[str, dict]
    sft: dict | None
    dpo: dict
    betas: list[float]
    seeds: list[int]
    evaluations: dict = field(default_factory=dict)
    task: dict | None = None
    dataset_name: str | None = None
    original: str | None = None
    pretrain: dict | None = None
    launcher: str | None = None
    baseline_arm: str = "gelu"
    stage_log: list[dict] = field(default_factory=list)  # what ran and what was skipped, for summary.json


def load_experiment(path: str | Path, output_dir: str | None = None, overrides: dict | None = None) -> Experiment:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ExperimentError(f"experiment recipe {path} does not exist") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path} must be a YAML mapping")
    raw.update(overrides or {})
    unknown = set(raw) - KEYS
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, sorted(KEYS), n=1)
        raise ExperimentError(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    for key in ("name", "arms", "dpo", "betas", "seeds"):
        if key not in raw:
            raise ExperimentError(f"{path}: {key!r} is required")
    if bool(raw.get("task")) == bool(raw.get("dataset_name")):
        raise ExperimentError(f"{path}: give exactly one of 'task' (built-in synthetic data) or 'dataset_name'")
    if bool(raw.get("original")) == bool(raw.get("pretrain")):
        raise ExperimentError(f"{path}: give exactly one of 'original' (a model) or 'pretrain' (build one here)")
    baseline = raw.get("baseline_arm", "gelu")
    if baseline not in raw["arms"]:
        raise ExperimentError(f"{path}: baseline_arm {baseline!r} is not one of the arms {sorted(raw['arms'])}")
    stage_keys = {"model_name_or_path": "x", "dataset_name": "x", "output_dir": "x"}
    dpo_keys = {"beta": 0.1, "seed": 0, "reference": "policy"}
    for arm, keys in raw["arms"].items():  # every stage's keys, checked before anything runs
        if not isinstance(keys, dict):
            raise ExperimentError(f"{path}: arm {arm!r} must be a mapping of recipe keys (e.g. activation: crrelu)")
        for command, shared in (("sft", raw.get("sft")), ("dpo", raw["dpo"])):
            if shared is not None:
                extra = dpo_keys if command == "dpo" else {}
                check_recipe_keys({**shared, **keys, **stage_keys, **extra}, command, f"{path} ({arm}, {command})")
    if raw.get("pretrain"):
        check_recipe_keys({**raw["pretrain"].get("train", {}), **stage_keys}, "sft", f"{path} (pretrain)")
    out = Path(output_dir or raw.get("output_dir") or f"runs/{raw['name']}")
    return Experiment(name=raw["name"], output_dir=out, arms=raw["arms"], sft=raw.get("sft"), dpo=raw["dpo"],
                      betas=[float(b) for b in raw["betas"]], seeds=[int(s) for s in raw["seeds"]],
                      evaluations=raw.get("evaluations") or {}, task=raw.get("task"),
                      dataset_name=raw.get("dataset_name"), original=raw.get("original"), pretrain=raw.get("pretrain"),
                      launcher=raw.get("launcher"), baseline_arm=baseline)


# --------------------------------------------------------------------------- stages


def _train(exp: Experiment, command: str, keys: dict, output_dir: Path) -> None:
    """One training stage: in this process (:func:`crrelu_llm.train.run_keys`), or as a command
    under the recipe's launcher; resumes by itself. The stage's keys are kept beside its outputs."""
    keys = {**keys, "output_dir": str(output_dir)}
    recipe = output_dir / f"{command}_stage.yaml"
    write_text_atomic(recipe, yaml.safe_dump(keys, sort_keys=True))
    if exp.launcher:
        cmd = [*shlex.split(exp.launcher), "-m", "crrelu_llm.cli", command, "--config", str(recipe)]
        logger.info("running %s", " ".join(cmd))
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise ExperimentError(f"stage {command} in {output_dir} failed under the launcher (exit "
                                  f"{result.returncode}); its output is above, and rerunning resumes it")
        return
    from .train import run_keys

    run_keys(command, keys, source=str(recipe))


def _stage(name: str, done: Path, action, log: list) -> None:
    if done.exists():
        logger.info("skip %s (done: %s)", name, done)
        log.append({"stage": name, "status": "skipped"})
        return
    logger.info("stage %s", name)
    start = time.time()
    action()
    if not done.exists():
        raise ExperimentError(f"stage {name} finished without writing {done}")
    log.append({"stage": name, "status": "ran", "seconds": round(time.time() - start, 1)})


def _prepare_data(exp: Experiment) -> str:
    if exp.dataset_name:
        return exp.dataset_name
    data = exp.output_dir / "data"

    def make():
        from .tasks import write_task_files

        task = dict(exp.task)
        write_task_files(task.pop("name"), data, task.pop("n_train"), task.pop("n_test"), task.pop("seed", 0))

    _stage("data", data / "test.jsonl", make, exp.stage_log)
    return str(data)


def _prepare_original(exp: Experiment, data: str) -> str:
    if exp.original:
        return exp.original
    init, original = exp.output_dir / "init", exp.output_dir / "original"

    def build():
        from .tiny import tiny_causal_lm, tiny_tokenizer

        spec = dict(exp.pretrain)
        model = tiny_causal_lm(spec.get("model_type", "gpt2"), seed=spec.get("seed", 0), **spec.get("config", {}))
        model.save_pretrained(init)
        tiny_tokenizer().save_pretrained(init)

    _stage("init", init / "config.json", build, exp.stage_log)
    keys = {"model_name_or_path": str(init), "dataset_name": data, "activation": None, **exp.pretrain.get("train", {})}
    _stage("original", original / "final_metrics.json", lambda: _train(exp, "sft", keys, original), exp.stage_log)
    return str(original)


def _stage_dirs(exp: Experiment):
    for arm in exp.arms:
        for beta in exp.betas:
            for seed in exp.seeds:
                yield arm, beta, seed, exp.output_dir / arm / f"dpo-beta{beta:g}-seed{seed}"


def _patch(original: str, out: Path, arm_keys: dict) -> None:
    from .checkpoints import patch_checkpoint

    patch_checkpoint(original, out, activation=arm_keys["activation"],
                     epsilon_init=arm_keys.get("epsilon_init", 0.01), overwrite=True)


def run_experiment(exp: Experiment) -> dict:
    """Run (or skip, when done) every stage of ``exp``; the summary also goes to ``summary.json``."""
    start = time.time()
    exp.stage_log = []
    exp.output_dir.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(exp)
    original = _prepare_original(exp, data)
    evals = exp.evaluations
    common = {"dataset_name": data}
    sft_dirs = {}
    for arm, arm_keys in exp.arms.items():
        activation = arm_keys.get("activation")
        if activation and evals.get("drift"):
            patched = exp.output_dir / arm / "patched"
            _stage(f"{arm}/patched", patched / "patch_report.json",
                   lambda a=arm_keys, p=patched: _patch(original, p, a), exp.stage_log)
            _stage(f"{arm}/patched drift", evaluate.drift_file(patched),
                   lambda p=patched: evaluate.run_drift(p, original, data,
                                                        max_samples=evals["drift"].get("max_samples", 200)),
                   exp.stage_log)
        if exp.sft is not None:
            sft = exp.output_dir / arm / "sft"
            keys = {**common, **exp.sft, **arm_keys, "model_name_or_path": original}
            _stage(f"{arm}/sft", sft / "final_metrics.json", lambda k=keys, d=sft: _train(exp, "sft", k, d), exp.stage_log)
            sft_dirs[arm] = sft
        else:
            sft_dirs[arm] = Path(original)
    for arm, beta, seed, out in _stage_dirs(exp):
        keys = {**common, **exp.dpo, **exp.arms[arm], "model_name_or_path": str(sft_dirs[arm]), "beta": beta,
                "seed": seed, "reference": "policy"}
        _stage(f"{arm}/dpo beta={beta:g} seed={seed}", out / "final_metrics.json",
               lambda k=keys, d=out: _train(exp, "dpo", k, d), exp.stage_log)
    dpo_runs = []
    for arm, beta, seed, out in _stage_dirs(exp):
        dpo_runs.append(out)
        if "rewards" in evals:
            r = evals["rewards"]
            _stage(f"{arm}/rewards beta={beta:g} seed={seed}", evaluate.rewards_file(out),
                   lambda o=out, a=arm, r=r: evaluate.run_rewards(
                       o, sft_dirs[a], data, betas=r.get("betas", exp.betas), max_samples=r.get("max_samples", 500),
                       max_length=r.get("max_length", 1024)), exp.stage_log)
        if "winrate" in evals:
            w = evals["winrate"]
            settings = GenerationSettings(max_new_tokens=w.get("max_new_tokens", 128), batch_size=w.get("batch_size", 16))
            baselines = [sft_dirs[arm]] if w.get("against_sft", True) else []
            if arm != exp.baseline_arm:
                baselines.append(exp.output_dir / exp.baseline_arm / out.name)
            for baseline in baselines:
                _stage(f"{arm}/winrate {out.name} vs {baseline.parent.name}/{baseline.name}",
                       evaluate.winrate_file(out, w["judge"], baseline),
                       lambda o=out, b=baseline, w=w, s=settings: evaluate.run_winrate(
                           o, b, data, w["judge"], num_prompts=w.get("num_prompts", 200), settings=s), exp.stage_log)
    from .report import compare

    compare([f"{run.parent.name}={run}" for run in dpo_runs], exp.output_dir / "report")
    summary = {**summarise(exp, dpo_runs, sft_dirs), "seconds": round(time.time() - start, 1)}
    write_json(exp.output_dir / "summary.json", {"stages": exp.stage_log, **summary})
    return summary


# --------------------------------------------------------------------------- summary


def summarise(exp: Experiment, dpo_runs: list[Path], sft_dirs: dict) -> dict:
    rows = []
    for out in dpo_runs:
        arm = out.parent.name
        row = {"arm": arm, "run": str(out)}
        final = read_json(out / "final_metrics.json")
        row["eval_reward_accuracy"] = final.get("eval_rewards/accuracies")
        eps = [v for k, v in final.items() if k.startswith("final_epsilon/") and k[14:].isdigit()]
        row["epsilon_range"] = [min(eps), max(eps)] if eps else None
        judge = exp.evaluations.get("winrate", {}).get("judge")
        baselines = {"vs-sft": sft_dirs[arm], f"vs-{exp.baseline_arm}": exp.output_dir / exp.baseline_arm / out.name}
        for name, baseline in baselines.items():
            file = evaluate.winrate_file(out, judge, baseline) if judge else None
            if file and file.exists() and baseline != out:
                stats = read_json(file)["stats"]
                row[f"winrate_{name}"] = {"win_rate": stats["win_rate"], "interval": stats["interval"],
                                         "wins": stats["wins"], "ties": stats["ties"], "losses": stats["losses"]}
        drift = evaluate.drift_file(exp.output_dir / arm / "patched")
        if drift.exists():
            row["kl_step0"] = read_json(drift)["kl_patched_original"]
        rows.append(row)
    return {"rows": rows, "report": str(exp.output_dir / "report" / "report.md")}


def format_table(summary: dict, baseline: str) -> str:
    def wr(entry):
        if not entry:
            return "–"
        lo, hi = entry["interval"]
        return f"{entry['win_rate']:.2f} [{lo:.2f}, {hi:.2f}]"

    lines = [f"{'run':34s} {'DPO vs own SFT':>20s} {'vs ' + baseline + ' DPO':>20s} {'reward acc':>10s} "
             f"{'KL step 0':>9s} {'eps range':>17s}"]
    for r in summary["rows"]:
        run = f"{r['arm']}/{Path(r['run']).name}"
        eps = f"[{r['epsilon_range'][0]:.3f}, {r['epsilon_range'][1]:.3f}]" if r.get("epsilon_range") else "–"
        acc = f"{r['eval_reward_accuracy']:.3f}" if r.get("eval_reward_accuracy") is not None else "–"
        kl = f"{r['kl_step0']:.3f}" if "kl_step0" in r else "–"
        lines.append(f"{run:34s} {wr(r.get('winrate_vs-sft')):>20s} {wr(r.get(f'winrate_vs-{baseline}')):>20s} "
                     f"{acc:>10s} {kl:>9s} {eps:>17s}")
    return "\n".join(lines)
