"""What every command's parser shares: one-line usage errors, defaults shown in ``--help``, count flags."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from crrelu_llm.errors import UsageError
from crrelu_llm.help import DefaultsShown


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the flag, the value as typed, where to look)."""

    typed: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self.typed = list(args or [])  # to name a flag in an error as the user spelled it
        return super().parse_known_args(args, namespace)

    def error(self, message):
        def as_typed(match):
            spellings = match.group(1).split("/")
            typed = [s for s in spellings if any(a == s or a.startswith(s + "=") for a in self.typed)]
            return f"argument {(typed or spellings)[0]}:"

        message = re.sub(r"argument ((?:--?[\w-]+/)+--?[\w-]+):", as_typed, message)
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")

    def add_argument(self, *names, **kwargs):
        """Every ``--two-word`` flag is also ``--two_word``, as the training commands (TRL's
        parser) take both: one rule for every command."""
        return super().add_argument(*both_spellings(names), **kwargs)

    def add_mutually_exclusive_group(self, **kwargs):
        """A group of flags of which one is given, each with both spellings."""
        group = super().add_mutually_exclusive_group(**kwargs)
        plain = group.add_argument
        group.add_argument = lambda *names, **kw: plain(*both_spellings(names), **kw)
        return group


def both_spellings(names) -> list[str]:
    """``("--two-word",)`` -> ``["--two-word", "--two_word"]``."""
    also = ["--" + n[2:].replace("-", "_") for n in names if n.startswith("--") and "-" in n[2:]]
    return [*names, *[n for n in also if n not in names]]


def positive_int(text: str) -> int:
    """A count flag: a whole number of at least 1, refused as typed otherwise."""
    if not text.strip().lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


Help = DefaultsShown  # every command's --help shows its defaults


MODEL_HELP = "hub id, local checkpoint directory, or tiny-<model_type> (a tiny model built offline)"


def command_parser(group, name: str, text: str, **kwargs):
    """A subcommand whose --help starts by saying what it does."""
    return group.add_parser(name, help=text, description=text, formatter_class=Help, **kwargs)


TRUST_HELP = (
    "trust the checkpoint: allow custom modeling code from the hub, and let a checkpoint's patch record "
    "import the activation class it names (module:Class); without it such a load fails in one line"
)


def trust_flag(sub) -> None:
    """``--trust-remote-code``: every command that loads a checkpoint takes it (crrelu_llm.patching.trust)."""
    sub.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)


def data_options(sub) -> None:
    """The data options every evaluation KIND and ``probe`` share."""
    sub.add_argument(
        "--data",
        required=True,
        help="hub id or local file/directory: preference data, or (win rates) a prompt set",
    )
    sub.add_argument(
        "--data-format",
        default="auto",
        help="auto, hh, shp, ultrafeedback or preference; for win rates also prompt (TRL's prompt-only), "
        "alpaca_eval or arena_hard",
    )
    sub.add_argument("--split", default=None, help="evaluation split (default: test, else a held-out share)")
    sub.add_argument("--out", type=Path, default=None, help="output directory (default: MODEL/eval)")
    sub.add_argument("--batch-size", type=positive_int, default=8, help="examples per forward pass")
    sub.add_argument("--max-length", type=positive_int, default=1024, help="tokens per example, prompt included")


def data_kwargs(args) -> dict:
    """Those options as the evaluation functions take them."""
    return {"data_format": args.data_format, "split": args.split, "out": args.out}
