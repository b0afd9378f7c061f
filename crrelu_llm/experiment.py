"""Experiments: arms x betas x seeds, each stage in its own directory, resumable.

    crrelu-llm experiment --config recipes/experiments/paper_gpt2_hh.yaml
    crrelu-llm demo          # the same runner with the embedded offline recipe (demo.yaml)

An experiment recipe (YAML) says:

- ``task`` (a built-in synthetic task, generated into ``<output_dir>/data``) or ``dataset_name``;
- ``original``: a hub id / path, or ``pretrain`` to build a small GELU model here and train it
  briefly on the task (a competent but imperfect "pretrained original");
- ``arms``: name -> recipe keys (``activation: null`` is the GELU baseline);
- ``sft`` and ``dpo``: recipe keys shared by every arm (TRL field names, as in training recipes);
- ``betas``, ``seeds``; ``evaluations``: ``rewards``, ``winrate`` (per DPO run), ``drift``,
  ``benchmark`` (lm-eval tasks) and ``probe`` (for the original, each arm's patched model at
  step 0, each SFT and each DPO run); ``launcher`` (e.g.
  ``accelerate launch --config_file ...``) to run the training stages under accelerate.

Stages: data, original, per arm ``patched`` (step 0), ``recover`` (optional: ``recover`` holds
``distill`` keys, e.g. ``epsilon_init: calibrate`` and ``swap_steps``, applied to every patched
arm alike, the ReLU control included) and ``sft``, per arm/beta/seed ``dpo``,
their evaluations, then the ``compare`` report. Every stage is a library call in this process
(:func:`crrelu_llm.train.run_keys`, :mod:`crrelu_llm.evaluate`, :func:`crrelu_llm.report.compare`);
only a ``launcher`` turns training stages into commands. A stage is skipped when its
completion file exists; a training stage that was interrupted resumes from its last checkpoint.
Where the stages run (here in turn, several at once on this node, or as Slurm jobs) is
:mod:`crrelu_llm.executors`' business: this module only declares them and their dependencies.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
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
from .executors import ExecutorSettings, Stage, check_slurm_keys, run_stages
from .files import read_json, writable_dir, write_json, write_text_atomic

logger = logging.getLogger("crrelu_llm.experiment")

DEMO_RECIPE = Path(__file__).with_name("demo.yaml")
KEYS = {"name", "output_dir", "task", "dataset_name", "original", "pretrain", "arms", "sft", "dpo", "betas", "seeds",
        "evaluations", "launcher", "baseline_arm", "recover", "slurm"}


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
    recover: dict | None = None
    slurm: dict = field(default_factory=dict)  # submitit SlurmExecutor settings, for --executor slurm
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
    _check_evaluations(path, raw.get("evaluations") or {})
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
    if raw.get("recover") is not None:
        if not isinstance(raw["recover"], dict):
            raise ExperimentError(f"{path}: 'recover' must be a mapping of distill recipe keys (e.g. max_steps: 200)")
        for arm, keys in raw["arms"].items():
            if keys.get("activation"):
                check_recipe_keys({**_recover_keys(raw["recover"], keys), **stage_keys}, "distill",
                                  f"{path} ({arm}, recover)")
    if raw.get("slurm") is not None:
        check_slurm_keys(path, raw["slurm"])
    if raw.get("pretrain"):
        check_recipe_keys({**raw["pretrain"].get("train", {}), **stage_keys}, "sft", f"{path} (pretrain)")
    out = Path(output_dir or raw.get("output_dir") or f"runs/{raw['name']}")
    return Experiment(name=raw["name"], output_dir=out, arms=raw["arms"], sft=raw.get("sft"), dpo=raw["dpo"],
                      betas=[float(b) for b in raw["betas"]], seeds=[int(s) for s in raw["seeds"]],
                      evaluations=raw.get("evaluations") or {}, task=raw.get("task"),
                      dataset_name=raw.get("dataset_name"), original=raw.get("original"), pretrain=raw.get("pretrain"),
                      launcher=raw.get("launcher"), baseline_arm=baseline, recover=raw.get("recover"),
                      slurm=raw.get("slurm") or {})


def _recover_keys(recover: dict, arm_keys: dict) -> dict:
    """The distill keys of an arm's recovery: the arm's keys, then the shared recovery keys;
    calibration applies to CRReLU only (the ReLU control has no eps to calibrate)."""
    keys = {**arm_keys, **recover}
    if arm_keys.get("activation") != "crrelu":
        for key in ("epsilon_init", "calibration_samples", "epsilon_learning_rate"):
            keys.pop(key, None)
    return keys


EVALUATION_KEYS = {
    "rewards": {"betas", "max_samples", "max_length"},
    "winrate": {"judge", "num_prompts", "max_new_tokens", "batch_size", "against_sft", "judge_concurrency"},
    "drift": {"max_samples", "max_length"},
    "benchmark": {"tasks", "limit", "num_fewshot", "batch_size"},
    "probe": {"max_samples", "max_length"},
}


def _check_evaluations(path, evaluations) -> None:
    if not isinstance(evaluations, dict):
        raise ExperimentError(f"{path}: 'evaluations' must be a mapping such as {{drift: {{max_samples: 100}}}}")
    for kind, settings in evaluations.items():
        if kind not in EVALUATION_KEYS:
            close = difflib.get_close_matches(kind, sorted(EVALUATION_KEYS), n=1)
            raise ExperimentError(f"{path}: unknown evaluation {kind!r}" + (f"; did you mean {close[0]!r}?" if close
                                  else f"; known: {', '.join(sorted(EVALUATION_KEYS))}"))
        if not isinstance(settings, dict):
            raise ExperimentError(f"{path}: evaluations.{kind} must be a mapping of its settings ({{}} for defaults)")
        unknown = sorted(set(settings) - EVALUATION_KEYS[kind])
        if unknown:
            raise ExperimentError(f"{path}: evaluations.{kind} has unknown key {unknown[0]!r}; known: "
                                  f"{', '.join(sorted(EVALUATION_KEYS[kind]))}")
    if "winrate" in evaluations and "judge" not in evaluations["winrate"]:
        raise ExperimentError(f"{path}: evaluations.winrate needs a 'judge' (e.g. rule:arithmetic)")
    if "benchmark" in evaluations and not evaluations["benchmark"].get("tasks"):
        raise ExperimentError(f"{path}: evaluations.benchmark needs 'tasks' (e.g. [crrelu_arith_mc])")


# --------------------------------------------------------------------------- stages


def _train(exp: Experiment, command: str, keys: dict, output_dir: Path) -> None:
    """One training stage: in this process (:func:`crrelu_llm.train.run_keys`), or as a command
    under the recipe's launcher; resumes by itself. The stage's keys are kept beside its outputs."""
    keys = {**keys, "output_dir": str(output_dir)}
    recipe = output_dir / f"{command}_stage.yaml"
    write_text_atomic(recipe, yaml.safe_dump(keys, sort_keys=True))
    if exp.launcher:
        cmd = [*launcher_command(exp.launcher), "-m", "crrelu_llm.cli", command, "--config", str(recipe)]
        logger.info("running %s", " ".join(cmd))
        result = subprocess.run(cmd)
        if result.returncode != 0:
            raise ExperimentError(f"stage {command} in {output_dir} failed under the launcher (exit "
                                  f"{result.returncode}); its output is above, and rerunning resumes it")
        return
    from .train import run_keys

    run_keys(command, keys, source=str(recipe))


def launcher_command(launcher: str) -> list[str]:
    """The launcher's words; ``accelerate launch`` gets ``--num_processes`` = the GPUs this process
    was given (``CUDA_VISIBLE_DEVICES``, set by ``--executor local`` or Slurm) unless it names a
    count itself: its config file's count is the node's, not the stage's share of it."""
    words = shlex.split(launcher)
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    is_accelerate = any("accelerate" in w for w in words) and any(w == "launch" or w.endswith(".launch") for w in words)
    if is_accelerate and visible and not any(w.startswith("--num_processes") for w in words):
        at = next(i for i, w in enumerate(words) if w == "launch" or w.endswith(".launch")) + 1
        words[at:at] = ["--num_processes", str(len(visible))]
    return words


