"""What the length rules do to a tokenized split, counted: the pairs (or SFT rows) they drop,
the ones whose prompt or response they cut and by which rule, the rows that reach training,
and the token lengths of prompts and responses. A split that ends empty, or with fewer rows
than one batch, is bad input named in one line (:class:`~crrelu_llm.errors.DataError`).

The rules themselves (which rows TRL drops, where the collator cuts) are TRL's, applied here
after TRL tokenizes without a length limit so that what they remove can be counted; a test
pins them against TRL's own ``_prepare_dataset`` (``tests/test_accounting.py``).
"""

from __future__ import annotations

import logging
import statistics

from crrelu_llm.errors import DataError

logger = logging.getLogger("crrelu_llm.data")
WARN_SHARE = 0.05  # more than this dropped or cut: warned about, with the key to change


def _spread(values: list[int]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "median": float(statistics.median(ordered)),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "max": ordered[-1],
    }


def dpo_lengths(example: dict) -> dict:
    return {
        "prompt": len(example["prompt_ids"]),
        "response": max(len(example["chosen_ids"]), len(example["rejected_ids"])),
    }


def sft_lengths(example: dict) -> dict:
    """Prompt = the leading run of unscored tokens (labels -100, or completion_mask 0)."""
    ids = example["input_ids"]
    if "labels" in example:
        scored = [label != -100 for label in example["labels"]]
    elif "completion_mask" in example:
        scored = [bool(m) for m in example["completion_mask"]]
    else:
        scored = [True] * len(ids)
    start = scored.index(True) if True in scored else len(ids)
    return {"prompt": start, "response": len(ids) - start}


def account(
    lengths: list[dict],
    rows: int,
    split: str,
    unit: str,
    *,
    max_length,
    max_prompt_length=None,
    truncation_mode: str = "keep_start",
    drop_full_prompts: bool = True,
) -> dict:
    """The accounting of one split from each row's uncut prompt and (longest) response length.

    Without ``max_prompt_length`` (TRL's rule): with ``keep_start`` a row whose prompt alone
    fills ``max_length`` is dropped (``drop_full_prompts``), and a longer one loses the end of
    its responses; with ``keep_end`` its prompt's start. With ``max_prompt_length`` (the DPO
    reference code's rule) the prompt is cut to it first, then the responses."""
    counts = {"rows": rows, "dropped_by_length": 0, "prompt_cut": 0, "response_cut": 0}
    rule = None
    if max_length is not None:
        for n in lengths:
            prompt, response = n["prompt"], n["response"]
            if prompt + response <= max_length:
                continue
            if max_prompt_length:
                rule = f"max_prompt_length {max_prompt_length} then max_length {max_length}"
                if prompt > max_prompt_length:
                    counts["prompt_cut"] += 1
                    prompt = max_prompt_length
                counts["response_cut"] += prompt + response > max_length
            elif truncation_mode == "keep_end":
                rule = f"max_length {max_length}, keep_end (the prompt's start is cut)"
                counts["prompt_cut"] += 1
            elif drop_full_prompts and prompt >= max_length:
                rule = f"max_length {max_length}, keep_start"
                counts["dropped_by_length"] += 1
            else:
                rule = f"max_length {max_length}, keep_start"
                counts["response_cut"] += 1
    counts["reach_training" if split == "train" else "reach_evaluation"] = rows - counts["dropped_by_length"]
    counts.update(
        unit=unit,
        rule=rule,
        max_length=max_length,
        prompt_tokens=_spread([n["prompt"] for n in lengths]),
        response_tokens=_spread([n["response"] for n in lengths]),
    )
    return counts


def check(counts: dict, split: str, batch_size: int = 1, source: str = "") -> None:
    """Refuse a split the length rules emptied (or, with ``batch_size``, left smaller than one
    batch: pass it where a partial batch is dropped); warn when more than 5% of it was dropped or
    cut, naming the key to change."""
    kept = counts["rows"] - counts["dropped_by_length"]
    unit, where = counts["unit"], f"{source} [{split}]" if source else f"the {split} split"
    prompts = counts["prompt_tokens"] or {}
    if counts["rows"] and kept < max(1, batch_size):
        if counts["dropped_by_length"]:
            why = (
                f"all {counts['rows']} {unit}s dropped"
                if not kept
                else f"{counts['dropped_by_length']} of {counts['rows']} {unit}s dropped, {kept} left for a batch of "
                f"{batch_size}"
            )
            raise DataError(
                f"{where}: {why}: every dropped prompt is at least max_length {counts['max_length']} "
                f"tokens long (prompts: median {prompts.get('median'):g}, max {prompts.get('max')}); "
                "raise max_length, or set max_prompt_length below it to cut prompts instead of dropping "
                "the pairs"
            )
        raise DataError(
            f"{where}: {kept} {unit}(s), fewer than one batch of {batch_size} with dataloader_drop_last: "
            "give more data, lower per_device_train_batch_size or set dataloader_drop_last: false"
        )
    changed = counts["dropped_by_length"] + max(counts["prompt_cut"], counts["response_cut"])
    if counts["rows"] and changed / counts["rows"] > WARN_SHARE:
        logger.warning(
            "%s: %d of %d %ss dropped or cut by the length rule (%s): raise max_length, or set "
            "max_prompt_length / prompt_truncation_mode to choose what is cut",
            where,
            changed,
            counts["rows"],
            unit,
            counts["rule"],
        )


def line(split: str, counts: dict) -> str:
    """One console line for a split."""
    reach = counts.get("reach_training", counts.get("reach_evaluation"))
    prompts, responses = counts["prompt_tokens"] or {}, counts["response_tokens"] or {}
    return (
        f"data [{split}]: {counts['rows']} {counts['unit']}s, {counts['dropped_by_length']} dropped by length, "
        f"{counts['prompt_cut']} prompts and {counts['response_cut']} responses cut"
        + (f" ({counts['rule']})" if counts["rule"] else "")
        + f", {reach} reach "
        + ("training" if split == "train" else "evaluation")
        + f"; tokens median/p95/max: prompt {_three(prompts)}, response {_three(responses)}"
    )


def _three(spread: dict) -> str:
    return "/".join(f"{spread[k]:g}" for k in ("median", "p95", "max")) if spread else "-"


def truncate_like_reference(
    prompt: list, responses: list[list], max_length: int, max_prompt_length: int, mode: str = "keep_end"
) -> tuple[list, list[list]]:
    """Token ids cut as the DPO reference code cuts them: when prompt + longest response exceed
    ``max_length``, the prompt keeps ``max_prompt_length`` tokens (its end with ``keep_end``,
    its start with ``keep_start``); if still too long, each response keeps its first
    ``max_length - len(prompt)`` tokens."""
    longest = max((len(r) for r in responses), default=0)
    if len(prompt) + longest > max_length:
        prompt = prompt[-max_prompt_length:] if mode == "keep_end" else prompt[:max_prompt_length]
    if len(prompt) + longest > max_length:
        responses = [r[: max_length - len(prompt)] for r in responses]
    return prompt, responses
