"""The ``crrelu-llm`` command.

    crrelu-llm inspect MODEL                 which activation modules a model has, and where
    crrelu-llm patch MODEL --out DIR         swap them for CRReLU and save a loadable checkpoint
    crrelu-llm sft --config RECIPE [--key value ...]    patch (per the recipe), then SFT with TRL
    crrelu-llm dpo --config RECIPE [--key value ...]    patch (per the recipe), then DPO with TRL

MODEL is a hub id, a local checkpoint directory, or ``tiny-<model_type>`` (built offline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
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


COMMANDS = {"inspect": _inspect, "patch": _patch}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .loading import ModelLoadError
    from .patch import NoActivationFoundError

    expected = (ModelLoadError, NoActivationFoundError, FileExistsError, ValueError, TypeError)
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
        print(f"crrelu-llm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