class Ledger:
    """What every stage was computed from, kept in ``<output_dir>/stages.json``.

    A stage's fingerprint covers its resolved keys and the fingerprints of the stages it reads,
    so a changed key changes the fingerprint of its stage and of everything downstream. A stage
    is skipped only when its completion file exists *and* its fingerprint is unchanged. A done
    stage whose fingerprint changed is refused, naming what changed, before anything runs, or
    recomputed (with its outputs cleared first) when the user passed ``rerun_changed``."""

    def __init__(self, output_dir: Path, rerun_changed: bool = False):
        self.path = output_dir / "stages.json"
        self.root = str(output_dir)
        self.rerun_changed = rerun_changed
        self.records: dict = read_json(self.path) if self.path.exists() else {}
        self.fingerprints: dict[str, str] = {}
        self.dry_run = False
        self.changed: list[str] = []
        self.log: list[dict] = []
        self.pending: list[Stage] = []  # what has to run, in declaration (dependency) order

    @staticmethod
    def fingerprint(keys: dict) -> str:
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def stage(self, name: str, done: Path, action, keys: dict, after=(), clear: Path | None = None) -> None:
        # paths inside the experiment are recorded relative to it, so a moved experiment stays current
        text = json.dumps({**keys, "after": {dep: self.fingerprints[dep] for dep in after}}, sort_keys=True,
                          default=str)
        keys = json.loads(text.replace(json.dumps(self.root)[1:-1], "<out>"))
        fingerprint = self.fingerprints[name] = self.fingerprint(keys)
        recorded = self.records.get(name)
        stale = done.exists() and recorded is not None and recorded["fingerprint"] != fingerprint
        if self.dry_run:
            if stale:
                self.changed.append(f"{name} ({_differences(recorded['keys'], keys)})")
            return
        if done.exists() and not stale:
            logger.info("skip %s (done: %s)", name, done)
            self.log.append({"stage": name, "status": "skipped"})
            if recorded is None:  # done before this ledger existed: adopt it as it is
                self._record(name, fingerprint, keys)
            return
        self.pending.append(Stage(name, done, action, list(after), clear, stale,
                                  {"fingerprint": fingerprint, "keys": keys}))

    def finish(self, stage: Stage, timing: dict) -> None:
        """Record ``stage`` as done (called as each stage finishes, wherever it ran)."""
        if not stage.done.exists():
            raise ExperimentError(f"stage {stage.name} finished without writing {stage.done}")
        self._record(stage.name, stage.record["fingerprint"], stage.record["keys"])
        self.log.append({"stage": stage.name, "status": "reran" if stage.stale else "ran", **timing})

    def _record(self, name: str, fingerprint: str, keys: dict) -> None:
        self.records[name] = {"fingerprint": fingerprint, "keys": keys}
        write_json(self.path, self.records)


