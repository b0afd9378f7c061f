"""Where an experiment's stages run: here one after another, on this node several at a time on
disjoint GPU sets, or as Slurm jobs. The last two go through ``submitit`` (``pip install
'crrelu-llm[slurm]'``): each stage is a pickled call of its action in a job of its own.

- ``inline`` (the default, and the demo): every stage in this process, in declaration order.
- ``local``: at most ``parallel`` stages at once, each in a subprocess with its own GPU set
  (``CUDA_VISIBLE_DEVICES``, ``gpus_per_run`` GPUs each) and an equal share of the CPU threads;
  a stage starts when every stage it reads has finished.
- ``slurm``: every stage is submitted at once, with ``--dependency=afterok`` on the jobs it reads
  (``kill-on-invalid-dep``, so a failure cancels what depends on it), and the recipe's ``slurm:``
  keys (partition, account, GPUs, time, ...).

In every case this process waits and records each stage in the ledger as it finishes; a failed
stage stops what depends on it, the others go on, and the run ends with one error naming the
failed stages and their logs. Running the experiment again skips what finished and submits
what failed. Interrupting it (Ctrl-C) cancels the jobs it started.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from crrelu_llm.errors import ExperimentError, UsageError
from crrelu_llm.files import read_json, write_json
from crrelu_llm.runtime import configure_logging

logger = logging.getLogger("crrelu_llm.executors")
EXECUTORS = ("inline", "local", "slurm")
# recipe key under `slurm:` -> submitit SlurmExecutor parameter
SLURM_KEYS = {
    "partition": "partition",
    "account": "account",
    "gpus": "gpus_per_node",
    "time": "time",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem",
    "qos": "qos",
    "constraint": "constraint",
    "setup": "setup",
    "additional_parameters": "additional_parameters",
}
FOREVER_MIN = 60 * 24 * 365  # the local executor's own timeout defaults to 2 minutes


@dataclass
class Stage:
    """A stage that has to run: its action, what marks it done and the stages it reads."""

    name: str
    done: Path
    action: Callable[[], None]
    after: list[str]
    clear: Path | None = None
    stale: bool = False
    record: dict = field(default_factory=dict)  # what the ledger keeps once it is done


@dataclass
class ExecutorSettings:
    kind: str = "inline"
    parallel: int | None = None  # local: stages at once (default: GPUs // gpus_per_run, or 1 without GPUs)
    gpus_per_run: int | None = None  # local: GPUs per stage; slurm: overrides the recipe's slurm.gpus
    slurm: dict = field(default_factory=dict)
    poll_seconds: float = 1.0

    def check(self, folder: Path | None = None) -> None:
        """Refuse what cannot run, before anything is written; with ``folder`` (the jobs folder)
        also what this machine lacks: submitit, the GPUs asked for, a free queue."""
        if self.kind not in EXECUTORS:
            raise UsageError(f"--executor {self.kind!r}: choose one of {', '.join(EXECUTORS)}")
        for flag, value in (("--parallel", self.parallel), ("--gpus-per-run", self.gpus_per_run)):
            if value is not None and value < (1 if flag == "--parallel" else 0):
                raise UsageError(f"{flag} {value}: give a positive number")
            if value is not None and self.kind == "inline":
                raise UsageError(f"{flag} needs --executor local (this node) or slurm; inline runs one stage at a time")
        if self.parallel is not None and self.kind == "slurm":
            raise UsageError("--parallel is for --executor local; Slurm decides how many jobs run at once")
        if folder is None or self.kind == "inline":
            return
        _submitit()
        if self.kind == "local":
            local_slots(self)
            return
        record = folder / "submitted.json"
        queued = _in_queue(list(read_json(record).values())) if record.exists() else set()
        paths = _submitit().core.utils.JobPaths
        queued = {job for job in queued if not paths(folder / "%j", job).result_pickle.exists()}  # not just exiting
        if queued:
            raise ExperimentError(
                f"{len(queued)} job(s) from an earlier run of this experiment are still queued or "
                f"running ({', '.join(sorted(queued))}); wait for them, or `scancel` them, "
                "then run again"
            )


def local_slots(settings: ExecutorSettings) -> list[tuple[int, ...]]:
    """The GPU set of each stage that may run at once on this node (empty sets without GPUs)."""
    per_run = settings.gpus_per_run or 0
    gpus = visible_gpus() if per_run else []
    if per_run and len(gpus) < per_run:
        raise UsageError(
            f"--gpus-per-run {per_run}: this node shows {len(gpus)} GPU(s) "
            "(CUDA_VISIBLE_DEVICES or torch.cuda.device_count()); on CPU use --parallel N alone"
        )
    sets = [tuple(gpus[i : i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)] if per_run else []
    parallel = settings.parallel or max(1, len(sets))
    if per_run and parallel > len(sets):
        raise UsageError(
            f"--parallel {parallel} x --gpus-per-run {per_run} needs {parallel * per_run} GPUs; "
            f"this node shows {len(gpus)}"
        )
    return sets[:parallel] if per_run else [()] * parallel


def check_slurm_keys(path, keys) -> None:
    if not isinstance(keys, dict):
        raise ExperimentError(f"{path}: 'slurm' must be a mapping such as {{partition: gpu, gpus: 1, time: 240}}")
    unknown = sorted(set(keys) - set(SLURM_KEYS))
    if unknown:
        raise ExperimentError(f"{path}: slurm has unknown key {unknown[0]!r}; known: {', '.join(SLURM_KEYS)}")
    if "time" in keys and not (isinstance(keys["time"], int) and keys["time"] > 0):
        raise ExperimentError(
            f"{path}: slurm.time is the time limit of one stage in minutes (e.g. 240), not {keys['time']!r}"
        )


def run_stage(action: Callable[[], None], threads: int | None = None, in_job: bool = False) -> dict:
    """What a job runs: one stage's action, timed where it runs (queueing not included). A job
    also records when its process started: unpickling the action imports torch and the rest,
    seconds that are not the stage's own."""
    configure_logging("%(asctime)s %(name)s %(levelname)s %(message)s")
    threads = threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0))  # a Slurm job: the CPUs it was given
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(threads)  # and for a launcher's subprocesses
        torch.set_num_threads(threads)
    from crrelu_llm.environment import environment

    job = {"job_started": psutil.Process().create_time()} if in_job else {}
    start = time.time()
    action()
    # where it ran, recorded with the stage (a job's node may differ from the submitting one)
    return {
        **job,
        "started": start,
        "ended": time.time(),
        "seconds": round(time.time() - start, 1),
        "environment": environment(),
    }


