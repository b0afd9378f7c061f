"""A finished distributed run leaves nothing of its process group running when Python exits
(crrelu_llm/training/process_group.py): a group still alive then is torn down during
finalization, where gloo's threads can abort the rank after its run was saved."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")

# One rank over gloo: a DDP model trained a step, then a function that binds the world group as a
# default argument after the group exists, as DeepSpeed's TorchBackend.barrier does when TRL
# imports DeepSpeed; then the run's end, and the gloo threads that are left.
SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 8))
    model(torch.randn(4, 8)).sum().backward()
    out = [None]
    dist.all_gather_object(out, {"rank": 0})

    def barrier(group=dist.group.WORLD):
        return group

    if sys.argv[2] == "deepspeed":
        import deepspeed.comm  # noqa: F401
    del model
    from crrelu_llm.training.process_group import leave_process_group, native_threads
    if sys.argv[3] == "leave":
        leave_process_group()
    else:  # what the run's end did before: the group is forgotten, not freed
        dist.barrier()
        dist.destroy_process_group()
        import gc; gc.collect()
    print(json.dumps({"gloo": native_threads("gloo"), "default": repr(barrier.__defaults__[0])}))
""")


def _end_of_run(tmp_path, binder: str, how: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store"), binder, how],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_destroying_the_group_alone_leaves_gloo_running_when_a_default_holds_it(tmp_path):
    """The defect: barrier + destroy_process_group, as the run's end did, leaves the group's
    threads running (the control that shows the next test can see them)."""
    state = _end_of_run(tmp_path, "function", "destroy")
    assert "pt_gloo_runloop" in state["gloo"] and state["default"] != "None"


@pytest.mark.parametrize("binder", ["function", pytest.param("deepspeed", marks=pytest.mark.slow)])
def test_leaving_the_group_frees_it_and_joins_its_threads(tmp_path, binder):
    if binder == "deepspeed":
        pytest.importorskip("deepspeed")
    state = _end_of_run(tmp_path, binder, "leave")
    assert state == {"gloo": [], "default": "None"}


def test_leaving_without_a_group_does_nothing():
    from crrelu_llm.training.process_group import leave_process_group

    leave_process_group()  # neither initialised nor available: no barrier to wait on


@pytest.mark.slow
def test_a_finished_dpo_launch_exits_0_every_time_while_the_cpus_are_busy(tmp_path):
    """The issue's failure: DPO under ``accelerate launch`` with two gloo ranks, finished and saved,
    then a rank aborted at exit. Three launches while two busy loops hold both cores: each exits
    0, and at exit no rank has a gloo thread left (tests/exit_probe reports it from atexit, that
    is, before finalization)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "exit_probe"), os.environ.get("PYTHONPATH", "")]),
    }
    try:
        for attempt in range(3):
            work = tmp_path / f"launch{attempt}"
            result = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "scripts" / "distributed_check.py"),
                    "--profile",
                    str(ROOT / "recipes" / "accelerate_configs" / "multi_gpu.yaml"),
                    "--num-processes",
                    "2",
                    "--workdir",
                    str(work),
                    "--runs",
                    "dpo",
                    "--timeout",
                    "600",
                ],
                capture_output=True,
                text=True,
                timeout=700,
                env=env,
            )
            log = (work / "dpo.log").read_text()
            assert result.returncode == 0, f"launch {attempt}: " + result.stdout[-2000:] + log[-3000:]
            assert "terminate called" not in log
            probes = sorted(re.findall(r"exit probe: rank=(\d+) gloo threads=(\d+)", log))
            assert probes == [("0", "0"), ("1", "0")], f"launch {attempt}: {probes}"
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def test_the_zero3_models_deepspeed_keeps_are_let_go(monkeypatch):
    """DeepSpeed's ZeRO-3 keeps each engine's model in a module-level stack and in an lru_cache
    behind a decorator without functools.wraps; release_zero3_models empties both (the launch
    in tests/test_recipes.py checks that the groups then go; this checks what it reaches)."""
    import functools
    import types

    from crrelu_llm.training.process_group import release_zero3_models

    def instrument(func):  # as deepspeed.utils.nvtx.instrument_w_nvtx: no functools.wraps
        def wrapped_fn(*args, **kwargs):
            return func(*args, **kwargs)

        return wrapped_fn

    def recursive():  # a closure that refers to itself: the walk must not loop
        return recursive

    class Coordinator:
        @instrument
        @functools.lru_cache(maxsize=None)  # noqa: B019 - DeepSpeed's own pattern: the leak under test
        def params_to_release(self, module, step):
            return {id(module), step}

        walk = recursive

    model, coordinator = object(), Coordinator()
    coordinator.params_to_release(model, 0)
    offload = types.SimpleNamespace(FWD_MODULE_STACK=[model])
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.zero.parameter_offload", offload)
    monkeypatch.setitem(
        sys.modules,
        "deepspeed.runtime.zero.partitioned_param_coordinator",
        types.SimpleNamespace(PartitionedParameterCoordinator=Coordinator),
    )
    assert release_zero3_models() == 2
    assert offload.FWD_MODULE_STACK == []
    cache = Coordinator.__dict__["params_to_release"].__closure__[0].cell_contents
    assert cache.cache_info().currsize == 0
    assert release_zero3_models() == 0
