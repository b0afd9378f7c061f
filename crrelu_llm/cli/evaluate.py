"""``crrelu-llm eval rewards|winrate|drift|benchmark``: evaluate checkpoints, each KIND writing
one result file (default: MODEL/eval). Its parsers, handlers and printing."""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.cli.common import command_parser, data_kwargs, data_options, positive_int, trust_flag


def register(commands) -> None:
    evaluate = command_parser(
        commands,
        "eval",
        "Evaluate checkpoints: reward accuracy, judged win rates, drift from "
        "the original, capability benchmarks. Each writes one result file (default: MODEL/eval).",
    )
    kinds = evaluate.add_subparsers(dest="eval_command", required=True, metavar="KIND")

    rewards = command_parser(
        kinds,
        "rewards",
        "Implicit-reward accuracy and margins of a model against its reference "
        "(DPO), or by its objective's own reward (SimPO, ORPO), at several betas.",
    )
    rewards.add_argument("--model", required=True, help="the trained model (a preference run)")
    rewards.add_argument("--reference", help="its reference (e.g. the SFT model); none: a SimPO/ORPO run's own reward")
    rewards.add_argument("--beta", type=float, nargs="+", default=[0.1], help="evaluation betas for the margins")
    rewards.add_argument("--max-samples", type=positive_int, default=None, help="pairs to score (default: all)")
    data_options(rewards)

    winrate = command_parser(
        kinds,
        "winrate",
        "Generate with two models on the same prompts and judge the pairs: "
        "win rate with its interval, a sign test and what the data can detect.",
    )
    winrate.add_argument("--model", required=True, help="the model under test")
    against = winrate.add_mutually_exclusive_group(required=True)
    against.add_argument("--baseline", help="the model it is compared with (generated here, as the model is)")
    against.add_argument(
        "--baseline-outputs",
        type=Path,
        help="reference outputs for the same prompts in place of a baseline model: AlpacaEval's "
        "(instruction, output, generator) or an Arena-Hard answer file",
    )
    winrate.add_argument(
        "--judge",
        required=True,
        help="reward-model:<id or path> | openai:<model>@<base url> ($OPENAI_API_KEY) | rule:<task>",
    )
    winrate.add_argument("--num-prompts", type=positive_int, default=200, help="prompts to generate for")
    winrate.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens generated per response")
    winrate.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    winrate.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (with --sample)")
    winrate.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling share (with --sample)")
    winrate.add_argument("--seed", type=int, default=0, help="generation seed")
    winrate.add_argument("--chat-template", action="store_true", help="apply the tokenizer's chat template")
    winrate.add_argument(
        "--judge-concurrency", type=positive_int, default=8, help="requests an openai: judge keeps in flight"
    )
    winrate.add_argument(
        "--generate-with",
        default=None,
        help="openai:<model>@<base url>: the model's completions from an OpenAI-compatible server (vllm serve on "
        "its exported checkpoint), once its log-probabilities match the model's",
    )
    winrate.add_argument(
        "--judge-template",
        default="default",
        help="an openai: judge's prompt and verdict: default (A or B), alpaca_eval (m or M), arena_hard "
        "(five levels, [[A>>B]] ... [[B>>A]]) or a YAML file (prompt, verdict, outcomes)",
    )
    data_options(winrate)

    drift = command_parser(
        kinds,
        "drift",
        "Perplexity of both models and per-token KL of a patched model against the original, on completion tokens.",
    )
    drift.add_argument("--model", required=True, help="the patched (or trained) model")
    drift.add_argument("--original", required=True, help="the original model")
    drift.add_argument("--max-samples", type=positive_int, default=200, help="examples to measure on")
    data_options(drift)

    benchmark = command_parser(
        kinds,
        "benchmark",
        "Capability benchmarks through lm-evaluation-harness (the [bench] extra), on a model loaded by crrelu-llm.",
    )
    benchmark.add_argument("--model", required=True, help="the model to benchmark")
    benchmark.add_argument(
        "--tasks",
        required=True,
        help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy; crrelu_arith_mc runs offline",
    )
    benchmark.add_argument(
        "--limit", type=float, default=None, help="items per task: a count, or a fraction below 1 (default: all)"
    )
    benchmark.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: the task's)")
    benchmark.add_argument("--batch-size", type=positive_int, default=16, help="examples per forward pass")
    benchmark.add_argument("--out", type=Path, default=None, help="output directory (default: MODEL/eval)")
    for sub in kinds.choices.values():
        trust_flag(sub)


