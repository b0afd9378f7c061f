"""The experiment's ledger, ``<output_dir>/stages.json``: what every stage was computed from and
when it ran, so that a finished stage is skipped only while its inputs are unchanged
(:class:`Ledger`). :mod:`crrelu_llm.experiments.experiment` reads it before anything runs; the
executors record each stage as it finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from crrelu_llm.errors import ExperimentError
from crrelu_llm.experiments.executors import Stage
from crrelu_llm.experiments.layout import RunLayout
from crrelu_llm.files import read_json, write_json

logger = logging.getLogger("crrelu_llm.experiment")


def _relative(value, root: str):
    """``value`` with the experiment's own directory written ``<out>``, so a moved experiment stays current."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative(v, root) for v in value]
    if isinstance(value, Path):
        value = str(value)
    return value.replace(root, "<out>") if isinstance(value, str) else value


class Ledger:
    """What every stage was computed from, and when it ran, kept in ``<output_dir>/stages.json``.

    A stage's fingerprint covers its resolved keys and the fingerprints of the stages it reads,
    so a changed key changes the fingerprint of its stage and of everything downstream. A stage
    is skipped only when its completion file exists *and* its fingerprint is unchanged. A done
    stage whose fingerprint changed is refused, naming what changed, before anything runs, or
    recomputed (with its outputs cleared first) when the user passed ``rerun_changed``. Each
    record keeps the wall time of the run that computed it, so a skipped stage still says what
    it took and when it ran."""

    def __init__(self, output_dir: Path, rerun_changed: bool = False):
        self.path = RunLayout(Path(output_dir)).ledger
        self.root = str(output_dir)
        self.rerun_changed = rerun_changed
        self.records: dict = read_json(self.path) if self.path.exists() else {}
        self.log: list[dict] = []

    @staticmethod
    def fingerprint(keys: dict) -> str:
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def assess(self, stages) -> dict[str, dict]:
        """Per stage: its recorded keys and fingerprint, and its status: ``done`` (finished with
        these inputs), ``changed`` (finished with other inputs: ``changes`` says which),
        ``input`` (from outside, never run here) or ``to run``."""
        fingerprints, out = {}, {}
        for spec in stages:
            keys = _relative({**spec.keys, "after": {dep: fingerprints[dep] for dep in spec.after}}, self.root)
            keys = json.loads(json.dumps(keys, sort_keys=True, default=str))
            fingerprint = fingerprints[spec.name] = self.fingerprint(keys)
            recorded = self.records.get(spec.name)
            entry = {"fingerprint": fingerprint, "keys": keys}
            if spec.external:
                entry["status"] = "input"
            elif spec.done.exists() and recorded is not None and recorded["fingerprint"] != fingerprint:
                entry.update(status="changed", changes=_differences(recorded["keys"], keys))
            else:
                entry["status"] = "done" if spec.done.exists() else "to run"
            out[spec.name] = entry
        return out

    def pending(self, stages, assessed: dict[str, dict]) -> list[Stage]:
        """What has to run, in declaration (dependency) order; skipped stages are logged with the
        timing of the run that computed them."""
        todo = []
        for spec in stages:
            entry = assessed[spec.name]
            if entry["status"] == "input":
                continue
            if entry["status"] == "done":
                recorded = self.records.get(spec.name)
                if recorded is None:  # done before this ledger existed: adopt it as it is
                    self._record(spec.name, entry["fingerprint"], entry["keys"], {})
                logger.info("skip %s (done: %s)", spec.name, spec.done)
                self.log.append({"stage": spec.name, "status": "skipped", **self.records[spec.name].get("timing", {})})
                continue
            todo.append(
                Stage(
                    spec.name,
                    spec.done,
                    spec.action,
                    list(spec.after),
                    spec.clear,
                    entry["status"] == "changed",
                    {"fingerprint": entry["fingerprint"], "keys": entry["keys"]},
                )
            )
        return todo

    def finish(self, stage: Stage, timing: dict) -> None:
        """Record ``stage`` as done (called as each stage finishes, wherever it ran)."""
        if not stage.done.exists():
            raise ExperimentError(f"stage {stage.name} finished without writing {stage.done}")
        self._record(stage.name, stage.record["fingerprint"], stage.record["keys"], timing)
        self.log.append({"stage": stage.name, "status": "reran" if stage.stale else "ran", **timing})

    def _record(self, name: str, fingerprint: str, keys: dict, timing: dict) -> None:
        self.records[name] = {"fingerprint": fingerprint, "keys": keys, "timing": timing}
        write_json(self.path, self.records)


def _differences(old: dict, new: dict) -> str:
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if k != "after" and old.get(k) != new.get(k)
    ]
    upstream = [
        dep
        for dep in sorted(set(old.get("after", {})) | set(new.get("after", {})))
        if old.get("after", {}).get(dep) != new.get("after", {}).get(dep)
    ]
    if upstream:
        changed.append("inputs from " + ", ".join(upstream))
    return "; ".join(changed) or "its record"
