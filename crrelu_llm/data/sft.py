"""SFT data: a given SFT dataset (text, prompt/completion or messages), the chosen responses of
preference pairs, or (SHP, ``sft_target: best_scored``) the best-scored response per prompt."""

from __future__ import annotations

from datasets import Dataset

from crrelu_llm.data.preference import (
    DataArguments,
    convert_rows,
    convert_shp,
    cut_splits,
    detect_format,
    load_preference_splits,
    load_raw,
    row_problem,
    score_ratio_ok,
    split_summary,
)
from crrelu_llm.errors import DataError, RecipeError


def preference_to_sft(dataset: Dataset) -> Dataset:
    """Prompt + chosen response as TRL prompt-completion SFT examples."""
    return dataset.map(
        lambda row: {"prompt": row["prompt"], "completion": row["chosen"]},
        remove_columns=dataset.column_names,
        desc="Building SFT examples",
    )


def best_scored_responses(raw: Dataset, source: str, split: str, args: DataArguments) -> Dataset:
    """Per SHP prompt, its best-scored response among the pairs that pass the score-ratio filter,
    as prompt-completion SFT examples (the DPO reference code's SFT target for SHP)."""
    pairs = convert_rows(raw, "shp", source, split, args)  # validated and filtered, in the raw rows' order
    kept = raw.filter(
        lambda row: score_ratio_ok(row, args.shp_min_score_ratio) and row_problem(convert_shp, row) is None,
        load_from_cache_file=False,
        desc=f"Scoring {source} [{split}] responses",
    )
    best: dict[str, tuple[float, str]] = {}
    for pair, a, b in zip(pairs, zip(kept["human_ref_A"], kept["score_A"]), zip(kept["human_ref_B"], kept["score_B"])):
        for text, score in (a, b):
            if not isinstance(score, (int, float)):
                raise DataError(
                    f"{source} [{split}]: a row has score {score!r}; sft_target: best_scored needs numeric "
                    "score_A and score_B in every row"
                )
            if pair["prompt"] not in best or score > best[pair["prompt"]][0]:
                best[pair["prompt"]] = (score, " " + text)
    return Dataset.from_list([{"prompt": prompt, "completion": text} for prompt, (_, text) in best.items()])


def _best_scored_splits(args: DataArguments) -> tuple[Dataset, Dataset, dict]:
    raw, source = load_raw(args.dataset_name, args.dataset_config)
    first = next(iter(raw.values()))
    fmt = detect_format(first.column_names, args.dataset_name) if args.dataset_format == "auto" else args.dataset_format
    if fmt != "shp":
        raise RecipeError(
            f"sft_target: best_scored needs scored responses (SHP format); {source} is {fmt}: use sft_target: chosen"
        )
    train_split, test_split = args.dataset_train_split or "train", args.dataset_test_split or "test"
    if train_split not in raw:
        raise DataError(f"{source}: no split {train_split!r}; it has {list(raw)} (set dataset_train_split)")
    train = best_scored_responses(raw[train_split], source, train_split, args)
    evaluation = best_scored_responses(raw[test_split], source, test_split, args) if test_split in raw else None
    train, evaluation, test_split = cut_splits(train, evaluation, args, train_split, test_split, source)
    return (
        train,
        evaluation,
        split_summary(
            source, fmt, train_split, test_split, train, evaluation, sft_from="best-scored response per prompt"
        ),
    )


def _sft_columns(columns: set) -> bool:
    return {"text"} <= columns or {"prompt", "completion"} <= columns or {"messages"} <= columns


def load_sft_splits(args: DataArguments) -> tuple[Dataset, Dataset, dict]:
    """SFT data: a given SFT dataset, the chosen responses of the preference pairs, or (SHP,
    ``sft_target: best_scored``) the best-scored response per prompt."""
    if not args.sft_dataset_name and args.sft_target == "best_scored":
        return _best_scored_splits(args)
    if args.sft_dataset_name:
        raw, source = load_raw(args.sft_dataset_name)
    else:  # dataset_name: SFT data as it is (as `trl sft` reads it), or the chosen responses of preference pairs
        raw, source = load_raw(args.dataset_name, args.dataset_config)
        columns = set(next(iter(raw.values())).column_names)
        if not _sft_columns(columns) or {"chosen", "rejected"} <= columns:
            train, evaluation, summary = load_preference_splits(args)
            return preference_to_sft(train), preference_to_sft(evaluation), {**summary, "sft_from": "chosen responses"}
    split = args.dataset_train_split or "train"
    if split not in raw:
        raise DataError(f"{source}: no split {split!r}; it has {list(raw)}")
    columns = set(raw[split].column_names)
    if not _sft_columns(columns):
        raise DataError(
            f"{source}: SFT data needs a 'text', 'prompt'+'completion' or 'messages' column; has {sorted(columns)}"
        )
    fmt = "sft-messages" if "messages" in columns else "sft-text" if "text" in columns else "sft-prompt-completion"
    test, read = args.dataset_test_split or "test", {}
    train = convert_rows(raw[split], fmt, source, split, args, read)
    evaluation = convert_rows(raw[test], fmt, source, test, args, read) if test in raw else None
    data, evaluation, _ = cut_splits(train, evaluation, args, split, test, source)
    return (
        data,
        evaluation,
        {"source": source, "format": fmt, "train_rows": len(data), "eval_rows": len(evaluation), "read": read},
    )