def _differences(old: dict, new: dict) -> str:
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
               if k != "after" and old.get(k) != new.get(k)]
    upstream = [dep for dep in sorted(set(old.get("after", {})) | set(new.get("after", {})))
                if old.get("after", {}).get(dep) != new.get("after", {}).get(dep)]
    if upstream:
        changed.append("inputs from " + ", ".join(upstream))
    return "; ".join(changed) or "its record"


def _data_identity(exp: Experiment) -> dict:
    """What the data is: the task spec, or the dataset name plus a digest of local files."""
    if exp.task:
        return {"task": exp.task}
    path = Path(exp.dataset_name).expanduser()
    if not path.exists():
        return {"dataset_name": exp.dataset_name}
    digest = hashlib.sha256()
    for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        digest.update(str(file.relative_to(path.parent)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return {"dataset_name": exp.dataset_name, "sha256": digest.hexdigest()}


def _prepare_data(exp: Experiment, ledger: Ledger) -> str:
    if exp.dataset_name:  # not a stage, but what every stage reads: its identity enters their fingerprints
        ledger.fingerprints["data"] = ledger.fingerprint(_data_identity(exp))
        return exp.dataset_name
    data = exp.output_dir / "data"

    def make():
        from .tasks import write_task_files

        task = dict(exp.task)
        write_task_files(task.pop("name"), data, task.pop("n_train"), task.pop("n_test"), task.pop("seed", 0))

    ledger.stage("data", data / "test.jsonl", make, _data_identity(exp), clear=data)
    return str(data)


def _prepare_original(exp: Experiment, data: str, ledger: Ledger) -> str:
    if exp.original:
        ledger.fingerprints["original"] = ledger.fingerprint({"original": exp.original})
        return exp.original
    init, original = exp.output_dir / "init", exp.output_dir / "original"

    def build():
        from .tiny import tiny_causal_lm, tiny_tokenizer

        spec = dict(exp.pretrain)
        model = tiny_causal_lm(spec.get("model_type", "gpt2"), seed=spec.get("seed", 0), **spec.get("config", {}))
        model.save_pretrained(init)
        tiny_tokenizer().save_pretrained(init)

    spec = {k: v for k, v in exp.pretrain.items() if k != "train"}
    ledger.stage("init", init / "config.json", build, spec, clear=init)
    keys = {"model_name_or_path": str(init), "dataset_name": data, "activation": None, **exp.pretrain.get("train", {})}
    ledger.stage("original", original / "final_metrics.json", lambda: _train(exp, "sft", keys, original), keys,
                 after=["init", "data"], clear=original)
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


def _eval_dir(exp: Experiment, model) -> Path:
    """Where a model's evaluations go, known before the model exists (stages are declared before
    any of them runs): ``MODEL/eval`` for a model of this experiment or a local directory,
    ``<output_dir>/original/eval`` for a hub model (never the working directory)."""
    if str(model).startswith(str(exp.output_dir)) or Path(model).is_dir():
        return Path(model) / "eval"
    return exp.output_dir / "original" / "eval"


def _evaluate_model(exp: Experiment, ledger: Ledger, data: str, original: str, model, label: str,
                    after: str) -> None:
    """The per-model evaluations the recipe asks for: drift to the original, benchmarks, probe."""
    evals, out = exp.evaluations, _eval_dir(exp, model)
    if "drift" in evals and str(model) != str(original):
        d = evals["drift"]
        ledger.stage(f"{label} drift", evaluate.drift_file(model, out),
                     lambda: evaluate.run_drift(model, original, data, max_samples=d.get("max_samples", 200),
                                                max_length=d.get("max_length", 1024), out=out),
                     d, after=[after, "original", "data"])
    if "benchmark" in evals:
        from .benchmark import benchmark_file, parse_tasks, run_benchmark

        b = evals["benchmark"]
        tasks = parse_tasks(b["tasks"])
        ledger.stage(f"{label} benchmark", benchmark_file(model, tasks[-1], out),
                     lambda: run_benchmark(model, tasks, limit=b.get("limit"), num_fewshot=b.get("num_fewshot"),
                                           batch_size=b.get("batch_size", 16), out=out),
                     b, after=[after])
    if "probe" in evals:
        p = evals["probe"]
        ledger.stage(f"{label} probe", evaluate.probe_file(model, out),
                     lambda: evaluate.run_probe(model, data, original=None if str(model) == str(original) else original,
                                                max_samples=p.get("max_samples", 200),
                                                max_length=p.get("max_length", 1024), out=out),
                     p, after=[after, "original", "data"])


STEP0_EVALUATIONS = ("drift", "benchmark", "probe")


def _walk(exp: Experiment, ledger: Ledger) -> dict:
    """Declare every stage in dependency order (the ledger runs, skips or, on a dry run, checks
    them). Returns the DPO run directories, the SFT directory of each arm and, per arm, the
    model of every stage (for the report)."""
    data = _prepare_data(exp, ledger)
    original = _prepare_original(exp, data, ledger)
    evals = exp.evaluations
    common = {"dataset_name": data}
    _evaluate_model(exp, ledger, data, original, original, "original", "original")
    sft_dirs, sft_stage, stages = {}, {}, {arm: {} for arm in exp.arms}
    for arm, arm_keys in exp.arms.items():
        activation = arm_keys.get("activation")
        stages[arm]["step 0"] = original
        if activation and any(kind in evals for kind in STEP0_EVALUATIONS):
            patched = exp.output_dir / arm / "patched"
            ledger.stage(f"{arm}/patched", patched / "patch_report.json",
                         lambda a=arm_keys, p=patched: _patch(original, p, a),
                         {"activation": activation, "epsilon_init": arm_keys.get("epsilon_init", 0.01)},
                         after=["original"], clear=patched)
            _evaluate_model(exp, ledger, data, original, patched, f"{arm}/patched", f"{arm}/patched")
            stages[arm]["step 0"] = patched
        start, start_stage = original, "original"
        if exp.recover is not None and activation:
            recovered = exp.output_dir / arm / "recover"
            keys = {**common, **_recover_keys(exp.recover, arm_keys), "model_name_or_path": original}
            ledger.stage(f"{arm}/recover", recovered / "final_metrics.json",
                         lambda k=keys, d=recovered: _train(exp, "distill", k, d), keys, after=["original", "data"],
                         clear=recovered)
            _evaluate_model(exp, ledger, data, original, recovered, f"{arm}/recover", f"{arm}/recover")
            stages[arm]["recovered"] = recovered
            start, start_stage = str(recovered), f"{arm}/recover"
        if exp.sft is not None:
            sft = exp.output_dir / arm / "sft"
            keys = {**common, **exp.sft, **arm_keys, "model_name_or_path": start}
            ledger.stage(f"{arm}/sft", sft / "final_metrics.json", lambda k=keys, d=sft: _train(exp, "sft", k, d),
                         keys, after=[start_stage, "data"], clear=sft)
            sft_dirs[arm], sft_stage[arm] = sft, f"{arm}/sft"
            _evaluate_model(exp, ledger, data, original, sft, f"{arm}/sft", f"{arm}/sft")
            stages[arm]["SFT"] = sft
        else:
            sft_dirs[arm], sft_stage[arm] = Path(start), start_stage
    dpo_stage = {}
    for arm, beta, seed, out in _stage_dirs(exp):
        # every beta and seed of an arm shares its reference (the arm's SFT model): its log-probabilities are
        # computed once and kept under the arm (crrelu_llm.reference_cache), unless the recipe says otherwise
        shared_reference = {"precompute_ref_log_probs": True, "ref_logps_cache_dir": str(exp.output_dir / arm / "ref_logps")}
        keys = {**common, **shared_reference, **exp.dpo, **exp.arms[arm], "model_name_or_path": str(sft_dirs[arm]),
                "beta": beta, "seed": seed, "reference": "policy"}
        name = dpo_stage[out] = f"{arm}/dpo beta={beta:g} seed={seed}"
        ledger.stage(name, out / "final_metrics.json", lambda k=keys, d=out: _train(exp, "dpo", k, d), keys,
                     after=[sft_stage[arm], "data"], clear=out)
        _evaluate_model(exp, ledger, data, original, out, name, name)
        stages[arm][f"DPO beta={beta:g} seed={seed}"] = out
    dpo_runs = []
    for arm, beta, seed, out in _stage_dirs(exp):
        dpo_runs.append(out)
        if "rewards" in evals:
            r = evals["rewards"]
            ledger.stage(f"{arm}/rewards beta={beta:g} seed={seed}", evaluate.rewards_file(out, _eval_dir(exp, out)),
                         lambda o=out, a=arm, r=r: evaluate.run_rewards(
                             o, sft_dirs[a], data, betas=r.get("betas", exp.betas),
                             max_samples=r.get("max_samples", 500), max_length=r.get("max_length", 1024)),
                         r, after=[dpo_stage[out], sft_stage[arm]])
        if "winrate" in evals:
            w = evals["winrate"]
            settings = GenerationSettings(max_new_tokens=w.get("max_new_tokens", 128), batch_size=w.get("batch_size", 16))
            baselines = [(sft_dirs[arm], sft_stage[arm])] if w.get("against_sft", True) else []
            if arm != exp.baseline_arm:
                other = exp.output_dir / exp.baseline_arm / out.name
                baselines.append((other, dpo_stage[other]))
            for baseline, baseline_stage in baselines:
                ledger.stage(f"{arm}/winrate {out.name} vs {baseline.parent.name}/{baseline.name}",
                             evaluate.winrate_file(out, w["judge"], baseline, _eval_dir(exp, out)),
                             lambda o=out, b=baseline, w=w, s=settings: evaluate.run_winrate(
                                 o, b, data, w["judge"], num_prompts=w.get("num_prompts", 200), settings=s,
                                 judge_concurrency=w.get("judge_concurrency", 8)),
                             w, after=[dpo_stage[out], baseline_stage])
    eval_dirs = {str(original): _eval_dir(exp, original)}
    return {"dpo_runs": dpo_runs, "sft_dirs": sft_dirs, "stages": stages, "eval_dirs": eval_dirs}


def run_experiment(exp: Experiment, rerun_changed: bool = False, executor: ExecutorSettings | None = None) -> dict:
    """Run (or skip, when done and unchanged) every stage of ``exp``; the summary also goes to
    ``summary.json``. Stages whose inputs changed since they ran are refused before anything
    runs, naming the changes, unless ``rerun_changed`` (then they and their dependents rerun).
    ``executor`` says where the stages run (:mod:`crrelu_llm.executors`; default: here, in turn)."""
    start = time.time()
    executor = executor or ExecutorSettings()
    executor.slurm = {**exp.slurm, **executor.slurm}
    executor.check(exp.output_dir / "jobs")
    writable_dir(exp.output_dir)
    ledger = Ledger(exp.output_dir, rerun_changed)
    ledger.dry_run = True
    _walk(exp, ledger)
    if ledger.changed and not rerun_changed:
        shown = "; ".join(ledger.changed[:3]) + (f"; and {len(ledger.changed) - 3} more" if len(ledger.changed) > 3
                                                   else "")
        raise ExperimentError(f"{exp.output_dir}: {len(ledger.changed)} finished stage(s) were computed from other "
                              f"inputs: {shown}. Pass --rerun-changed to recompute them and what depends on them, "
                              "or choose another --out")
    ledger.dry_run, ledger.fingerprints = False, {}
    walked = _walk(exp, ledger)
    run_stages(ledger.pending, ledger.finish, executor, exp.output_dir / "jobs")
    dpo_runs, sft_dirs = walked["dpo_runs"], walked["sft_dirs"]
    exp.stage_log = ledger.log
    from .report import compare
    from .summary import help_or_harm, summarise

    compare([f"{run.parent.name}={run}" for run in dpo_runs], exp.output_dir / "report",
            step0_drift={arm: evaluate.drift_file(patched, _eval_dir(exp, patched))
                         for arm in exp.arms for patched in [exp.output_dir / arm / "patched"]},
            stages=walked["stages"], eval_dirs=walked["eval_dirs"])
    summary = {**summarise(exp, dpo_runs, sft_dirs), "seconds": round(time.time() - start, 1),
               "help_or_harm": help_or_harm(walked["stages"], walked["eval_dirs"])}
    write_json(exp.output_dir / "summary.json", {"stages": exp.stage_log, **summary})
    return summary
