#!/usr/bin/env python
"""Short SFT then DPO runs of a tiny patched model under an accelerate profile, then checks.

    python scripts/distributed_check.py --profile recipes/accelerate_configs/fsdp.yaml --num-processes 1
    python scripts/distributed_check.py --profile recipes/accelerate_configs/zero3.yaml --num-processes 1
    python scripts/distributed_check.py --profile recipes/accelerate_configs/multi_gpu.yaml --num-processes 2

It runs ``accelerate launch --config_file PROFILE -m crrelu_llm.cli sft`` (patching a GELU
model), then ``... dpo`` starting from that SFT checkpoint (already patched: loading it
rebuilds CRReLU, under ZeRO-3 inside ``deepspeed.zero.Init``), and with ``--distill`` a
``distill`` run from the original (the teacher prepared like TRL's reference), on a built-in
arithmetic task. ``--runs dpo`` runs DPO alone, patching the GELU model itself.
For each run it checks what a user relies on:

- the run finishes, under the distributed type the profile names;
- every rank ends with the same weights and epsilons (``rank_consistency.json``);
- the epsilons trained (moved from where the run started);
- the saved model loads back patched (``load_causal_lm`` compares every epsilon with the
  safetensors file) with the epsilons the ranks ended with.

On a machine without CUDA the recipe sets ``use_cpu`` and accelerate runs DDP over gloo
(FSDP becomes MULTI_CPU there; DeepSpeed uses its CPU accelerator): a rehearsal, not the real
thing. Exit status 0 when every check passes, 1 otherwise; ``--json`` writes the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crrelu_llm.evaluation.tasks import generate_task_data  # noqa: E402 - after the sys.path line
from crrelu_llm.files import write_json  # noqa: E402


def expected_distributed_type(profile: dict, cuda: bool) -> str:
    kind = str(profile.get("distributed_type", "NO"))
    if not cuda and kind in ("FSDP", "MULTI_GPU"):
        return "MULTI_CPU"  # torchrun over gloo; accelerate has no FSDP on CPU
    return kind


# The activations this check trains, and where their parameters start (--activation).
INITIAL = {"crrelu": 0.01, "swish_beta": 1.0}


def write_recipe(
    workdir: Path, command: str, model: str, data: Path, steps: int, cuda: bool, activation: str = "crrelu"
) -> Path:
    recipe = workdir / f"{command}.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "activation": activation,
                "model_name_or_path": model,
                "dataset_name": str(data),
                "output_dir": str(workdir / command),
                "eval_fraction": 0.125,
                "max_steps": steps,
                "per_device_train_batch_size": 4,
                "per_device_eval_batch_size": 4,
                "learning_rate": 1e-3,
                "activation_learning_rate": 1e-2,
                "logging_steps": 1,
                "save_strategy": "no",
                "eval_strategy": "no",
                "bf16": cuda,
                "use_cpu": not cuda,
                "gradient_checkpointing": False,
                "max_length": 32,
                "report_to": [],
                "seed": 0,
                "dataloader_num_workers": 0,
            }
        )
    )
    return recipe


def block_epsilons(logs: dict) -> dict[str, float]:
    """Per-block values of the activation's parameters (``epsilon/00``, ``beta/01``...) from its logs."""
    return {k: v for k, v in logs.items() if k.rpartition("/")[2].isdigit()}


def check(run: Path, expected_type: str, num_processes: int, start: dict[str, float] | float) -> dict[str, bool]:
    from crrelu_llm.patching.loading import load_causal_lm
    from crrelu_llm.patching.patch import activation_parameters, parameter_value

    consistency = json.loads((run / "rank_consistency.json").read_text())
    ranks = consistency["ranks"]
    eps_end = block_epsilons(ranks[0]["epsilon"])
    eps_start = start if isinstance(start, dict) else {k: start for k in eps_end}
    model = load_causal_lm(str(run), dtype=torch.float32)
    loaded = sorted(parameter_value(p) for p in activation_parameters(model).values())
    # A 16-bit consolidated save (ZeRO-3) rounds eps to bfloat16: about 3 significant digits.
    tol = 1e-2 if expected_type == "DEEPSPEED" else 1e-6
    return {
        "distributed type": consistency["distributed_type"] == expected_type,
        "one entry per rank": [r["rank"] for r in ranks] == list(range(num_processes)),
        "ranks identical": bool(consistency["identical"]),
        "epsilons trained": bool(eps_end)
        and eps_end.keys() == eps_start.keys()
        and all(abs(eps_end[k] - eps_start[k]) > 1e-6 for k in eps_end),
        "saved epsilons = trained": len(loaded) == len(eps_end)
        and all(abs(a - b) <= tol * max(abs(b), 1e-3) for a, b in zip(loaded, sorted(eps_end.values()), strict=True)),
    }


