"""``crrelu-llm experiment --config EXPERIMENT.yaml`` and ``crrelu-llm demo``: arms x betas x
seeds as resumable stages (the demo: the embedded recipe), or ``--plan``. Their parsers, handler
and printing."""

from __future__ import annotations

from crrelu_llm.cli.common import command_parser, positive_int, trust_flag
from crrelu_llm.training.objectives import OBJECTIVES


def register(commands) -> None:
    experiment = command_parser(
        commands,
        "experiment",
        "Run an experiment recipe: arms x betas x seeds, every stage resumable, finished stages reused.",
    )
    experiment.add_argument("--config", required=True, help="experiment recipe (recipes/experiments/*.yaml)")
    experiment.add_argument("--out", default=None, help="output directory (default: the recipe's output_dir)")
    experiment.add_argument(
        "--plan",
        action="store_true",
        help="print every stage, what it waits for and its estimated compute (FLOPs, GPU-hours); run nothing",
    )
    experiment.add_argument("--plan-gpus", type=positive_int, default=1, help="GPUs per training run, for --plan")
    experiment.add_argument(
        "--gpu-tflops", type=float, default=989.0, help="peak TFLOP/s of one GPU, for --plan (989: H100 SXM dense bf16)"
    )
    experiment.add_argument("--utilisation", type=float, default=0.4, help="share of the peak reached, for --plan")
    experiment.add_argument(
        "--executor",
        choices=("inline", "local", "slurm"),
        default=None,
        help="where stages run: inline (this process, one after another; the default), local "
        "(this node, several at once on disjoint GPU sets) or slurm (jobs with dependencies, "
        "the recipe's slurm: keys); local and slurm need the [slurm] extra (submitit)",
    )
    experiment.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="local: stages at once (default: visible GPUs // --gpus-per-run, or 1 without GPUs)",
    )
    experiment.add_argument(
        "--gpus-per-run",
        type=int,
        default=None,
        help="local: GPUs given to each stage (disjoint sets); slurm: overrides slurm.gpus",
    )
    demo = command_parser(
        commands,
        "demo",
        "The embedded offline experiment: GELU vs CRReLU vs ReLU through SFT and "
        "DPO on a small model (CPU, minutes on 2 cores).",
    )
    demo.add_argument("--out", default=None, help="output directory (default: runs/demo)")
    for sub in (experiment, demo):
        sub.add_argument(
            "--rerun-changed",
            action="store_true",
            help="recompute finished stages whose inputs changed (and what depends on them) instead of refusing them",
        )
        trust_flag(sub)


def run(args) -> int:
    from crrelu_llm.experiments.experiment import DEMO_RECIPE, load_experiment, run_experiment
    from crrelu_llm.reporting.summary import format_stages, format_table, format_totals, opening
    from crrelu_llm.runtime import set_cpu_threads

    set_cpu_threads()
    exp = load_experiment(DEMO_RECIPE if args.command == "demo" else args.config, args.out)
    if getattr(args, "plan", False):
        return _plan(exp, args)
    summary = run_experiment(exp, rerun_changed=args.rerun_changed, executor=_executor(args))
    labels = ", ".join(sorted({OBJECTIVES[exp.objectives.get(arm, "dpo")].label for arm in exp.arms}))
    print(
        f"\n{exp.name}: {len(summary['rows'])} preference runs ({labels}), {summary['seconds']:.0f}s: "
        f"{format_totals(summary)} ({exp.output_dir})"
    )
    print(format_table(summary, exp.baseline_arm))
    first = opening(summary, exp.baseline_arm)
    if first:
        reading = "\n".join(f"- {line}" for line in first)
        print(f"\nreading (from the estimates above; every line, interval and test in the report):\n{reading}")
    stages = format_stages(summary)
    if stages:
        print(f"\nhelp or harm: each arm at every stage\n{stages}")
    print(f"report: {summary['report']}")
    return 0


def _executor(args):
    from crrelu_llm.experiments.executors import ExecutorSettings

    parallel, gpus = getattr(args, "parallel", None), getattr(args, "gpus_per_run", None)
    kind = getattr(args, "executor", None) or ("local" if parallel is not None or gpus is not None else "inline")
    return ExecutorSettings(kind=kind, parallel=parallel, gpus_per_run=gpus)  # run_experiment checks it


def _plan(exp, args) -> int:
    from crrelu_llm.experiments.plan import format_plan, plan

    print(format_plan(plan(exp, args.plan_gpus, args.gpu_tflops, args.utilisation)))
    return 0
