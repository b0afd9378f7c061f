"""``crrelu-llm pairs``: on-policy preference pairs from a model's own samples
(:mod:`crrelu_llm.evaluation.onpolicy`): its parser, its handler and what it prints."""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.cli.common import MODEL_HELP, command_parser, positive_int, trust_flag

HELP = (
    "Sample K responses per prompt from MODEL, score them with a judge and write a preference dataset: "
    "the best sample against the worst (prompts whose samples all tie are dropped and counted)."
)


def register(commands) -> None:
    sub = command_parser(commands, "pairs", HELP)
    sub.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    sub.add_argument(
        "--data",
        required=True,
        help="prompts: a preference dataset (its training prompts; its held-out "
        "pairs are copied beside) or a JSON/JSONL file of rows with a `prompt`",
    )
    sub.add_argument(
        "--judge",
        required=True,
        help="rule:<task> | reward-model:<id or path> (pointwise) | openai:<model>@<base url> (pairwise, "
        "both orders, a round robin of the K samples; $OPENAI_API_KEY)",
    )
    sub.add_argument("--num-samples", type=positive_int, default=4, help="samples per prompt (K, at least 2)")
    sub.add_argument("--out", type=Path, required=True, help="the dataset directory to write (new or empty)")
    sub.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    sub.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling share")
    sub.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed (all K samples of a batch of prompts are drawn in one call from it)",
    )
    sub.add_argument("--max-new-tokens", type=positive_int, default=128, help="tokens per sample")
    sub.add_argument("--batch-size", type=positive_int, default=8, help="prompts per generation batch")
    sub.add_argument("--num-prompts", type=positive_int, default=None, help="the first N prompts (default: all)")
    sub.add_argument("--split", default=None, help="the split to take prompts from (default: train)")
    sub.add_argument("--data-format", default="auto", help="auto, hh, shp, ultrafeedback or preference")
    sub.add_argument("--chat-template", action="store_true", help="apply the tokenizer's chat template")
    sub.add_argument(
        "--generate-with",
        default=None,
        help="openai:<model>@<base url>: sample from an OpenAI-compatible server (K per prompt in one request), "
        "once its log-probabilities match the model's",
    )
    sub.add_argument(
        "--judge-concurrency", type=positive_int, default=8, help="requests an openai: judge keeps in flight"
    )
    trust_flag(sub)


def run(args) -> int:
    import dataclasses

    from crrelu_llm.evaluation.onpolicy import PairSettings, run_pairs

    settings = PairSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PairSettings)})
    record = run_pairs(
        args.model,
        args.data,
        args.judge,
        args.out,
        settings,
        data_format=args.data_format,
        split=args.split,
        judge_concurrency=args.judge_concurrency,
        generate_with=args.generate_with,
    )
    print(describe(record, args.out))
    return 0


def describe(record: dict, out) -> str:
    """``2929 pairs from 5000 prompts (...)`` or that there was nothing to do."""
    c = record["counts"]
    spread = c["score_spread"]
    shown = (
        f"{c['pairs']} pairs from {c['prompts']} prompts ({c['dropped_all_tied']} dropped: every sample tied; "
        f"{c['dropped_fewer_than_two_nonempty']} with fewer than two non-empty samples); best minus worst score "
        f"{spread['mean']:.3g} on average [{spread['min']:.3g}, {spread['max']:.3g}]; held out: "
        f"{record['held_out']} pairs -> {out}"
    )
    return ("nothing to do, these pairs are made already: " + shown) if record.get("reused") else shown
