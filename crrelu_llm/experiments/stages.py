"""One typed declaration of every stage of an experiment, built once from the recipe.

:func:`declare` turns an :class:`~crrelu_llm.experiments.experiment.Experiment` into a list of
:class:`~crrelu_llm.experiments.declaration.StageSpec`: what kind each stage is, its arm, beta,
seed and place in the pipeline, the model it produces or evaluates, its resolved keys (the
runner's defaults filled in), the stages it reads, its completion file and the action that
computes it. Everything that needs to know the stages reads this list: the runner and its
executors, the staleness ledger, ``--plan``, ``summary.json`` and the report. Paths come from
:class:`~crrelu_llm.experiments.layout.RunLayout`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from crrelu_llm import run_files
from crrelu_llm.evaluation import evaluate
from crrelu_llm.evaluation.generation import GenerationSettings
from crrelu_llm.evaluation.results import BENCHMARK, DRIFT, PROBE, REWARDS, WINRATE
from crrelu_llm.experiments.declaration import Declaration, StageSpec, preference_step
from crrelu_llm.experiments.evaluations import MODEL_EVALUATIONS, evaluation_settings, served_spec
from crrelu_llm.experiments.layout import RunLayout
from crrelu_llm.experiments.stage_actions import TrackedStage, start_keys, train_stage, write_step0
from crrelu_llm.patching.discovery import is_import_path, is_matched, supports_calibration
from crrelu_llm.patching.trust import TrustedCall
from crrelu_llm.training.objectives import REFERENCE_FREE
from crrelu_llm.training.recipes import resolve_aliases


def data_identity(exp) -> dict:
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


def recover_keys(recover: dict, arm_keys: dict) -> dict:
    """The distill keys of an arm's recovery: the arm's keys, then the shared recovery keys; the
    activation-parameter keys apply to an arm whose activation calibrates (CRReLU, Swish-beta,
    a class with ``least_squares_init``) or is measured (``matched_<base>``), not to the ReLU
    control, which has none to set."""
    keys, _ = resolve_aliases({**arm_keys, **recover}, [], "recover")
    activation = arm_keys.get("activation")
    if activation is None or not (
        supports_calibration(activation, arm_keys.get("activation_kwargs")) or is_matched(activation)
    ):
        for key in ("epsilon_init", "calibration_samples", "activation_learning_rate"):
            keys.pop(key, None)
    return keys


# the evaluation stages whose estimates go to the trackers
TRACKED = ("rewards", "winrate", "drift", "benchmark", "probe")
# win-rate options that came later: at their defaults they leave a stage's keys as they were
OPTIONAL_WINRATE_KEYS = ("baseline_outputs", "judge_template", "prompts", "prompts_format", "generate_with")


class _Builder:
    def __init__(self, exp):
        self.exp, self.layout, self.stages = exp, RunLayout(exp.output_dir), []
        # the runner trusts the activation classes its own recipe names for its arms, and nothing else
        self.trusted = {keys["activation"] for keys in exp.arms.values() if is_import_path(keys.get("activation"))}

    def add(self, **kwargs) -> StageSpec:
        report_to = self.exp.trackers(kwargs.get("arm"))
        if kwargs.get("action") is not None and kwargs["kind"] in TRACKED and report_to:
            kwargs["action"] = TrackedStage(
                kwargs["action"],
                kwargs["kind"],
                [kwargs["done"], *kwargs.get("results", [])],
                report_to,
                self.identity(kwargs),
                self.layout.tracking,
            )
        if kwargs.get("action") is not None and self.trusted:
            kwargs["action"] = TrustedCall(kwargs["action"], self.trusted)
        spec = StageSpec(**kwargs)
        self.stages.append(spec)
        return spec

    def identity(self, stage: dict) -> dict:
        """What names and groups a stage's tracker run: experiment, arm, objective, seed, stage."""
        arm = stage.get("arm")
        return {
            "experiment": self.exp.name,
            "name": stage["name"],
            "arm": arm or "original",
            "objective": self.exp.objectives.get(arm, "dpo") if stage.get("beta") is not None else None,
            "seed": stage.get("seed"),
            "beta": stage.get("beta"),
            "stage": stage.get("step") or stage["name"],
            "kind": stage["kind"],
        }

    def train(self, command: str, keys: dict, out: Path, name: str, after: list[str], **where) -> StageSpec:
        exp = self.exp
        identity = self.identity({"name": name, "kind": command, **where})
        return self.add(
            name=name,
            kind="recover" if command == "distill" else where.pop("kind", command),
            keys=keys,
            done=out / run_files.FINAL_METRICS,
            command=command,
            action=lambda: train_stage(command, keys, out, exp.launcher, identity),
            after=after,
            clear=out,
            model=str(out),
            **where,
        )

    def evaluations(self, model: str, step_stage: str, arm: str | None, step: str) -> None:
        """The per-model evaluations the recipe asks for: drift to the original, benchmarks, probe."""
        exp, data, original = self.exp, self.data, self.original
        out = self.layout.eval_dir(model)
        where = {"arm": arm, "step": step, "model": model}
        if "drift" in exp.evaluations and model != original:
            d = evaluation_settings(exp, "drift")
            self.add(
                name=f"{step_stage} drift",
                kind="drift",
                keys=d,
                done=DRIFT.file(model, out),
                action=lambda: evaluate.run_drift(
                    model, original, data, max_samples=d["max_samples"], max_length=d["max_length"], out=out
                ),
                after=[step_stage, "original", "data"],
                **where,
            )
        if "benchmark" in exp.evaluations:
            from crrelu_llm.evaluation.benchmark import parse_tasks, run_benchmark

            b = evaluation_settings(exp, "benchmark")
            tasks = parse_tasks(b["tasks"])
            self.add(
                name=f"{step_stage} benchmark",
                kind="benchmark",
                keys=b,
                done=BENCHMARK.file(model, out, BENCHMARK.label_of(task=tasks[-1])),
                action=lambda: run_benchmark(
                    model, tasks, limit=b["limit"], num_fewshot=b["num_fewshot"], batch_size=b["batch_size"], out=out
                ),
                after=[step_stage],
                results=[BENCHMARK.file(model, out, BENCHMARK.label_of(task=t)) for t in tasks],
                **where,
            )
        if "probe" in exp.evaluations:
            p = evaluation_settings(exp, "probe")
            self.add(
                name=f"{step_stage} probe",
                kind="probe",
                keys=p,
                done=PROBE.file(model, out),
                action=lambda: evaluate.run_probe(
                    model,
                    data,
                    original=None if model == original else original,
                    max_samples=p["max_samples"],
                    max_length=p["max_length"],
                    out=out,
                ),
                after=[step_stage, "original", "data"],
                **where,
            )

    def inputs(self) -> None:
        exp, layout = self.exp, self.layout
        if exp.dataset_name:  # not run here, but what every stage reads: its identity enters their fingerprints
            self.data = exp.dataset_name
            self.add(name="data", kind="data", keys=data_identity(exp), done=None, action=None)
        else:
            self.data = str(layout.data)

            def make(data=layout.data, task=dict(exp.task)):  # noqa: B006 - bound here, on purpose
                from crrelu_llm.evaluation.tasks import write_task_files

                task = dict(task)
                write_task_files(task.pop("name"), data, task.pop("n_train"), task.pop("n_test"), task.pop("seed", 0))

            self.add(
                name="data",
                kind="data",
                keys=data_identity(exp),
                done=layout.data / "test.jsonl",
                action=make,
                clear=layout.data,
                results=[layout.data],
            )
        if exp.original:
            self.original = exp.original
            self.add(
                name="original",
                kind="original",
                keys={"original": exp.original},
                done=None,
                action=None,
                model=exp.original,
                step="original",
            )
            return
        self.original = str(layout.original)
        spec = {k: v for k, v in exp.pretrain.items() if k != "train"}

        def build(init=layout.init, spec=dict(exp.pretrain)):  # noqa: B006 - bound here, on purpose
            from crrelu_llm.patching.tiny import tiny_causal_lm, tiny_tokenizer

            model = tiny_causal_lm(spec.get("model_type", "gpt2"), seed=spec.get("seed", 0), **spec.get("config", {}))
            model.save_pretrained(init)
            tiny_tokenizer().save_pretrained(init)

        self.add(
            name="init",
            kind="init",
            keys=spec,
            done=layout.init / "config.json",
            action=build,
            clear=layout.init,
            model=str(layout.init),
        )
        keys = {
            "model_name_or_path": str(layout.init),
            "dataset_name": self.data,
            "activation": None,
            **exp.pretrain.get("train", {}),
        }
        self.train("sft", keys, layout.original, "original", ["init", "data"], kind="original", step="original")

    def first_training(self, arm: str, arm_keys: dict) -> tuple[str, dict]:
        """The command and keys of the arm's first training stage: the patch step 0 must match."""
        exp, common = self.exp, {"dataset_name": self.data, "model_name_or_path": self.original}
        if exp.recover is not None:
            return "distill", {**common, **recover_keys(exp.recover, arm_keys)}
        if exp.sft is not None:
            return "sft", {**common, **exp.sft, **arm_keys}
        return self.objective(arm), self.preference_keys(arm, exp.betas[0], exp.seeds[0], self.original)

    def objective(self, arm: str) -> str:
        """The command of the arm's preference stages: dpo, or simpo, orpo, kto."""
        return self.exp.objectives.get(arm, "dpo")

    def preference_keys(self, arm: str, beta: float, seed: int, start: str) -> dict:
        # every beta and seed of an arm shares its reference (the arm's SFT model): its log-probabilities are
        # computed once and kept under the arm (crrelu_llm.training.reference_cache), unless the recipe says otherwise
        exp = self.exp
        shared_reference = {"precompute_ref_log_probs": True, "ref_logps_cache_dir": str(self.layout.ref_logps(arm))}
        if self.objective(arm) != "dpo":  # SimPO and ORPO have no reference; KTO's is its own trainer's
            shared_reference = {}
        return {
            "dataset_name": self.data,
            **shared_reference,
            **exp.preference,
            **exp.arms[arm],
            "model_name_or_path": start,
            "beta": beta,
            "seed": seed,
            "reference": "policy",
        }

    def arm(self, arm: str, arm_keys: dict) -> tuple[str, str]:
        """Step 0, recovery and SFT of one arm; returns the model its preference runs start from and its stage."""
        exp, layout = self.exp, self.layout
        start, start_stage = self.original, "original"
        if not arm_keys.get("activation"):
            return self.sft(arm, arm_keys, start, start_stage)
        command, keys = self.first_training(arm, arm_keys)
        if any(kind in exp.evaluations for kind in MODEL_EVALUATIONS):  # step 0: only where it is evaluated
            patched = layout.patched(arm)
            self.add(
                name=f"{arm}/patched",
                kind="patch",
                keys={"command": command, **start_keys(keys)},
                done=patched / run_files.PATCH_REPORT,
                after=["original", "data"],
                clear=patched,
                arm=arm,
                action=lambda c=command, k=keys, p=patched: write_step0(c, k, p),
                step="step 0",
                model=str(patched),
            )
            self.evaluations(str(patched), f"{arm}/patched", arm, "step 0")
        if exp.recover is not None:
            recovered = layout.recover(arm)
            self.train("distill", keys, recovered, f"{arm}/recover", ["original", "data"], arm=arm, step="recovered")
            self.evaluations(str(recovered), f"{arm}/recover", arm, "recovered")
            start, start_stage = str(recovered), f"{arm}/recover"
        return self.sft(arm, arm_keys, start, start_stage)

    def sft(self, arm: str, arm_keys: dict, start: str, start_stage: str) -> tuple[str, str]:
        exp = self.exp
        if exp.sft is not None:
            sft = self.layout.sft(arm)
            keys = {"dataset_name": self.data, **exp.sft, **arm_keys, "model_name_or_path": start}
            self.train("sft", keys, sft, f"{arm}/sft", [start_stage, "data"], arm=arm, step="SFT")
            self.evaluations(str(sft), f"{arm}/sft", arm, "SFT")
            start, start_stage = str(sft), f"{arm}/sft"
        return start, start_stage

    def build(self) -> Declaration:
        exp = self.exp
        self.inputs()
        self.evaluations(self.original, "original", None, "original")
        starts = {arm: self.arm(arm, keys) for arm, keys in exp.arms.items()}
        runs = {}
        for arm in exp.arms:
            start, start_stage = starts[arm]
            pairs = self.pairs(arm, start, start_stage) if exp.on_policy else None
            for beta in exp.betas:
                for seed in exp.seeds:
                    runs[arm, beta, seed] = self.chain(arm, beta, seed, (start, start_stage), pairs)
        for (arm, beta, seed), run in runs.items():
            self.pairwise(run, starts[arm], runs.get((exp.baseline_arm, beta, seed)))
        return Declaration(self.layout, self.data, self.original, list(exp.arms), self.stages)

    def chain(self, arm: str, beta: float, seed: int, start: tuple[str, str], pairs: StageSpec | None) -> StageSpec:
        """One preference run (of the arm's objective), or with ``on_policy.rounds`` R > 1 its R
        rounds: round r starts from round r - 1's model and trains on that model's own pairs.
        Returns the last round."""
        rounds, objective = (self.exp.on_policy or {}).get("rounds", 1), self.objective(arm)
        (model, stage), run = start, None
        for r in range(1, rounds + 1):
            if r > 1:
                pairs = self.pairs(arm, model, stage, r, beta, seed)
            out = self.layout.preference(arm, objective, beta, seed, r, rounds)
            where = f"beta={beta:g} seed={seed}" + (f" round {r}" if r < rounds else "")
            keys = self.preference_keys(arm, beta, seed, model)
            if pairs is not None:  # the arm's own pairs; evaluation stays on the experiment's data
                keys["dataset_name"] = pairs.model
            run = self.train(
                objective,
                keys,
                out,
                f"{arm}/{objective} {where}",
                [stage, *([pairs.name] if pairs else []), "data"],
                arm=arm,
                step=preference_step(objective, beta, seed, r if r < rounds else None),
                beta=beta,
                seed=seed,
                kind="preference",
                final=r == rounds,
            )
            model, stage = str(out), run.name
        self.evaluations(model, stage, arm, run.step)
        return run

    def pairs(
        self, arm: str, model: str, stage: str, round_: int = 1, beta: float | None = None, seed: int | None = None
    ) -> StageSpec:
        """On-policy pairs of ``model``'s own samples (round 1: the arm's SFT model)."""
        from crrelu_llm.evaluation.onpolicy import PairSettings, record_file, run_pairs

        spec = {k: v for k, v in self.exp.on_policy.items() if k != "rounds"}
        judge, served = spec.pop("judge"), served_spec(spec.pop("generate_with", None), model)
        settings, out, data = PairSettings(**spec), self.layout.pairs(arm, beta, seed, round_), self.data
        where = "" if round_ == 1 else f" beta={beta:g} seed={seed} round {round_}"
        keys = {"judge": judge, "model": model, **dataclasses.asdict(settings)} | ({"served": served} if served else {})
        return self.add(
            name=f"{arm}/pairs{where}",
            kind="pairs",
            keys=keys,
            done=record_file(out),
            after=[stage, "data"],
            clear=out,
            arm=arm,
            model=str(out),
            step=f"pairs{where}",
            action=lambda: run_pairs(model, data, judge, out, settings, generate_with=served),
        )

    def pairwise(self, run: StageSpec, start: tuple[str, str], baseline_run: StageSpec | None) -> None:
        exp, data, out = self.exp, self.data, run.model
        where = {"arm": run.arm, "step": run.step, "beta": run.beta, "seed": run.seed, "model": out}
        evals, folder = exp.evaluations, self.layout.eval_dir(out)
        if "rewards" in evals:
            r = evaluation_settings(exp, "rewards")
            # a reference-free objective's own implicit reward (no reference), else DPO's against the start
            reference = None if self.objective(run.arm) in REFERENCE_FREE else start[0]
            self.add(
                name=f"{run.arm}/rewards beta={run.beta:g} seed={run.seed}",
                kind="rewards",
                keys=r,
                done=REWARDS.file(out, folder),
                after=[run.name, start[1]],
                baseline=reference,
                action=lambda: evaluate.run_rewards(
                    out, reference, data, betas=r["betas"], max_samples=r["max_samples"], max_length=r["max_length"]
                ),
                **where,
            )
        if "winrate" not in evals:
            return
        w = evaluation_settings(exp, "winrate")
        settings = GenerationSettings(max_new_tokens=w["max_new_tokens"], batch_size=w["batch_size"])
        baselines = [start] if w["against_sft"] else []
        if run.arm != exp.baseline_arm and baseline_run is not None:
            baselines.append((baseline_run.model, baseline_run.name))
        if w["baseline_outputs"]:  # reference outputs someone else generated, as AlpacaEval and Arena-Hard compare
            baselines.append((w["baseline_outputs"], None))
        prompts, prompts_format = (w["prompts"], w["prompts_format"]) if w["prompts"] else (data, "auto")
        # what the stage computes from: options at their defaults are left out, so that a stage
        # computed before they existed is still current
        keys = {k: v for k, v in w.items() if not (k in OPTIONAL_WINRATE_KEYS and v in (None, "auto", "default"))}
        for baseline, baseline_stage in baselines:
            model_side = baseline_stage is not None
            against = (
                f"{Path(baseline).parent.name}/{Path(baseline).name}"
                if model_side
                else f"outputs {Path(baseline).name}"
            )
            self.add(
                name=f"{run.arm}/winrate {Path(out).name} vs {against}",
                kind="winrate",
                keys=keys,
                done=WINRATE.file(
                    out, folder, WINRATE.label_of(judge=w["judge"], baseline=baseline, template=w["judge_template"])
                ),
                after=[run.name] + ([baseline_stage] if model_side else []),
                baseline=baseline,
                action=lambda b=baseline, m=model_side: evaluate.run_winrate(
                    out,
                    b if m else None,
                    prompts,
                    w["judge"],
                    data_format=prompts_format,
                    num_prompts=w["num_prompts"],
                    settings=settings,
                    judge_concurrency=w["judge_concurrency"],
                    baseline_outputs=None if m else b,
                    judge_template=w["judge_template"],
                    generate_with=served_spec(w["generate_with"], out),
                ),
                **where,
            )


def declare(exp) -> Declaration:
    """Every stage of ``exp`` in dependency order (nothing is run or written)."""
    return _Builder(exp).build()
