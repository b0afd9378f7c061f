"""Judge templates: the prompt a pairwise LLM judge gets, its placeholders and how its verdict is read.

Shipped (``--judge-template NAME``):

- ``default``: one letter, A or B (this project's prompt);
- ``alpaca_eval``: in AlpacaEval's pairwise style, the preferred output named by its model
  identifier, ``m`` or ``M``;
- ``arena_hard``: in Arena-Hard's style, a five-level scale, ``[[A>>B]]``, ``[[A>B]]``, ``[[A=B]]``,
  ``[[B>A]]``, ``[[B>>A]]``: strong and weak preferences count as wins or losses and ``A=B`` as a
  tie; the strength is kept in the judgments file.

Or a YAML file with the same fields: ``prompt`` (with ``{prompt}``, ``{a}`` and ``{b}``),
``verdict`` (a regular expression whose first group is the verdict), ``outcomes`` (each verdict
text -> ``A``, ``B`` or ``tie``), optionally ``strengths`` (verdict text -> a word) and
``max_tokens``. A verdict the expression does not find is unreadable: counted and reported,
never guessed.

Example::

    >>> from crrelu_llm.evaluation.judge_templates import load_template
    >>> load_template("arena_hard").read("... so my final verdict is [[B>A]].")
    ('B', 'slightly better')
    >>> load_template("default").read("A")
    ('A', None)
    >>> load_template("default").read("I cannot tell.")
    (None, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crrelu_llm.errors import UsageError, did_you_mean


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    prompt: str
    verdict: str
    outcomes: dict[str, str]
    strengths: dict[str, str] = field(default_factory=dict)
    max_tokens: int = 4
    ignore_case: bool = True

    def render(self, prompt: str, a: str, b: str) -> str:
        return self.prompt.replace("{prompt}", prompt).replace("{a}", a).replace("{b}", b)

    def verdict_text(self, answer: str) -> str:
        """The verdict in a judge's answer (the last one the expression finds), or, when there is
        none, the answer itself (cut to 500 characters): kept so that it can be counted and read."""
        matches = re.findall(self.verdict, answer or "", flags=re.I if self.ignore_case else 0)
        if not matches:
            return (answer or "")[:500]
        return matches[-1] if isinstance(matches[-1], str) else matches[-1][0]

    def read(self, answer: str) -> tuple[str | None, str | None]:
        """``(side, strength)``: side A, B or tie, or None when no verdict can be read."""
        text = self.verdict_text(answer)
        same = (lambda k: k.lower() == text.lower()) if self.ignore_case else (lambda k: k == text)
        key = next((k for k in self.outcomes if same(k)), None)
        if key is None:
            return None, None
        return self.outcomes[key], self.strengths.get(key)


DEFAULT_PROMPT = """You compare two assistant responses to the same user prompt and decide which one is better:
more helpful, correct and harmless. Answer with exactly one letter: A or B.

[Prompt]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Answer A or B."""

# In the style of AlpacaEval's pairwise judge (this project's wording): two outputs named by model
# identifiers m and M, the answer the identifier alone.
ALPACA_EVAL_PROMPT = """You rank the outputs of language models for a leaderboard. Below is one instruction and two
outputs, each labelled with a model identifier. Judge them as a careful human reader would: which
output follows the instruction better and is more helpful, accurate and clear?

## Instruction
{prompt}

## Output of model m
{a}

## Output of model M
{b}

## Task
Reply with the identifier of the model whose output is better, and nothing else: m or M."""

# In the style of Arena-Hard's judge (this project's wording): an explanation, then a final verdict
# on a five-level scale in double brackets.
ARENA_HARD_PROMPT = """You are an impartial judge of two AI assistants' answers to the user prompt below. First write
your own answer to the prompt, then compare both assistants' answers with it: note mistakes and
inaccurate information, and weigh how helpful, relevant and concise each one is.

End with your final verdict, exactly one of these labels:
[[A>>B]] assistant A is significantly better
[[A>B]] assistant A is slightly better
[[A=B]] a tie, about the same
[[B>A]] assistant B is slightly better
[[B>>A]] assistant B is significantly better

<|User Prompt|>
{prompt}

<|Assistant A's Answer|>
{a}
<|End of Assistant A's Answer|>

<|Assistant B's Answer|>
{b}
<|End of Assistant B's Answer|>"""

TEMPLATES = {
    "default": JudgeTemplate("default", DEFAULT_PROMPT, r"^\W*([AB])\b", {"A": "A", "B": "B"}),
    "alpaca_eval": JudgeTemplate(
        "alpaca_eval", ALPACA_EVAL_PROMPT, r"^\W*(m|M)\b", {"m": "A", "M": "B"}, max_tokens=8, ignore_case=False
    ),
    "arena_hard": JudgeTemplate(
        "arena_hard",
        ARENA_HARD_PROMPT,
        r"\[\[(A>>B|A>B|A=B|B=A|B>A|B>>A)\]\]",
        {"A>>B": "A", "A>B": "A", "A=B": "tie", "B=A": "tie", "B>A": "B", "B>>A": "B"},
        {"A>>B": "much better", "A>B": "slightly better", "B>A": "slightly better", "B>>A": "much better"},
        max_tokens=2048,
    ),
}


def load_template(spec: str | None) -> JudgeTemplate:
    """A shipped template by name, or one from a YAML file; a bad one is a one-line usage error."""
    if spec is None or spec in TEMPLATES:
        return TEMPLATES[spec or "default"]
    path = Path(spec)
    if not path.is_file():
        raise UsageError(
            f"--judge-template {spec!r}: no such shipped template ({', '.join(TEMPLATES)}) or file"
            + did_you_mean(spec, TEMPLATES)
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UsageError(f"judge template {path}: not valid YAML ({err})") from None
    missing = [k for k in ("prompt", "verdict", "outcomes") if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise UsageError(f"judge template {path}: '{missing[0]}' is missing (it needs prompt, verdict and outcomes)")
    absent = [p for p in ("{prompt}", "{a}", "{b}") if p not in raw["prompt"]]
    if absent:
        raise UsageError(f"judge template {path}: the prompt has no {absent[0]} placeholder")
    try:
        if re.compile(raw["verdict"]).groups < 1:
            raise UsageError(f"judge template {path}: 'verdict' needs a group, (...), around the verdict")
    except re.error as err:
        raise UsageError(f"judge template {path}: 'verdict' is not a regular expression ({err})") from None
    wrong = [v for v in raw["outcomes"].values() if v not in ("A", "B", "tie")]
    if wrong:
        raise UsageError(f"judge template {path}: an outcome must be A, B or tie, got {wrong[0]!r}")
    return JudgeTemplate(
        path.stem,
        raw["prompt"],
        raw["verdict"],
        {str(k): v for k, v in raw["outcomes"].items()},
        {str(k): v for k, v in (raw.get("strengths") or {}).items()},
        int(raw.get("max_tokens", 16)),
    )
