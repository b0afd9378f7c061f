"""Command-line help that shows every default, for this project's parsers and the recipe's.

Example::

    >>> import argparse
    >>> from crrelu_llm.help import DefaultsShown
    >>> parser = argparse.ArgumentParser(formatter_class=DefaultsShown)
    >>> _ = parser.add_argument("--activation", default="crrelu", help="the activation to put in")
    >>> "(default: crrelu)" in parser.format_help()
    True
"""

from __future__ import annotations

import argparse


class DefaultsShown(argparse.HelpFormatter):
    """Each option's help, then its default where it has one worth showing (not None or False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class RawDescriptionDefaultsShown(argparse.RawDescriptionHelpFormatter, DefaultsShown):
    """The description as written (its line breaks kept), and every default shown."""