def launch(
    cmd_prefix: list[str], command: str, recipe: Path, env: dict, timeout: int, log: Path
) -> tuple[int, str, float]:
    cmd = [*cmd_prefix, "-m", "crrelu_llm.cli", command, "--config", str(recipe)]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        returncode, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as err:
        tail = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        returncode, stderr = -1, f"{tail}\ntimed out after {timeout}s"
    log.write_text(stderr)
    return returncode, stderr, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help="an accelerate config file (recipes/accelerate_configs/)")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--model", default="tiny-llama", help="an unpatched tiny-<model_type> or local checkpoint")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", help="keep the run here (default: a temporary directory)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds for each launched run")
    parser.add_argument("--json", help="write the result here")
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=("sft", "dpo"),
        default=["sft", "dpo"],
        help="sft, dpo or both (default); DPO follows SFT's checkpoint, else starts from --model",
    )
    parser.add_argument("--distill", action="store_true", help="also distil the original into a fresh patch")
    parser.add_argument(
        "--activation",
        choices=sorted(INITIAL),
        default="crrelu",
        help="the activation patched in: CRReLU's eps, or a Swish's beta (default crrelu)",
    )
    args = parser.parse_args(argv)

    profile_path = Path(args.profile)
    if not profile_path.is_file():
        parser.error(f"--profile {args.profile}: no such file")
    profile = yaml.safe_load(profile_path.read_text()) or {}
    cuda = torch.cuda.is_available()
    expected = expected_distributed_type(profile, cuda)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="crrelu-dist-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in generate_task_data("arithmetic", 64, seed=0)))

    prefix = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(profile_path),
        "--num_processes",
        str(args.num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "bf16" if cuda else "no",
        "--dynamo_backend",
        "no",
    ]
    if not cuda and profile.get("distributed_type") in ("FSDP", "MULTI_GPU") and args.num_processes > 1:
        prefix.append("--multi_gpu")  # torchrun with gloo: what accelerate does with these profiles on CPU
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        ),
    }
    if not cuda:
        env.setdefault("OMP_NUM_THREADS", "1")

    result = {
        "profile": str(profile_path),
        "num_processes": args.num_processes,
        "device": "cuda" if cuda else "cpu",
        "expected_distributed_type": expected,
        "workdir": str(workdir),
        "runs": {},
    }
    start: dict[str, float] | float = INITIAL[args.activation]  # where the first run's fresh patch starts
    model = args.model
    commands = [c for c in ("sft", "dpo") if c in args.runs] + (["distill"] if args.distill else [])
    for command in commands:
        if command == "distill":  # from the original, like sft: a fresh patch, the original as teacher
            model, start = args.model, INITIAL[args.activation]
        recipe = write_recipe(workdir, command, model, data, args.steps, cuda, args.activation)
        log = workdir / f"{command}.log"
        returncode, stderr, seconds = launch(prefix, command, recipe, env, args.timeout, log)
        entry = {"returncode": returncode, "seconds": round(seconds, 1), "log": str(log)}
        result["runs"][command] = entry
        if returncode != 0:
            entry["checks"] = {"run finished": False}
            print(stderr[-3000:], file=sys.stderr)
        else:
            try:
                entry["checks"] = {
                    "run finished": True,
                    **check(workdir / command, expected, args.num_processes, start),
                }
            except Exception as err:  # noqa: BLE001 - a check that cannot run is a failed check
                entry["checks"] = {"run finished": True, f"checks ran ({type(err).__name__}: {err})": False}
        for name, ok in entry["checks"].items():
            print(f"  {'ok  ' if ok else 'FAIL'} {command}: {name}")
        if not all(entry["checks"].values()):
            break
        consistency = json.loads((workdir / command / "rank_consistency.json").read_text())
        start = block_epsilons(consistency["ranks"][0]["epsilon"])  # DPO starts where SFT ended
        model = str(workdir / command)
    result["passed"] = len(result["runs"]) == len(commands) and all(
        all(r["checks"].values()) for r in result["runs"].values()
    )
    total = sum(r["seconds"] for r in result["runs"].values())
    print(
        f"{profile_path.name} x{args.num_processes} on {result['device']}: "
        f"{'passed' if result['passed'] else 'FAILED'} in {total:.0f}s (expected {expected}; logs in {workdir})"
    )
    if args.json:
        write_json(Path(args.json), result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
