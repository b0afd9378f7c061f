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
import sys
import warnings

from crrelu_llm.cli import compare, evaluate, experiment, export, inspect_model, pairs, patch, probe, train
from crrelu_llm.cli.common import OneLineParser
from crrelu_llm.errors import CRReLULLMError, Interrupted, UsageError
from crrelu_llm.patching.trust import trusting
from crrelu_llm.runtime import configure_logging
from crrelu_llm.version import __version__


def train_main(args) -> int:
    """A training command: the rest of the line goes to the recipe parser as it is."""
    from crrelu_llm.training import train as training

    return training.main(args.command, args.recipe_args)


# Each command's module holds its parser (register), its handler (run) and its printing.
MODULES = (inspect_model, patch, export, train, evaluate, probe, experiment, compare, pairs)
COMMANDS = {
    "inspect": inspect_model.run,
    "patch": patch.run,
    "export": export.run,
    **dict.fromkeys(train.COMMANDS, train_main),
    "eval": evaluate.run,
    "probe": probe.run,
    "experiment": experiment.run,
    "demo": experiment.run,
    "compare": compare.run,
    "pairs": pairs.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="crrelu-llm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Swap the MLP activation of pretrained causal LMs for CRReLU and study what it "
        "does to preference tuning.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--version", action="version", version=f"crrelu-llm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.register(commands)
    return parser


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
    if argv and argv[0] in train.COMMANDS:  # TRL's parser owns these flags (--help lists them all)
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
            return COMMANDS[args.command](args)
    except Interrupted as err:  # on a line of its own: a progress bar may have been mid-line
        print(f"\ncrrelu-llm {command}: interrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            f"\ncrrelu-llm {command}: interrupted; files are written whole or not at all, so rerun it", file=sys.stderr
        )
        return 130
    except CRReLULLMError as err:
        print(f"crrelu-llm {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