def run_stages(
    stages: list[Stage], finish: Callable[[Stage, dict], None], settings: ExecutorSettings, folder: Path
) -> None:
    """Run ``stages`` (in declaration order, which is a dependency order); ``finish(stage,
    timing)`` is called here, in this process, as each one finishes."""
    if settings.kind == "inline":
        for stage in stages:
            _clear(stage)
            logger.info("stage %s", stage.name)
            finish(stage, run_stage(stage.action))
        return
    backend = _LocalJobs(folder, settings) if settings.kind == "local" else _SlurmJobs(folder, settings)
    _schedule(stages, finish, backend, settings.poll_seconds)


def _clear(stage: Stage) -> None:
    if stage.stale and stage.clear is not None and stage.clear.exists():
        logger.warning("%s: inputs changed, removing %s to recompute it", stage.name, stage.clear)
        shutil.rmtree(stage.clear)


def _schedule(stages, finish, backend, poll_seconds) -> None:
    by_name = {stage.name: stage for stage in stages}
    waiting = dict(by_name)
    deps = {stage.name: [dep for dep in stage.after if dep in waiting] for stage in stages}
    jobs, finished, failed = {}, set(), {}
    try:
        while waiting or jobs:
            for name in list(waiting):
                blocked = [dep for dep in deps[name] if dep in failed]
                if blocked:
                    failed[name] = f"not run: {blocked[0]} failed"
                    del waiting[name]
                elif (backend.upfront or all(dep in finished for dep in deps[name])) and backend.has_room(len(jobs)):
                    stage = waiting.pop(name)
                    _clear(stage)
                    jobs[name] = backend.submit(stage, [jobs[dep] for dep in deps[name] if dep in jobs])
                    logger.info("stage %s: job %s", name, jobs[name].job_id)
            for name, job in list(jobs.items()):
                blocked = [dep for dep in deps[name] if dep in failed]
                if blocked:  # submitted up front, waiting on a stage that failed
                    job.cancel(check=False)
                    del jobs[name]
                    backend.release(job)
                    failed[name] = f"not run: {blocked[0]} failed"
                    continue
                if not backend.done(job):
                    continue
                del jobs[name]
                backend.release(job)
                try:
                    timing = backend.result(job)
                    finish(by_name[name], timing)
                    finished.add(name)
                except Exception as error:  # noqa: BLE001 - a stage's failure is reported with its log
                    failed[name] = f"{_why(error)} (log: {job.paths.stderr})"
                    logger.error("stage %s failed: %s", name, failed[name])
            if waiting or jobs:
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        for job in jobs.values():
            job.cancel(check=False)
        logger.warning("interrupted: cancelled %d running or queued stage job(s)", len(jobs))
        raise
    if failed:
        shown = "; ".join(f"{name}: {why}" for name, why in list(failed.items())[:4])
        raise ExperimentError(
            f"{len(failed)} stage(s) did not finish: {shown}. Rerunning the experiment "
            "skips what finished and submits these again"
        )


