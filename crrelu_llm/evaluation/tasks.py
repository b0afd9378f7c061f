"""Built-in synthetic preference tasks with verifiable answers (offline, deterministic).

- ``arithmetic``: ``"12+7="`` -> ``"19."``; rejected answers are off by one or two.
- ``repeat`` (constraint following): ``"Write x 4 times:"`` -> ``"xxxx."``; rejected answers
  miss the count by one or use the wrong letter.

``generate_task_data(task, n, seed)`` gives prompt/chosen/rejected rows (TRL's preference
format); ``scorer(task)`` scores any completion in [0, 1], for :class:`~crrelu_llm.evaluation.judges.RuleBasedJudge`.
They are ordinary datasets to the rest of the toolkit: write them as JSONL and point a recipe at it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from crrelu_llm.errors import UsageError
from crrelu_llm.files import write_jsonl

TASKS = ("arithmetic", "repeat")
_ARITH = re.compile(r"^\s*(\d+)\s*\+\s*(\d+)\s*=\s*$")
_REPEAT = re.compile(r"^Write ([a-z]) (\d+) times:$")


def _arithmetic(rng: random.Random) -> dict:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    wrong = a + b + rng.choice([-2, -1, 1, 2])
    if wrong < 0:
        wrong = a + b + 1
    return {"prompt": f"{a}+{b}=", "chosen": f"{a + b}.", "rejected": f"{wrong}."}


def _repeat(rng: random.Random) -> dict:
    letter, count = rng.choice("abcdefghij"), rng.randint(2, 7)
    if rng.random() < 0.5:
        bad = letter * (count + rng.choice([-1, 1]))
    else:
        bad = rng.choice([c for c in "abcdefghij" if c != letter]) * count
    return {"prompt": f"Write {letter} {count} times:", "chosen": f"{letter * count}.", "rejected": f"{bad}."}


_MAKERS = {"arithmetic": _arithmetic, "repeat": _repeat}


def generate_task_data(task: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct prompt/chosen/rejected rows, the same for the same seed."""
    if task not in _MAKERS:
        raise UsageError(f"unknown task {task!r}; built-in tasks: {', '.join(TASKS)}")
    rng, seen, rows = random.Random(f"{task}-{seed}"), set(), []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n:
            raise UsageError(f"task {task!r} has fewer than {n} distinct prompts")
        row = _MAKERS[task](rng)
        if row["prompt"] not in seen and row["chosen"] != row["rejected"]:
            seen.add(row["prompt"])
            rows.append(row)
    return rows


def score_arithmetic(prompt: str, completion: str) -> float:
    match = _ARITH.match(prompt)
    if not match:
        raise UsageError(f"not an arithmetic prompt: {prompt!r}")
    answer = re.match(r"\s*(\d+)", completion)
    return 1.0 if answer and int(answer.group(1)) == int(match.group(1)) + int(match.group(2)) else 0.0


def score_repeat(prompt: str, completion: str) -> float:
    match = _REPEAT.match(prompt.strip())
    if not match:
        raise UsageError(f"not a repeat prompt: {prompt!r}")
    letter, count = match.group(1), int(match.group(2))
    word = re.match(r"\s*([a-z]*)", completion).group(1)
    return 1.0 if word == letter * count else 0.0


def scorer(task: str):
    scorers = {"arithmetic": score_arithmetic, "repeat": score_repeat}
    if task not in scorers:
        raise UsageError(f"no rule-based scorer for task {task!r}; built-in tasks: {', '.join(TASKS)}")
    return scorers[task]


def multiple_choice_arithmetic(n: int, seed: int = 0, exclude: set[str] = frozenset()) -> list[dict]:
    """``n`` four-way multiple-choice sums (``question``, ``choices``, ``answer`` index) with
    distinct questions not in ``exclude``; the distractors are off by one or two, as the
    task's rejected answers are."""
    rng, seen, rows = random.Random(f"arithmetic-mc-{seed}"), set(exclude), []
    while len(rows) < n:
        if len(seen) >= 100 * 100:
            raise UsageError(f"fewer than {n} arithmetic questions are left outside the excluded ones")
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question = f"{a}+{b}="
        if question in seen:
            continue
        seen.add(question)
        wrong = [a + b + d for d in (-2, -1, 1, 2) if a + b + d >= 0]
        choices = [a + b, *rng.sample(wrong, 3)]
        rng.shuffle(choices)
        rows.append({"question": question, "choices": [f"{c}." for c in choices], "answer": choices.index(a + b)})
    return rows


def write_task_files(task: str, out_dir: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """``train.jsonl`` / ``test.jsonl`` in TRL's preference format, disjoint prompts."""
    rows = generate_task_data(task, n_train + n_test, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        write_jsonl(out_dir / f"{name}.jsonl", part)
    return out_dir
