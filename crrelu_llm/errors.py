"""The errors crrelu-llm raises on purpose, under one root.

Every error here means "the input cannot work, and the message says why and what to do":
the command line prints exactly these as one line and exits with status 2. Anything else
(a ``KeyError`` in our code, a CUDA fault) is a bug or a crash and keeps its traceback.

Each class also derives from the built-in exception a caller would expect (``ValueError`` for
bad values, ``RuntimeError`` for failures of a model or a service, ``FileExistsError``), so
code that caught those before still does.
"""

from __future__ import annotations


class CRReLULLMError(Exception):
    """Root of every error crrelu-llm raises on purpose."""


class UsageError(CRReLULLMError, ValueError):
    """A bad argument value: an unknown activation, kernel or task, an out-of-range layer."""


class RecipeError(UsageError):
    """A recipe key or value is wrong; the message names it and the fix."""


class ExperimentError(UsageError):
    """An experiment recipe is wrong, or one of its stages failed."""


class PatchError(UsageError):
    """A model cannot be patched as asked."""


class NoActivationFoundError(PatchError):
    """The model has no activation module inside a feed-forward block."""


class DataError(CRReLULLMError, ValueError):
    """Bad data: the message names the source, the row and the column."""


class MalformedRowError(DataError):
    """One row of a dataset cannot be converted: it names the source, split, row and column."""

    def __init__(self, source: str, split: str, row: int, column: str, problem: str):
        self.source, self.split, self.row, self.column, self.problem = source, split, row, column, problem
        super().__init__(
            f"{source} [{split}] row {row}: column {column!r} {problem}. "
            "Fix the row, or set drop_invalid_rows: true to drop such rows and count them."
        )


class ModelLoadError(CRReLULLMError, RuntimeError):
    """A model or tokenizer could not be found or loaded; the message says what to try."""


class EvaluationError(CRReLULLMError, RuntimeError):
    """Inputs that cannot be evaluated; the message says which and why."""


class JudgeError(CRReLULLMError, RuntimeError):
    """The judge could not give verdicts; what it judged before failing is kept (cache)."""


class ReportError(CRReLULLMError, ValueError):
    """Run directories that cannot be reported on."""


class OutputExistsError(CRReLULLMError, FileExistsError):
    """The output would replace existing files that the user did not ask to replace."""


class OutputError(CRReLULLMError, OSError):
    """An output directory cannot be created or written; the message names it and the fix."""


class Interrupted(CRReLULLMError):
    """The user stopped a run (Ctrl-C); the message says where it can resume from."""


def did_you_mean(word: str, choices, show=repr, n: int = 1) -> str:
    """``"; did you mean 'x'?"`` for the choices closest to a mistyped ``word`` (empty when none
    is close): the one suggestion format every unknown key, name or arm uses."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in choices], n=n)
    return f"; did you mean {' or '.join(show(c) for c in close)}?" if close else ""