class _LocalJobs:
    """Subprocesses on this node through submitit's LocalExecutor, one GPU set each."""

    upfront = False

    def __init__(self, folder: Path, settings: ExecutorSettings):
        self.free = local_slots(settings)
        # a reproducible run keeps its pinned thread count in every job (reductions split by threads)
        self.threads = (
            int(os.environ["OMP_NUM_THREADS"])
            if os.environ.get("CRRELU_LLM_PINNED") == "1"
            else max(1, _cpus() // len(self.free))
        )
        self.slot_of = {}
        self.executor = _submitit().LocalExecutor(folder=folder / "%j")
        logger.info(
            "local executor: %d stage(s) at once, GPUs %s, %d CPU thread(s) each",
            len(self.free),
            [list(slot) for slot in self.free],
            self.threads,
        )

    def has_room(self, running: int) -> bool:
        return bool(self.free)

    def submit(self, stage: Stage, after_jobs):
        slot = self.free.pop(0)
        self.executor.update_parameters(timeout_min=FOREVER_MIN, gpus_per_node=len(slot), visible_gpus=slot)
        job = self.executor.submit(run_stage, stage.action, self.threads, in_job=True)
        self.slot_of[job.job_id] = slot
        return job

    def done(self, job) -> bool:
        return job.done()

    def release(self, job) -> None:
        self.free.append(self.slot_of.pop(job.job_id))

    def result(self, job) -> dict:
        return job.result()


class _SlurmJobs:
    """Slurm jobs through submitit's SlurmExecutor, all submitted at once with dependencies.

    Their ids are kept in ``<folder>/submitted.json``; a second run refuses to start while any of
    them is still queued or running (two copies of a stage would write one directory)."""

    upfront = True

    def __init__(self, folder: Path, settings: ExecutorSettings):
        self.record = folder / "submitted.json"
        keys = dict(settings.slurm)
        if settings.gpus_per_run is not None:
            keys["gpus"] = settings.gpus_per_run
        self.parameters = {SLURM_KEYS[key]: value for key, value in keys.items() if value is not None}
        self.parameters.setdefault("time", 24 * 60)
        self.extra = dict(self.parameters.pop("additional_parameters", None) or {})
        self.executor = _submitit().SlurmExecutor(folder=folder / "%j")
        self.submitted: dict[str, str] = {}
        self.gone: dict[str, int] = {}

    def has_room(self, running: int) -> bool:
        return True

    def submit(self, stage: Stage, after_jobs):
        extra = dict(self.extra)
        if after_jobs:
            extra.update(
                dependency="afterok:" + ":".join(job.job_id for job in after_jobs), **{"kill-on-invalid-dep": "yes"}
            )
        self.executor.update_parameters(
            **self.parameters, job_name=stage.name.replace(" ", "_"), additional_parameters=extra
        )
        job = self.executor.submit(run_stage, stage.action, in_job=True)
        self.submitted[stage.name] = job.job_id
        write_json(self.record, self.submitted)
        return job

    def done(self, job) -> bool:
        if job.paths.result_pickle.exists():
            return True
        # a job that died without a result (killed, out of time, cancelled) has left the queue; asked
        # of squeue rather than through submitit, whose sacct calls fail where accounting is off
        if job.job_id in _in_queue([job.job_id]):
            self.gone.pop(job.job_id, None)
            return False
        self.gone[job.job_id] = self.gone.get(job.job_id, 0) + 1
        return self.gone[job.job_id] >= 3

    def release(self, job) -> None:
        pass

    def result(self, job) -> dict:
        if not job.paths.result_pickle.exists():  # job.result() would wait for sacct to say why
            raise ExperimentError(
                f"job {job.job_id} left the queue without a result (cancelled, killed, or out of time: slurm.time)"
            )
        return job.result()


def _in_queue(job_ids: list[str]) -> set[str]:
    """The ids among ``job_ids`` that Slurm still has pending or running (``squeue``; a job that is
    only completing, its result already written, does not count)."""
    if not job_ids or shutil.which("squeue") is None:
        return set()
    out = subprocess.run(
        [
            "squeue",
            "-h",
            "-o",
            "%i",
            "-t",
            "PENDING,CONFIGURING,RUNNING,REQUEUED,RESIZING,SUSPENDED",
            "-j",
            ",".join(job_ids),
        ],
        capture_output=True,
        text=True,
    )
    return set(out.stdout.split()) & set(job_ids)


def _why(error: Exception) -> str:
    """The last line of a stage's traceback (submitit wraps it in the text of FailedJobError)."""
    text = str(error)
    trace = text.split("-" * 22)[1] if text.count("-" * 22) >= 2 else text
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)


def visible_gpus() -> list[int]:
    """GPU indices this process may use: ``CUDA_VISIBLE_DEVICES`` when it lists indices, else
    every GPU torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and all(part.strip().isdigit() for part in listed.split(",") if part.strip()):
        return [int(part) for part in listed.split(",") if part.strip()]
    import torch

    return list(range(torch.cuda.device_count()))


def _cpus() -> int:
    from crrelu_llm.runtime import cpu_threads

    return int(os.environ.get("OMP_NUM_THREADS") or cpu_threads())


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UsageError(
            "--executor local and slurm run stages through submitit: pip install 'crrelu-llm[slurm]'"
        ) from None
    return submitit