def run(args) -> int:
    return KINDS[args.eval_command](args)


def _eval_rewards(args) -> int:
    from crrelu_llm.evaluation.evaluate import run_rewards
    from crrelu_llm.evaluation.results import REWARDS

    result = run_rewards(
        args.model,
        args.reference,
        args.data,
        betas=args.beta,
        max_samples=args.max_samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        **data_kwargs(args),
    )
    _print_rewards(result, REWARDS.file(args.model, args.out))
    return 0


def _print_rewards(result: dict, written) -> None:
    lo, hi = result["accuracy_interval"]
    trained = f", trained with beta {result['training_beta']:g}" if result["training_beta"] is not None else ""
    print(
        f"{result.get('objective', 'dpo').upper()} implicit-reward accuracy {result['accuracy']:.3f} [{lo:.3f}, "
        f"{hi:.3f}] (n={result['n']} pairs{trained}; the same "
        f"at every evaluation beta), ties {result['ties']:.3f}"
    )
    for b in result["margins_per_evaluation_beta"]:
        print(f"  margin at evaluation beta {b['beta']:g}: {b['margin']:.4f}")
    print(
        f"reference-free preference accuracy {result['preference_accuracy']:.3f} (n={result['n']}) -> {written}",
        *(f"warning: {w}" for w in result["warnings"]),
        sep="\n",
    )


def _eval_drift(args) -> int:
    from crrelu_llm.evaluation.evaluate import run_drift
    from crrelu_llm.evaluation.results import DRIFT

    result = run_drift(
        args.model,
        args.original,
        args.data,
        max_samples=args.max_samples,
        max_length=args.max_length,
        batch_size=args.batch_size,
        **data_kwargs(args),
    )
    print(
        f"perplexity {result['perplexity_patched']:.3f} (original {result['perplexity_original']:.3f}), "
        f"KL(patched || original) {result['kl_patched_original']:.4f}/token over {result['tokens']} completion "
        f"tokens of {result['data']['eval_rows']} examples -> {DRIFT.file(args.model, args.out)}"
    )
    return 0


def _eval_winrate(args) -> int:
    from crrelu_llm.evaluation.evaluate import run_winrate
    from crrelu_llm.evaluation.results import WINRATE

    result = run_winrate(
        args.model,
        args.baseline,
        args.data,
        args.judge,
        num_prompts=args.num_prompts,
        settings=_generation_settings(args),
        judge_concurrency=args.judge_concurrency,
        baseline_outputs=args.baseline_outputs,
        judge_template=args.judge_template,
        generate_with=args.generate_with,
        **data_kwargs(args),
    )
    label = WINRATE.label_of(
        judge=args.judge, baseline=args.baseline or args.baseline_outputs, template=args.judge_template
    )
    _print_winrate(args, result, WINRATE.file(args.model, args.out, label))
    return 0


def _generation_settings(args):
    from crrelu_llm.evaluation.generation import GenerationSettings

    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        chat_template=args.chat_template,
    )


def _print_winrate(args, result: dict, written) -> None:
    from crrelu_llm.evaluation.length_control import describe

    stats, (lo, hi) = result["stats"], result["stats"]["interval"]
    print(
        f"{args.model} vs {args.baseline} ({result['judge']}): {stats['wins']}/{stats['ties']}/{stats['losses']} "
        f"W/T/L of n={stats['n']}, win rate {stats['win_rate']:.3f} [{lo:.3f}, {hi:.3f}], "
        f"sign test p={stats['sign_test_p']:.3g}: {stats['estimate']['verdict']}; "
        f"{describe(stats.get('length_controlled'))} -> {written}",
        *(f"warning: {w}" for w in result["warnings"]),
        sep="\n",
    )


def _eval_benchmark(args) -> int:
    from crrelu_llm.evaluation.benchmark import headline, run_benchmark
    from crrelu_llm.evaluation.results import BENCHMARK

    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = run_benchmark(
        args.model, args.tasks, limit=limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size, out=args.out
    )
    for task, result in results.items():
        shown = headline(result)
        if shown:
            name, metric = shown
            spread = f" +- {metric['stderr']:.3f} (stderr)" if metric["stderr"] is not None else ""
            print(
                f"{task}: {name} {metric['value']:.3f}{spread}, n={result['n']} "
                f"-> {BENCHMARK.file(args.model, args.out, BENCHMARK.label_of(task=task))}"
            )
    return 0


KINDS = {"rewards": _eval_rewards, "winrate": _eval_winrate, "drift": _eval_drift, "benchmark": _eval_benchmark}
