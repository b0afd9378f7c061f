"""The ``crrelu-llm`` command.

    crrelu-llm inspect MODEL                 which activation modules a model has, and where
    crrelu-llm patch MODEL --out DIR         swap them for CRReLU and save a loadable checkpoint
    crrelu-llm export MODEL --out DIR        the same checkpoint, loadable without crrelu-llm (remote code)
    crrelu-llm sft|dpo|simpo|orpo|kto|distill --config RECIPE [--key value ...]   patch, then train with TRL
    crrelu-llm eval rewards|winrate|drift|benchmark ...  evaluate checkpoints (see --help of each)
    crrelu-llm probe MODEL --data DATA                   activation statistics per layer, learned vs least-squares eps
    crrelu-llm compare RUN [RUN ...] --out DIR           report.md, report.json and plots
    crrelu-llm experiment --config EXPERIMENT.yaml       arms x betas x seeds, resumable stages
    crrelu-llm demo                                      the embedded offline experiment (CPU, minutes)

MODEL is a hub id, a local checkpoint directory, or ``tiny-<model_type>`` (built offline).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from crrelu_llm.cli import pairs
from crrelu_llm.cli.common import MODEL_HELP, OneLineParser, command_parser, positive_int, trust_flag
from crrelu_llm.errors import CRReLULLMError, Interrupted, UsageError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, epsilon_init_value
from crrelu_llm.patching.trust import trusting
from crrelu_llm.runtime import configure_logging
from crrelu_llm.training.objectives import OBJECTIVES
from crrelu_llm.version import __version__

# One command per trainer, as TRL's CLI has it: the table of objectives (it imports no TRL).
TRAINING = {name: objective.summary for name, objective in OBJECTIVES.items()}


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes comma-separated block indices such as 0,1,-1; got {text!r}"
        ) from None


def _parse_epsilon(text: str) -> float | str:
    try:
        return epsilon_init_value(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="crrelu-llm", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Swap the MLP activation of pretrained causal LMs for CRReLU and study what it "
                                       "does to preference tuning.", epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--version", action="version", version=f"crrelu-llm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = command_parser(commands, "inspect", "List a model's activation modules and which ones a patch would "
                             "replace (built from the config on the meta device: no weights are downloaded).")
    inspect.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    patch = command_parser(commands, "patch", "Replace the MLP activations of a model and save a checkpoint that loads "
                     "back with `import crrelu_llm`.")
    patch.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    patch.add_argument("--out", required=True, type=Path, help="directory to write the patched checkpoint to")
    patch.add_argument("--activation", default="crrelu", help="crrelu, swish_beta, relu2, any transformers name "
                       "(relu, gelu, ...), or your class as module:Class")
    patch.add_argument("--activation-kwargs", default=None, help="the class's keyword arguments, as JSON")
    patch.add_argument("--epsilon-init", type=_parse_epsilon, default=DEFAULT_EPSILON_INIT,
                       help="initial CRReLU eps, or calibrate (least squares per layer; needs --calibration-data)")
    patch.add_argument("--calibration-data", default=None,
                       help="text to calibrate eps on: preference data (hub id or local file/directory)")
    patch.add_argument("--calibration-samples", type=positive_int, default=64, help="rows of it to use")
    patch.add_argument("--layers", type=_parse_layers, default=None,
                       help="comma-separated block indices, negative from the end (default: every block)")
    patch.add_argument("--dtype", default="auto", help="auto (as stored), float32, bfloat16 or float16")
    patch.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    for name, text in TRAINING.items():
        sub = commands.add_parser(name, help=text, description=text, add_help=False)
        sub.add_argument("recipe_args", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and --key value overrides")
    export = command_parser(commands, "export", "Write a copy of a patched checkpoint that loads with "
                      "trust_remote_code=True and without crrelu-llm (modeling_crrelu.py and auto_map).")
    export.add_argument("model", metavar="MODEL", help="a patched checkpoint directory")
    export.add_argument("--out", required=True, type=Path, help="directory to write the shareable checkpoint to")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    evaluate = command_parser(commands, "eval", "Evaluate checkpoints: reward accuracy, judged win rates, drift from "
                              "the original, capability benchmarks. Each writes one result file (default: MODEL/eval).")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True, metavar="KIND")
    def data_options(sub):  # noqa: E306 - the shared options of every KIND
        sub.add_argument("--data", required=True, help="preference data: hub id or local file/directory")
        sub.add_argument("--data-format", default="auto", help="auto, hh, shp, ultrafeedback or preference")
        sub.add_argument("--split", default=None, help="evaluation split (default: test, else a held-out share)")
        sub.add_argument("--out", type=Path, default=None, help="output directory (default: MODEL/eval)")
        sub.add_argument("--batch-size", type=positive_int, default=8, help="examples per forward pass")
        sub.add_argument("--max-length", type=positive_int, default=1024, help="tokens per example, prompt included")

    rewards = command_parser(kinds, "rewards", "Implicit-reward accuracy and margins of a model against its reference "
                       "(DPO), or by its objective's own reward (SimPO, ORPO), at several betas.")
    rewards.add_argument("--model", required=True, help="the trained model (a preference run)")
    rewards.add_argument("--reference", help="its reference (e.g. the SFT model); none: a SimPO/ORPO run's own reward")
    rewards.add_argument("--beta", type=float, nargs="+", default=[0.1], help="evaluation betas for the margins")
    rewards.add_argument("--max-samples", type=positive_int, default=None, help="pairs to score (default: all)")
    data_options(rewards)

    winrate = command_parser(kinds, "winrate", "Generate with two models on the same prompts and judge the pairs: "
                       "win rate with its interval, a sign test and what the data can detect.")
    winrate.add_argument("--model", required=True, help="the model under test")
    winrate.add_argument("--baseline", required=True, help="the model it is compared with")
    winrate.add_argument("--judge", required=True,
                         help="reward-model:<id or path> | openai:<model>@<base url> ($OPENAI_API_KEY) | rule:<task>")
    winrate.add_argument("--num-prompts", type=positive_int, default=200, help="prompts to generate for")
    winrate.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens generated per response")
    winrate.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    winrate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    winrate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling share (with --sample)")
    winrate.add_argument("--seed", type=int, default=0, help="generation seed")
    winrate.add_argument("--chat-template", action="store_true", help="apply the tokenizer's chat template")
    winrate.add_argument("--judge-concurrency", type=positive_int, default=8,
                         help="requests an openai: judge keeps in flight")
    data_options(winrate)

    drift = command_parser(kinds, "drift", "Perplexity of both models and per-token KL of a patched model against the "
                     "original, on completion tokens.")
    drift.add_argument("--model", required=True, help="the patched (or trained) model")
    drift.add_argument("--original", required=True, help="the original model")
    drift.add_argument("--max-samples", type=positive_int, default=200, help="examples to measure on")
    data_options(drift)

    benchmark = command_parser(kinds, "benchmark", "Capability benchmarks through lm-evaluation-harness (the [bench] "
                         "extra), on a model loaded by crrelu-llm.")
    benchmark.add_argument("--model", required=True, help="the model to benchmark")
    benchmark.add_argument("--tasks", required=True,
                           help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy; crrelu_arith_mc runs offline")
    benchmark.add_argument("--limit", type=float, default=None,
                           help="items per task: a count, or a fraction below 1 (default: all)")
    benchmark.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    benchmark.add_argument("--batch-size", type=positive_int, default=16, help="examples per forward pass")
    benchmark.add_argument("--out", type=Path, default=None, help="output directory (default: MODEL/eval)")

    probe = command_parser(commands, "probe", "Activation statistics per layer: input moments, sparsity, learned and "
                     "least-squares eps.")
    probe.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    probe.add_argument("--original", default=None,
                       help="the model it was patched from (default: the activation class its patch record names)")
    probe.add_argument("--max-samples", type=positive_int, default=200, help="examples to collect activations on")
    data_options(probe)

    experiment = command_parser(commands, "experiment", "Run an experiment recipe: arms x betas x seeds, every stage "
                          "resumable, finished stages reused.")
    experiment.add_argument("--config", required=True, help="experiment recipe (recipes/experiments/*.yaml)")
    experiment.add_argument("--out", default=None, help="output directory (default: the recipe's output_dir)")
    experiment.add_argument("--plan", action="store_true", help="print every stage, what it waits for and its "
                            "estimated compute (FLOPs, GPU-hours); run nothing")
    experiment.add_argument("--plan-gpus", type=positive_int, default=1, help="GPUs per training run, for --plan")
    experiment.add_argument("--gpu-tflops", type=float, default=989.0,
                            help="peak TFLOP/s of one GPU, for --plan (989: H100 SXM dense bf16)")
    experiment.add_argument("--utilisation", type=float, default=0.4, help="share of the peak reached, for --plan")
    experiment.add_argument("--executor", choices=("inline", "local", "slurm"), default=None,
                            help="where stages run: inline (this process, one after another; the default), local "
                                 "(this node, several at once on disjoint GPU sets) or slurm (jobs with dependencies, "
                                 "the recipe's slurm: keys); local and slurm need the [slurm] extra (submitit)")
    experiment.add_argument("--parallel", type=int, default=None,
                            help="local: stages at once (default: visible GPUs // --gpus-per-run, or 1 without GPUs)")
    experiment.add_argument("--gpus-per-run", type=int, default=None,
                            help="local: GPUs given to each stage (disjoint sets); slurm: overrides slurm.gpus")
    demo = command_parser(commands, "demo", "The embedded offline experiment: GELU vs CRReLU vs ReLU through SFT and "
                          "DPO on a small model (CPU, minutes on 2 cores).")
    demo.add_argument("--out", default=None, help="output directory (default: runs/demo)")
    for sub in (experiment, demo):
        sub.add_argument("--rerun-changed", action="store_true",
                         help="recompute finished stages whose inputs changed (and what depends on them) instead of "
                              "refusing them")

    compare = command_parser(commands, "compare", "Compare run directories: report.md, report.json and plots, with "
                       "intervals and the differences each sample size can detect.")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run directory, or LABEL=DIR (same label: seeds)")
    compare.add_argument("--out", type=Path, required=True, help="directory to write the report to")
    pairs.register(commands)
    for sub in (inspect, patch, export, probe, experiment, demo, *kinds.choices.values(), commands.choices["pairs"]):
        trust_flag(sub)
    return parser


def _inspect(args) -> int:
    from crrelu_llm.patching.checkpoints import inspect_model

    info = inspect_model(args.model, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sites = info["activations"]
    print(f"{args.model}: {info['model_class']}, {len(sites)} activation module(s)")
    for s in sites:
        print(f"  {'MLP ' if s['feed_forward'] else '--- '} {s['path']}: {s['module_type']} ({s['reason']})")
    print(f"{sum(s['feed_forward'] for s in sites)} in feed-forward blocks would be replaced by `crrelu-llm patch` "
          "(marked MLP).")
    if info["patch_record"]:
        print(f"Already patched: {len(info['patch_record']['modules'])} module(s) recorded in config.crrelu_llm_patch.")
    return 0


def _patch(args) -> int:
    from crrelu_llm.patching.checkpoints import patch_checkpoint
    from crrelu_llm.patching.discovery import activation_kwargs_value

    report = patch_checkpoint(args.model, args.out, activation=args.activation, epsilon_init=args.epsilon_init,
                              layers=args.layers, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                              overwrite=args.overwrite, calibration_data=args.calibration_data,
                              calibration_samples=args.calibration_samples,
                              activation_kwargs=activation_kwargs_value(args.activation_kwargs))
    print(report)
    print(f"Saved to {args.out} (load it with AutoModelForCausalLM.from_pretrained after `import crrelu_llm`; "
          "to share it without crrelu-llm: crrelu-llm export)")
    return 0


def _export(args) -> int:
    from crrelu_llm.patching.remote_code import export_remote_code

    export_remote_code(args.model, args.out, overwrite=args.overwrite)
    print(f"Saved to {args.out}: loads with AutoModelForCausalLM.from_pretrained({str(args.out)!r}, "
          "trust_remote_code=True), with or without crrelu-llm installed.")
    return 0


def _data_kwargs(args) -> dict:
    return {"data_format": args.data_format, "split": args.split, "out": args.out}


def _eval_rewards(args) -> int:
    from crrelu_llm.evaluation.evaluate import rewards_file, run_rewards

    result = run_rewards(args.model, args.reference, args.data, betas=args.beta, max_samples=args.max_samples,
                         max_length=args.max_length, batch_size=args.batch_size, **_data_kwargs(args))
    lo, hi = result["accuracy_interval"]
    trained = f", trained with beta {result['training_beta']:g}" if result["training_beta"] is not None else ""
    print(f"{result.get('objective', 'dpo').upper()} implicit-reward accuracy {result['accuracy']:.3f} [{lo:.3f}, "
          f"{hi:.3f}] (n={result['n']} pairs{trained}; the same "
          f"at every evaluation beta), ties {result['ties']:.3f}")
    for b in result["margins_per_evaluation_beta"]:
        print(f"  margin at evaluation beta {b['beta']:g}: {b['margin']:.4f}")
    print(f"reference-free preference accuracy {result['preference_accuracy']:.3f} (n={result['n']}) "
          f"-> {rewards_file(args.model, args.out)}", *(f"warning: {w}" for w in result["warnings"]), sep="\n")
    return 0


def _eval_drift(args) -> int:
    from crrelu_llm.evaluation.evaluate import drift_file, run_drift

    result = run_drift(args.model, args.original, args.data, max_samples=args.max_samples,
                       max_length=args.max_length, batch_size=args.batch_size, **_data_kwargs(args))
    print(f"perplexity {result['perplexity_patched']:.3f} (original {result['perplexity_original']:.3f}), "
          f"KL(patched || original) {result['kl_patched_original']:.4f}/token over {result['tokens']} completion "
          f"tokens of {result['data']['eval_rows']} examples -> {drift_file(args.model, args.out)}")
    return 0


def _eval_winrate(args) -> int:
    from crrelu_llm.evaluation.evaluate import run_winrate, winrate_file
    from crrelu_llm.evaluation.generation import GenerationSettings
    from crrelu_llm.evaluation.length_control import describe

    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                                  temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                  batch_size=args.batch_size, chat_template=args.chat_template)
    result = run_winrate(args.model, args.baseline, args.data, args.judge, num_prompts=args.num_prompts,
                         settings=settings, judge_concurrency=args.judge_concurrency, **_data_kwargs(args))
    stats, (lo, hi) = result["stats"], result["stats"]["interval"]
    print(f"{args.model} vs {args.baseline} ({result['judge']}): {stats['wins']}/{stats['ties']}/{stats['losses']} "
          f"W/T/L of n={stats['n']}, win rate {stats['win_rate']:.3f} [{lo:.3f}, {hi:.3f}], "
          f"sign test p={stats['sign_test_p']:.3g}: {stats['estimate']['verdict']}; "
          f"{describe(stats.get('length_controlled'))} -> "
          f"{winrate_file(args.model, args.judge, args.baseline, args.out)}",
          *(f"warning: {w}" for w in result["warnings"]), sep="\n")
    return 0


def _eval_benchmark(args) -> int:
    from crrelu_llm.evaluation.benchmark import benchmark_file, headline, run_benchmark

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = run_benchmark(args.model, args.tasks, limit=limit, num_fewshot=args.num_fewshot,
                            batch_size=args.batch_size, out=args.out)
    for task, result in results.items():
        shown = headline(result)
        if shown:
            name, metric = shown
            spread = f" +- {metric['stderr']:.3f} (stderr)" if metric["stderr"] is not None else ""
            print(f"{task}: {name} {metric['value']:.3f}{spread}, n={result['n']} "
                  f"-> {benchmark_file(args.model, task, args.out)}")
    return 0


def _probe(args) -> int:
    from crrelu_llm.evaluation.evaluate import probe_file, run_probe

    result = run_probe(args.model, args.data, original=args.original, max_samples=args.max_samples,
                       max_length=args.max_length, batch_size=args.batch_size, **_data_kwargs(args))
    print(f"{'layer':>5}  {'mean':>7}  {'sd':>6}  {'skew':>6}  {'ex.kurt':>7}  {'neg':>5}  {'zero':>5}  "
          f"{'|y|<1e-3':>8}  {'eps':>8}  {'eps (LS)':>8}")
    for layer in result["layers"]:  # another class's learned parameters where CRReLU's eps would be
        eps = f"{layer['epsilon']:.4f}" if layer["epsilon"] is not None else \
            ",".join(f"{k}={v:.4g}" for k, v in layer.get("parameters", {}).items()) or "-"
        ls = f"{layer['least_squares_epsilon']:.4f}" if layer["least_squares_epsilon"] is not None else "-"
        print(f"{str(layer['layer']):>5}  {layer['mean']:7.3f}  {layer['sd']:6.3f}  {layer['skewness']:6.2f}  "
              f"{layer['excess_kurtosis']:7.2f}  {layer['share_negative']:5.2f}  {layer['output_zero']:5.2f}  "
              f"{layer['output_small']:8.2f}  {eps:>8}  {ls:>8}")
    print(f"over {result['layers'][0]['n'] if result['layers'] else 0} activations per layer of "
          f"{result['data']['eval_rows']} examples -> {probe_file(args.model, args.out)}")
    return 0


def _compare(args) -> int:
    from crrelu_llm.reporting.report import compare

    report = compare(args.runs, args.out)
    for label, arm in report["arms"].items():
        acc = arm.get("reward_accuracy")
        print(f"{label}: {len(arm['runs'])} run(s)" + (f", reward accuracy {acc['mean']:.3f} (n={acc['n'][0]})"
                                                        if acc else ""))
    print(f"report: {args.out / 'report.md'}")
    return 0


def _experiment(args) -> int:
    from crrelu_llm.experiments.experiment import DEMO_RECIPE, load_experiment, run_experiment
    from crrelu_llm.reporting.summary import format_stages, format_table, format_totals
    from crrelu_llm.runtime import set_cpu_threads

    set_cpu_threads()
    exp = load_experiment(DEMO_RECIPE if args.command == "demo" else args.config, args.out)
    if getattr(args, "plan", False):
        return _plan(exp, args)
    summary = run_experiment(exp, rerun_changed=args.rerun_changed, executor=_executor(args))
    print(f"\n{exp.name}: {len(summary['rows'])} DPO runs, {summary['seconds']:.0f}s: {format_totals(summary)} "
          f"({exp.output_dir})")
    print(format_table(summary, exp.baseline_arm))
    if summary["reading"]:
        reading = "\n".join(f"- {line}" for line in summary["reading"])
        print(f"\nreading (generated from the intervals above):\n{reading}")
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


def _train(args) -> int:
    from crrelu_llm.training import train

    return train.main(args.command, args.recipe_args)


COMMANDS = {"inspect": _inspect, "patch": _patch, "export": _export, **dict.fromkeys(TRAINING, _train),
            "compare": _compare,
            "experiment": _experiment, "demo": _experiment, "eval rewards": _eval_rewards,
            "eval winrate": _eval_winrate, "eval drift": _eval_drift, "eval benchmark": _eval_benchmark,
            "probe": _probe, "pairs": pairs.run}


def main(argv: list[str] | None = None) -> int:
    """Parse, call one function, print. Errors crrelu-llm raises on purpose (:mod:`crrelu_llm.errors`)
    become one line on stderr and exit status 2; anything else keeps its traceback."""
    from_console = argv is None  # only the command itself restarts pinned, never a caller's process
    argv = list(sys.argv[1:] if argv is None else argv)
    if from_console:
        from crrelu_llm import reproducibility

        if reproducibility.wanted(argv):
            reproducibility.restart_pinned(argv)
    # transformers 5 warns on every run that TRL 1.x still sets `gradient_checkpointing`:
    # library-to-library deprecation noise that a user of this command cannot act on.
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)
    configure_logging("%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in TRAINING:  # TRL's parser owns these flags (--help lists them all)
        args = argparse.Namespace(command=argv[0], recipe_args=argv[1:])
    else:
        try:
            args = build_parser().parse_args(argv)
        except UsageError as err:  # one line, exit 2, like every other bad input
            print(err, file=sys.stderr)
            return 2
    command = args.command + (f" {args.eval_command}" if args.command == "eval" else "")
    try:
        with trusting(getattr(args, "trust_remote_code", False)):  # every load in the command (patching.trust)
            return COMMANDS[command](args)
    except Interrupted as err:  # on a line of its own: a progress bar may have been mid-line
        print(f"\ncrrelu-llm {command}: interrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"\ncrrelu-llm {command}: interrupted; files are written whole or not at all, so rerun it",
              file=sys.stderr)
        return 130
    except CRReLULLMError as err:
        print(f"crrelu-llm {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
