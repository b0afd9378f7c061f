"""What every command's parser shares: one-line usage errors, defaults shown in ``--help``, count flags."""

from __future__ import annotations

import argparse

from crrelu_llm.errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the flag, the value as typed, where to look)."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """A count flag: a whole number of at least 1, refused as typed otherwise."""
    if not text.strip().lstrip("+").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


class Help(argparse.HelpFormatter):
    """Each option's help, then its default where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


MODEL_HELP = "hub id, local checkpoint directory, or tiny-<model_type> (a tiny model built offline)"


def command_parser(group, name: str, text: str, **kwargs):
    """A subcommand whose --help starts by saying what it does."""
    return group.add_parser(name, help=text, description=text, formatter_class=Help, **kwargs)


TRUST_HELP = ("trust the checkpoint: allow custom modeling code from the hub, and let a checkpoint's patch record "
              "import the activation class it names (module:Class); without it such a load fails in one line")


def trust_flag(sub) -> None:
    """``--trust-remote-code``: every command that loads a checkpoint takes it (crrelu_llm.patching.trust)."""
    sub.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
