"""The ``crrelu-llm`` command.

    crrelu-llm inspect MODEL                 which activation modules a model has, and where
    crrelu-llm patch MODEL --out DIR         swap them for CRReLU and save a loadable checkpoint
    crrelu-llm sft --config RECIPE [--key value ...]    patch (per the recipe), then SFT with TRL
    crrelu-llm dpo --config RECIPE [--key value ...]    patch (per the recipe), then DPO with TRL
    crrelu-llm eval rewards|winrate|drift ...            evaluate checkpoints (see --help of each)
    crrelu-llm compare RUN [RUN ...] --out DIR           report.md, report.json and plots
    crrelu-llm experiment --config EXPERIMENT.yaml       arms x betas x seeds, resumable stages
    crrelu-llm demo                                      the embedded offline experiment (CPU, minutes)

MODEL is a hub id, a local checkpoint directory, or ``tiny-<model_type>`` (built offline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from . import __version__


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--layers takes comma-separated block indices such as 0,1,-1; got {text!r}"
        ) from None


def _parse_epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--epsilon-init takes a number such as 0.01; got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"--epsilon-init must be finite; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crrelu-llm",
        description="Swap the MLP activation of pretrained causal LMs for CRReLU and study DPO.",
    )
    parser.add_argument("--version", action="version", version=f"crrelu-llm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="list a model's activation modules and what a patch would replace")
    inspect.add_argument("model", metavar="MODEL", help="hub id, local checkpoint directory, or tiny-<model_type>")
    inspect.add_argument("--trust-remote-code", action="store_true", help="allow custom modeling code from the hub")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")

    patch = commands.add_parser("patch", help="replace the MLP activations and save a checkpoint")
    patch.add_argument("model", metavar="MODEL", help="hub id, local checkpoint directory, or tiny-<model_type>")
    patch.add_argument("--out", required=True, type=Path, help="directory to write the patched checkpoint to")
    patch.add_argument("--activation", default="crrelu", help="crrelu (default) or any transformers name, e.g. relu, gelu")
    patch.add_argument("--epsilon-init", type=_parse_epsilon, default=0.01, help="initial CRReLU epsilon (default 0.01)")
    patch.add_argument("--layers", type=_parse_layers, default=None, help="comma-separated block indices (default: all)")
    patch.add_argument("--dtype", default="auto", help="auto (as stored), float32, bfloat16 or float16")
    patch.add_argument("--trust-remote-code", action="store_true", help="allow custom modeling code from the hub")
    patch.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    for name, text in (("sft", "patch per a recipe, then supervised fine-tuning (TRL SFTTrainer)"),
                       ("dpo", "patch per a recipe, then preference tuning (TRL DPOTrainer)")):
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("recipe_args", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and --key value overrides")
    evaluate = commands.add_parser("eval", help="evaluate checkpoints: rewards, winrate, drift")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True, metavar="KIND")

    def data_options(sub):
        sub.add_argument("--data", required=True, help="preference data: hub id or local file/directory")
        sub.add_argument("--data-format", default="auto", help="auto, hh, shp, ultrafeedback or preference")
        sub.add_argument("--split", default=None, help="evaluation split (default: test, else a held-out share)")
        sub.add_argument("--out", type=Path, default=None, help="output directory (default: MODEL/eval)")
        sub.add_argument("--batch-size", type=int, default=8)
        sub.add_argument("--max-length", type=int, default=1024)

    rewards = kinds.add_parser("rewards", help="DPO implicit-reward accuracy and margins for several betas")
    rewards.add_argument("--model", required=True)
    rewards.add_argument("--reference", required=True, help="the reference model (e.g. the SFT checkpoint)")
    rewards.add_argument("--beta", type=float, nargs="+", default=[0.1])
    rewards.add_argument("--max-samples", type=int, default=None)
    data_options(rewards)

    winrate = kinds.add_parser("winrate", help="generate with both models and judge the pairs")
    winrate.add_argument("--model", required=True)
    winrate.add_argument("--baseline", required=True)
    winrate.add_argument("--judge", required=True,
                         help="reward-model:<id or path> | openai:<model>@<base url> ($OPENAI_API_KEY) | rule:<task>")
    winrate.add_argument("--num-prompts", type=int, default=200)
    winrate.add_argument("--max-new-tokens", type=int, default=128)
    winrate.add_argument("--sample", action="store_true", help="sample (default: greedy)")
    winrate.add_argument("--temperature", type=float, default=1.0)
    winrate.add_argument("--top-p", type=float, default=1.0)
    winrate.add_argument("--seed", type=int, default=0)
    winrate.add_argument("--chat-template", action="store_true", help="apply the tokenizer's chat template")
    data_options(winrate)

    drift = kinds.add_parser("drift", help="perplexity and per-token KL of a patched model against the original")
    drift.add_argument("--model", required=True, help="the patched (or trained) model")
    drift.add_argument("--original", required=True, help="the original model")
    drift.add_argument("--max-samples", type=int, default=200)
    data_options(drift)

    experiment = commands.add_parser("experiment", help="run an experiment recipe: arms x betas x seeds, resumable")
    experiment.add_argument("--config", required=True, help="experiment recipe (recipes/experiments/*.yaml)")
    experiment.add_argument("--out", default=None, help="output directory (default: the recipe's output_dir)")
    demo = commands.add_parser("demo", help="the embedded offline GELU vs CRReLU vs ReLU experiment (CPU, minutes)")
    demo.add_argument("--out", default=None, help="output directory (default: runs/demo)")

    compare = commands.add_parser("compare", help="report over run directories: report.md, report.json, plots")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run directory, or LABEL=DIR (same label: seeds)")
    compare.add_argument("--out", type=Path, required=True)
    return parser


def _inspect(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from .loading import load_config
    from .patch import find_activations, patch_record

    config = load_config(args.model, trust_remote_code=args.trust_remote_code)
    with torch.device("meta"):  # the module tree only: no weights are downloaded or allocated
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=args.trust_remote_code)
    sites = find_activations(model)
    record = patch_record(model)
    if args.json:
        print(json.dumps({"model": args.model, "model_class": type(model).__name__,
                          "activations": [vars(s) for s in sites], "patch_record": record}, indent=2))
        return 0
    print(f"{args.model}: {type(model).__name__}, {len(sites)} activation module(s)")
    for s in sites:
        mark = "MLP " if s.feed_forward else "--- "
        print(f"  {mark} {s.path}: {s.module_type} ({s.reason})")
    n = sum(s.feed_forward for s in sites)
    print(f"{n} in feed-forward blocks would be replaced by `crrelu-llm patch` (marked MLP).")
    if record:
        print(f"Already patched: {len(record['modules'])} module(s) recorded in config.crrelu_llm_patch.")
    return 0


def _write_atomically(out: Path, overwrite: bool, write) -> None:
    """Call ``write(tmp_dir)`` and move the result to ``out`` only once it is complete."""
    out = out.resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _patch(args) -> int:
    from .loading import load_causal_lm
    from .patch import make_activation, patch_model

    make_activation(args.activation, args.epsilon_init)  # fail on a bad name before any download
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it or choose another --out")
    model = load_causal_lm(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    report = patch_model(model, activation=args.activation, epsilon_init=args.epsilon_init, layers=args.layers)
    tokenizer = None
    if not args.model.startswith("tiny-") or Path(args.model).exists():
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError):
            print(f"note: no tokenizer found for {args.model}; the checkpoint holds the model only", file=sys.stderr)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "patch_report.json").write_text(report.to_json() + "\n")

    _write_atomically(args.out, args.overwrite, write)
    print(report)
    print(f"Saved to {args.out} (load it with AutoModelForCausalLM.from_pretrained after `import crrelu_llm`).")
    return 0


def _eval_data(args, limit: int | None):
    from .data import DataArguments, load_preference_splits

    data_args = DataArguments(dataset_name=args.data, dataset_format=args.data_format,
                              dataset_test_split=args.split, max_eval_samples=limit)
    _, evaluation, summary = load_preference_splits(data_args)
    return evaluation, summary


def _eval_out(args, model: str) -> Path:
    out = args.out or (Path(model) / "eval" if Path(model).is_dir() else Path("eval"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _same_tokenizer(a: str, b: str, trust_remote_code: bool = False):
    from .evaluate import EvaluationError
    from .loading import load_tokenizer

    first, second = load_tokenizer(a, trust_remote_code), load_tokenizer(b, trust_remote_code)
    if first.get_vocab() != second.get_vocab():
        raise EvaluationError(f"the tokenizers of {a} and {b} disagree (different vocabularies): "
                              "rewards need a policy and a reference that share one tokenizer")
    return first


def _eval(args) -> int:
    from .evaluate import (GenerationSettings, drift, generate, preference_logps, read_jsonl, reward_metrics, slug,
                           write_jsonl)
    from .loading import load_causal_lm, load_tokenizer
    from .files import write_text_atomic as _write_atomic

    if args.eval_command == "rewards":
        tokenizer = _same_tokenizer(args.model, args.reference)
        data, summary = _eval_data(args, args.max_samples)
        out = _eval_out(args, args.model)
        model, reference = load_causal_lm(args.model), load_causal_lm(args.reference)
        logps = preference_logps(model, reference, tokenizer, data, args.max_length, args.batch_size)
        result = {"model": args.model, "reference": args.reference, "data": summary, **reward_metrics(logps, args.beta)}
        _write_atomic(out / "rewards.json", json.dumps(result, indent=2) + "\n")
        for b in result["betas"]:
            lo, hi = b["accuracy_interval"]
            print(f"beta {b['beta']}: reward accuracy {b['accuracy']:.3f} [{lo:.3f}, {hi:.3f}], ties {b['ties']:.3f}, "
                  f"margin {b['margin']:.4f}")
        print(f"reference-free preference accuracy {result['preference_accuracy']:.3f} -> {out / 'rewards.json'}")
        return 0

    if args.eval_command == "drift":
        tokenizer = _same_tokenizer(args.model, args.original)
        data, summary = _eval_data(args, args.max_samples)
        out = _eval_out(args, args.model)
        texts = [r["prompt"] + r["chosen"] for r in data if isinstance(r["prompt"], str)]
        result = {"model": args.model, "original": args.original, "data": summary,
                  **drift(load_causal_lm(args.model), load_causal_lm(args.original), tokenizer, texts,
                          args.max_length, args.batch_size)}
        _write_atomic(out / "drift.json", json.dumps(result, indent=2) + "\n")
        print(f"perplexity {result['perplexity_patched']:.3f} (original {result['perplexity_original']:.3f}), "
              f"KL(patched || original) {result['kl_patched_original']:.4f}/token -> {out / 'drift.json'}")
        return 0

    # winrate
    from .judges import make_judge
    from .stats import win_rate

    out = _eval_out(args, args.model)
    judge = make_judge(args.judge, cache_dir=out)  # a bad judge spec fails before data or generation
    data, summary = _eval_data(args, args.num_prompts)
    prompts = list(data["prompt"])
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                                  chat_template=args.chat_template)
    completions = {}
    for side, name in (("model", args.model), ("baseline", args.baseline)):
        file = out / f"generations-{slug(name)}.jsonl"
        record = {"model": name, "settings": dataclasses.asdict(settings)}
        cached = read_jsonl(file) if file.exists() else []
        if cached and cached[0] == record and [r["prompt"] for r in cached[1:]] == prompts:
            completions[side] = [r["completion"] for r in cached[1:]]
            print(f"{side}: reusing {file}")
            continue
        texts = generate(load_causal_lm(name), load_tokenizer(name), prompts, settings, desc=f"Generating ({side})")
        write_jsonl(file, [record] + [{"prompt": p, "completion": c} for p, c in zip(prompts, texts)])
        completions[side] = texts
    outcomes = judge.judge(prompts, list(zip(completions["model"], completions["baseline"])))
    stats = win_rate([o.winner for o in outcomes], completions["model"], completions["baseline"],
                     [o.consistent for o in outcomes])
    label = f"{slug(judge.name, 1)}-vs-{slug(args.baseline)}"
    write_jsonl(out / f"judgments-{label}.jsonl",
                [{"prompt": p, "model": a, "baseline": b, "winner": o.winner, "consistent": o.consistent,
                  "detail": o.detail} for p, a, b, o in zip(prompts, completions["model"], completions["baseline"], outcomes)])
    result = {"model": args.model, "baseline": args.baseline, "judge": judge.name, "data": summary,
              "settings": dataclasses.asdict(settings), "stats": stats.to_dict()}
    _write_atomic(out / f"winrate-{label}.json", json.dumps(result, indent=2) + "\n")
    lo, hi = stats.interval
    print(f"{args.model} vs {args.baseline} ({judge.name}): {stats.wins}/{stats.ties}/{stats.losses} W/T/L, "
          f"win rate {stats.win_rate:.3f} [{lo:.3f}, {hi:.3f}], sign test p={stats.sign_test_p:.3g} "
          f"-> {out / f'winrate-{label}.json'}")
    return 0


def _compare(args) -> int:
    from .report import compare

    report = compare(args.runs, args.out)
    for label, arm in report["arms"].items():
        acc = arm.get("final_eval_reward_accuracy")
        print(f"{label}: {len(arm['runs'])} run(s)" + (f", final eval reward accuracy {acc['mean']:.3f}" if acc else ""))
    print(f"report: {args.out / 'report.md'}")
    return 0


def _experiment(args) -> int:
    from . import experiment

    config = experiment.DEMO_RECIPE if args.command == "demo" else args.config
    return experiment.main(config, args.out)


COMMANDS = {"inspect": _inspect, "patch": _patch, "eval": _eval, "compare": _compare, "experiment": _experiment,
            "demo": _experiment}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # transformers 5 warns on every run that TRL 1.x still sets `gradient_checkpointing`:
    # library-to-library deprecation noise that a user of this command cannot act on.
    warnings.filterwarnings("ignore", message=r".*is deprecated and will be removed in v6.*", category=FutureWarning)
    from .loading import ModelLoadError
    from .patch import NoActivationFoundError

    from .evaluate import EvaluationError
    from .experiment import ExperimentError
    from .judges import JudgeError

    expected = (ModelLoadError, NoActivationFoundError, FileExistsError, ValueError, TypeError, EvaluationError,
                JudgeError, ExperimentError)
    if argv and argv[0] in ("sft", "dpo"):  # TRL's parser owns these flags (--help lists them all)
        from . import train

        try:
            return train.main(argv[0], argv[1:])
        except expected as err:
            print(f"crrelu-llm {argv[0]}: error: {err}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except expected as err:
        command = args.command + (f" {args.eval_command}" if args.command == "eval" else "")
        print(f"crrelu-llm {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
