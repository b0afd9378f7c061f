"""Which activation classes a checkpoint may make crrelu-llm import.

transformers keeps one promise about checkpoints: loading one runs no code the checkpoint
chooses unless the caller passes ``trust_remote_code=True``. A patch record that names a user's
class (``module:Class``) would make ``from_pretrained`` import that module, so crrelu-llm keeps
the same promise:

- the built-in activations (``crrelu``, ``swish_beta``, ``relu2``, transformers' own names) are
  always trusted: their code is this package's or transformers';
- a class named by a checkpoint is imported only when the load is trusted:
  ``from_pretrained(..., trust_remote_code=True)`` (the flag every crrelu-llm command takes as
  ``--trust-remote-code``, and recipes as ``trust_remote_code: true``), the import path listed in
  the environment variable :data:`ENV` (comma-separated), or inside :func:`trusting` (the
  experiment runner trusts the classes its own recipe names, and nothing else);
- otherwise the load fails in one line naming the class and how to trust it, before the named
  module is imported.

Kwargs recorded beside a class are data: they are bound to the class's signature, never evaluated.

Example:
    >>> import os
    >>> allowed("my_acts:LearnedSwish")
    False
    >>> with trusting(activations=["my_acts:LearnedSwish"]):
    ...     allowed("my_acts:LearnedSwish")
    True
"""

from __future__ import annotations

import contextvars
import functools
import os
from contextlib import contextmanager

from crrelu_llm.errors import PatchError

ENV = "CRRELU_LLM_TRUSTED_ACTIVATIONS"
_SCOPE: contextvars.ContextVar[tuple[bool, frozenset]] = contextvars.ContextVar(
    "crrelu_llm_trust", default=(False, frozenset())
)


@contextmanager
def trusting(remote_code: bool = False, activations=()):
    """Trust, inside the block, every class a checkpoint names (``remote_code``) or the listed
    import paths; a block inside another adds to what the outer one trusts."""
    everything, names = _SCOPE.get()
    token = _SCOPE.set((everything or bool(remote_code), names | frozenset(a for a in activations if a)))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def listed() -> set[str]:
    """The import paths :data:`ENV` trusts."""
    return {p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()}


def allowed(path: str) -> bool:
    everything, names = _SCOPE.get()
    return everything or path in names or path in listed()


def require(path: str, source: str = "this checkpoint") -> None:
    """Refuse, before any import, a class ``source`` names that nobody trusted."""
    if not allowed(path):
        module = path.partition(":")[0]
        raise PatchError(
            f"{source} names the activation class {path!r}: loading it would import {module!r} and run "
            f"its code; trust it with trust_remote_code=True (--trust-remote-code, or "
            f"trust_remote_code: true in a recipe) or {ENV}={path}"
        )


def install() -> None:
    """``PreTrainedModel.from_pretrained(..., trust_remote_code=True)`` trusts, for that load, the
    classes the checkpoint names (the Auto classes pass the flag on to it). Idempotent."""
    from transformers.modeling_utils import PreTrainedModel

    original = PreTrainedModel.from_pretrained.__func__
    if getattr(original, "_crrelu_llm_trust", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, *args, **kwargs):
        with trusting(kwargs.get("trust_remote_code") is True):
            return original(cls, *args, **kwargs)

    from_pretrained._crrelu_llm_trust = True
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)


class TrustedCall:
    """``action()`` run trusting ``activations`` (picklable: the local and Slurm executors send a
    stage's action to another process, where no scope of this one reaches)."""

    def __init__(self, action, activations):
        self.action, self.activations = action, sorted(activations)

    def __call__(self):
        with trusting(activations=self.activations):
            return self.action()


def environment(extra=()) -> dict[str, str]:
    """``os.environ`` with :data:`ENV` listing what this scope trusts (and ``extra``): for a
    command run under a launcher, in processes of its own."""
    names = sorted(listed() | set(_SCOPE.get()[1]) | {a for a in extra if a})
    return {**os.environ, ENV: ",".join(names)} if names else dict(os.environ)
