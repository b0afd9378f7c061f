"""The prompt sets the field reports on, as data, and reference outputs that stand in for a baseline.

Prompt sets (one prompt per row; ``data_format`` names one, or ``auto`` detects it from the first
row):

- ``prompt``: TRL's prompt-only format, ``{"prompt": "..."}`` or a list of chat messages;
- ``alpaca_eval``: AlpacaEval's rows, ``instruction`` (and ``output``, ``generator``, ``dataset``
  where the file holds reference outputs too);
- ``arena_hard``: Arena-Hard's ``question.jsonl``, ``uid`` (or ``question_id``), ``category``
  and ``turns`` (the first turn's ``content`` is the prompt);
- preference data (``prompt``/``chosen``/``rejected``, HH, SHP, UltraFeedback): its prompts.

Reference outputs (:func:`load_outputs`): AlpacaEval's ``[{"instruction", "output",
"generator"}]`` (a JSON list or JSONL), matched to prompts by instruction, or an Arena-Hard answer
file (``uid``, ``model``, and the answer in ``messages`` or ``choices[0].turns[0].content``),
matched by uid. :func:`write_model_outputs` writes AlpacaEval's ``model_outputs`` format, which
``alpaca_eval --model_outputs`` reads as it is.

Example::

    >>> from crrelu_llm.data.prompts import detect_format
    >>> detect_format({"instruction": "Name a colour.", "output": "Red.", "generator": "gpt4_turbo"})
    'alpaca_eval'
    >>> detect_format({"uid": "q1", "category": "arena-hard-v0.1", "turns": [{"content": "Hi"}]})
    'arena_hard'
"""

from __future__ import annotations

import json
from pathlib import Path

from crrelu_llm.errors import DataError
from crrelu_llm.files import write_json

PROMPT_FORMATS = ("prompt", "alpaca_eval", "arena_hard")


def detect_format(row: dict) -> str:
    """``alpaca_eval``, ``arena_hard``, ``prompt``, or ``preference`` (a row with responses to compare)."""
    if "instruction" in row:
        return "alpaca_eval"
    if "turns" in row and ("uid" in row or "question_id" in row):
        return "arena_hard"
    if "prompt" in row and not ({"chosen", "rejected"} & set(row)):
        return "prompt"
    return "preference"


def read_rows(source: str, split: str | None) -> list[dict]:
    path = Path(source)
    if path.is_file():
        text = path.read_text()
        if path.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{source}: row {number} is not JSON ({err.msg}): fix or remove it") from None
        return rows
    from datasets import load_dataset

    try:
        return list(load_dataset(source, split=split or "train"))
    except FileNotFoundError:
        raise DataError(f"{source}: no such file, and no dataset of that name could be loaded") from None


def _text(value, where: str) -> str | list:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value  # chat messages
    raise DataError(f"{where} must be a non-empty string (or a list of chat messages), got {value!r:.60}")


def load_prompts(source: str, data_format: str = "auto", split: str | None = None, limit: int | None = None):
    """``(rows, summary)``: each row ``{"id", "prompt", "dataset", "category", "reference",
    "generator"}`` (the last two where the file holds a reference output); a bad row is refused
    in one line naming the row and the field."""
    rows = read_rows(source, split)
    if not rows:
        raise DataError(f"{source} is empty: it holds no prompts")
    found = detect_format(rows[0]) if data_format == "auto" else data_format
    if found not in PROMPT_FORMATS:
        raise DataError(
            f"{source} holds {found} rows, not a prompt set: give prompt-only data "
            f"({', '.join(PROMPT_FORMATS)}) or a --data-format that names it"
        )
    out = []
    for number, row in enumerate(rows[:limit] if limit else rows, 1):
        where = f"{source}: row {number}"
        if not isinstance(row, dict):
            raise DataError(f"{where} is not a JSON object")
        if found == "alpaca_eval":
            if "instruction" not in row:
                raise DataError(f"{where} has no 'instruction' (AlpacaEval rows need one)")
            prompt = _text(row["instruction"], f"{where}: 'instruction'")
            key = row["instruction"]
        elif found == "arena_hard":
            uid = row.get("uid", row.get("question_id"))
            turns = row.get("turns")
            if uid is None:
                raise DataError(f"{where} has no 'uid' (Arena-Hard questions need one)")
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict) or "content" not in turns[0]:
                raise DataError(f"{where}: 'turns' must be a list whose first entry has a 'content'")
            prompt, key = _text(turns[0]["content"], f"{where}: 'turns[0].content'"), str(uid)
        else:
            if "prompt" not in row:
                raise DataError(f"{where} has no 'prompt' (TRL's prompt-only rows need one)")
            prompt = _text(row["prompt"], f"{where}: 'prompt'")
            key = row.get("id", str(number))
        reference = row.get("output") if found == "alpaca_eval" else None
        out.append(
            {
                "id": key,
                "prompt": prompt,
                "dataset": row.get("dataset"),
                "category": row.get("category"),
                "reference": reference,
                "generator": row.get("generator") if reference is not None else None,
            }
        )
    return out, {"source": str(source), "format": found, "rows": len(rows), "used": len(out)}


def _answer(row: dict, where: str) -> str:
    """An Arena-Hard answer row's text: the assistant's last message, or its first choice's turn."""
    for message in reversed(row.get("messages") or []):
        if message.get("role") == "assistant":
            content = message.get("content")
            return content.get("answer") if isinstance(content, dict) else content
    choices = row.get("choices") or []
    if choices and choices[0].get("turns"):
        return choices[0]["turns"][0]["content"]
    raise DataError(f"{where} holds no answer (an assistant message, or choices[0].turns[0].content)")


def load_outputs(path) -> tuple[dict[str, str], str]:
    """``({prompt id: output}, generator)`` from a reference-output file (see the module docstring)."""
    rows = read_rows(str(path), None)
    if not rows:
        raise DataError(f"{path} is empty: it holds no outputs")
    outputs, generators = {}, set()
    for number, row in enumerate(rows, 1):
        where = f"{path}: row {number}"
        if "instruction" in row:
            if "output" not in row:
                raise DataError(f"{where} has no 'output' (AlpacaEval outputs need instruction and output)")
            outputs[row["instruction"]] = row["output"]
            generators.add(str(row.get("generator") or Path(path).stem))
        elif "uid" in row or "question_id" in row:
            outputs[str(row.get("uid", row.get("question_id")))] = _answer(row, where)
            generators.add(str(row.get("model") or row.get("model_id") or Path(path).stem))
        else:
            raise DataError(
                f"{where} is neither an AlpacaEval output (instruction, output) nor an Arena-Hard answer (uid)"
            )
    return outputs, ", ".join(sorted(generators))


def baseline_outputs(rows: list[dict], path) -> tuple[list[str], str]:
    """Each prompt's reference output from ``path`` (in ``rows``' order) and its generator; a
    prompt without one is refused, naming it."""
    outputs, generator = load_outputs(path)
    missing = [r["id"] for r in rows if r["id"] not in outputs]
    if missing:
        raise DataError(
            f"{path} has no output for {len(missing)} of {len(rows)} prompts (the first: {str(missing[0])[:60]!r}): "
            "give the outputs of the same prompt set"
        )
    return [outputs[r["id"]] for r in rows], generator


def write_model_outputs(path, rows: list[dict], outputs: list[str], generator: str) -> None:
    """AlpacaEval's ``model_outputs`` format: ``[{"instruction", "output", "generator", "dataset"}]``."""
    write_json(
        path,
        [
            {
                "instruction": r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"],
                "output": output,
                "generator": generator,
                "dataset": r.get("dataset") or "crrelu-llm",
            }
            for r, output in zip(rows, outputs, strict=True)
        ],
    )
