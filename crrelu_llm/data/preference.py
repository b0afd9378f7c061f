"""Preference and SFT data: hub datasets by name, local files, one validated format out.

Everything becomes TRL's preference format, ``prompt`` / ``chosen`` / ``rejected``, either
as strings (standard) or as lists of ``{"role", "content"}`` messages (conversational):

- Anthropic HH (``Anthropic/hh-rlhf``, or files with its ``chosen``/``rejected`` transcripts):
  the shared conversation up to the last ``"\\n\\nAssistant:"`` becomes the prompt.
- Stanford SHP (``stanfordnlp/SHP``, or files with ``history``, ``human_ref_A``/``B``,
  ``labels``, ``score_A``/``B``): the preferred reply (``labels``) is chosen; optionally only
  pairs whose score ratio is at least ``shp_min_score_ratio`` (the DPO paper used 2).
- UltraFeedback binarized (``HuggingFaceH4/ultrafeedback_binarized``,
  ``trl-lib/ultrafeedback_binarized``): conversational; the last assistant turn is the response.
- Local ``.json``/``.jsonl``/``.parquet`` files (or a directory of them) already in TRL's
  standard or conversational preference format, or in the HH/SHP layouts above.

Malformed rows (a missing column, an empty or non-string field, chosen == rejected) stop with an
error naming the file, the row and the column, or are dropped and counted when
``drop_invalid_rows`` is set. SFT data is the prompt + chosen response of the same pairs, or a
given SFT dataset (``text``, ``prompt``/``completion`` or ``messages``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from crrelu_llm.errors import DataError, MalformedRowError, RecipeError

logger = logging.getLogger(__name__)

HH_ASSISTANT = "\n\nAssistant:"
FORMATS = ("auto", "hh", "shp", "ultrafeedback", "preference")
_KNOWN_HUB_FORMATS = {
    "anthropic/hh-rlhf": "hh",
    "stanfordnlp/shp": "shp",
    "huggingfaceh4/ultrafeedback_binarized": "ultrafeedback",
    "trl-lib/ultrafeedback_binarized": "ultrafeedback",
}
_DEFAULT_SPLITS = {"ultrafeedback": ("train_prefs", "test_prefs")}
_LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".json.gz": "json", ".jsonl.gz": "json", ".parquet": "parquet"}


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


SFT_TARGETS = ("chosen", "best_scored")


@dataclass
class DataArguments:
    """Where the data comes from and how it is cut (recipe keys of crrelu-llm)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id (Anthropic/hh-rlhf, stanfordnlp/SHP, HuggingFaceH4/ultrafeedback_binarized) "
            "or a local .json/.jsonl/.parquet file or directory."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (subset) name."})
    dataset_format: str = field(
        default="auto", metadata={"help": "auto, hh, shp, ultrafeedback or preference (TRL's own format)."}
    )
    dataset_train_split: str | None = field(default=None, metadata={"help": "Training split (default: train)."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Evaluation split (default: test). If absent, eval_fraction is held out."}
    )
    eval_fraction: float = field(
        default=0.05, metadata={"help": "Share of the training split held out when there is no evaluation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep at most this many training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep at most this many evaluation pairs."})
    shp_min_score_ratio: float | None = field(
        default=None, metadata={"help": "SHP: keep pairs whose score ratio is at least this (the DPO paper used 2)."}
    )
    drop_invalid_rows: bool = field(
        default=False, metadata={"help": "Drop (and count) malformed rows instead of stopping at the first one."}
    )
    sft_dataset_name: str | None = field(
        default=None,
        metadata={"help": "SFT data (text, prompt/completion or messages). Default: prompt + chosen of the pairs."},
    )
    sft_target: str = field(
        default="chosen",
        metadata={
            "help": "SFT examples from preference data: 'chosen' (every pair's chosen response) or 'best_scored' "
            "(SHP: per prompt, the best-scored response among its pairs that pass the score-ratio filter, as "
            "the DPO reference code does)."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "Seed for the held-out split and sample limits."})

    def __post_init__(self):
        if self.dataset_format not in FORMATS:
            raise RecipeError(f"dataset_format must be one of {', '.join(FORMATS)}, got {self.dataset_format!r}")
        if not 0 < self.eval_fraction < 1:
            raise RecipeError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}")
        if self.sft_target not in SFT_TARGETS:
            raise RecipeError(f"sft_target must be one of {', '.join(SFT_TARGETS)}, got {self.sft_target!r}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{name} must be a positive number of rows or null, got {value}")


# --------------------------------------------------------------------------- loading


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        files = [path]
    else:
        # a file or folder whose name starts with "_" or "." is not data (a record beside it: _pairs.json)
        files = sorted(
            p
            for p in path.rglob("*")
            if _suffix(p) in _LOCAL_SUFFIXES
            and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
        )
    if not files:
        raise DataError(f"{path}: no .json, .jsonl (optionally .gz) or .parquet files found")
    kinds = {_LOCAL_SUFFIXES.get(_suffix(p)) for p in files}
    if None in kinds or len(kinds) > 1:
        raise DataError(f"{path}: expected .json/.jsonl or .parquet files (one kind), found {[p.name for p in files]}")
    return files


def load_raw(name: str, config: str | None = None) -> tuple[DatasetDict, str]:
    """The dataset as stored (every split), and a label for error messages."""
    path = Path(name).expanduser()
    if path.exists():
        files = _local_files(path)
        builder = _LOCAL_SUFFIXES[_suffix(files[0])]
        by_split: dict[str, list[str]] = {}
        for f in files:  # files named like train*.jsonl / test*.jsonl are splits; others are train
            split = next((s for s in ("train", "test", "validation", "eval") if f.stem.startswith(s)), "train")
            by_split.setdefault(split, []).append(str(f))
        empty = [f for f in files if f.stat().st_size == 0]
        if empty:
            raise DataError(
                f"{empty[0]} is empty: it needs one preference pair per line (JSONL) or a JSON/Parquet table"
            )
        try:
            return load_dataset(builder, data_files=by_split), str(path)
        except Exception as err:  # noqa: BLE001 - arrow/json errors of many kinds; ours names the file
            raise DataError(f"could not read {path} as {builder}: {type(err).__name__}: {err}") from err
    try:
        return load_dataset(name, config), name
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds; ours names the input
        raise DataError(
            f"Could not load dataset {name!r}: it is not a local file or directory, and the hub load failed "
            f"({type(err).__name__}: {err})"
        ) from err


def detect_format(columns: list[str], name: str = "") -> str:
    known = _KNOWN_HUB_FORMATS.get(name.lower())
    if known:
        return known
    cols = set(columns)
    if {"history", "human_ref_A", "human_ref_B", "labels"} <= cols:
        return "shp"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "preference"
    if {"chosen", "rejected"} <= cols:
        return "hh"
    raise DataError(
        f"{name or 'dataset'}: cannot tell the format from columns {sorted(cols)}; expected prompt/chosen/rejected "
        "(TRL preference), chosen/rejected transcripts (Anthropic HH) or history/human_ref_A/human_ref_B/labels (SHP)"
    )


# --------------------------------------------------------------------------- conversion of one row


class RowProblem(Exception):
    """Raised by a row converter: ``column`` and what is wrong with it (the caller adds the row)."""

    def __init__(self, column: str, problem: str = "is missing"):
        super().__init__(column, problem)
        self.column, self.problem = column, problem


def _text(row: dict, column: str) -> str:
    value = row.get(column)
    if not isinstance(value, str):
        raise RowProblem(column, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem(column, "is empty")
    return value


def convert_hh(row: dict) -> dict:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RowProblem("chosen", f"has no {HH_ASSISTANT!r} turn")
    prompt = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt):
        raise RowProblem("rejected", "does not share the chosen transcript's conversation prefix")
    return {"prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :]}


def convert_shp(row: dict) -> dict:
    history, a, b = _text(row, "history"), _text(row, "human_ref_A"), _text(row, "human_ref_B")
    label = row.get("labels")
    if label not in (0, 1):
        raise RowProblem("labels", f"must be 0 or 1, got {label!r}")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    return {"prompt": f"\n\nHuman: {history}{HH_ASSISTANT}", "chosen": " " + chosen, "rejected": " " + rejected}


def _messages(value, column: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowProblem(column, "must be a non-empty list of messages")
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowProblem(column, "holds a message without string 'role' and 'content'")
        if not m["content"].strip():
            raise RowProblem(column, f"holds an empty {m['role']} message")
    return value


def convert_ultrafeedback(row: dict) -> dict:
    chosen, rejected = _messages(row.get("chosen"), "chosen"), _messages(row.get("rejected"), "rejected")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise RowProblem("chosen", "must end with an assistant message")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def convert_preference(row: dict) -> dict:
    if isinstance(row.get("chosen"), list):
        prompt = row.get("prompt")
        out = {
            "prompt": _messages(prompt, "prompt")
            if isinstance(prompt, list)
            else [{"role": "user", "content": _text(row, "prompt")}],
            "chosen": _messages(row.get("chosen"), "chosen"),
            "rejected": _messages(row.get("rejected"), "rejected"),
        }
    else:
        out = {"prompt": _text(row, "prompt"), "chosen": _text(row, "chosen"), "rejected": _text(row, "rejected")}
    return out


def convert_sft_text(row: dict) -> dict:
    return {"text": _text(row, "text")}


def convert_sft_prompt_completion(row: dict) -> dict:
    if isinstance(row.get("completion"), list) or isinstance(row.get("prompt"), list):
        return {
            "prompt": _messages(row.get("prompt"), "prompt"),
            "completion": _messages(row.get("completion"), "completion"),
        }
    return {"prompt": _text(row, "prompt"), "completion": _text(row, "completion")}


def convert_sft_messages(row: dict) -> dict:
    return {"messages": _messages(row.get("messages"), "messages")}


CONVERTERS = {
    "hh": convert_hh,
    "shp": convert_shp,
    "ultrafeedback": convert_ultrafeedback,
    "preference": convert_preference,
    "sft-text": convert_sft_text,
    "sft-prompt-completion": convert_sft_prompt_completion,
    "sft-messages": convert_sft_messages,
}


def score_ratio_ok(row: dict, min_ratio: float | None) -> bool:
    if min_ratio is None:
        return True
    a, b = row.get("score_A"), row.get("score_B")
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or min(a, b) <= 0:
        return False
    return max(a, b) / min(a, b) >= min_ratio


def row_problem(convert, row: dict) -> tuple[str, str] | None:
    """(column, problem) of a row that cannot be converted, else None."""
    try:
        out = convert(row)
        if "chosen" in out and out["chosen"] == out["rejected"]:
            raise RowProblem("chosen", "is identical to rejected")
    except RowProblem as err:
        return err.column, err.problem
    return None


def convert_rows(
    raw: Dataset, fmt: str, source: str, split: str, args: DataArguments, counts: dict | None = None
) -> Dataset:
    """Convert and validate every row (``Dataset.filter`` then ``Dataset.map``); a malformed row
    stops with a :class:`MalformedRowError` naming source, split, row and column, or is dropped
    and counted with ``drop_invalid_rows``. ``counts`` (if given) receives, under ``split``, the
    rows read, dropped as malformed and filtered by score ratio."""
    convert = CONVERTERS[fmt]
    ratio = args.shp_min_score_ratio if fmt == "shp" else None
    filtered = 0

    def usable(row: dict, index: int) -> bool:
        nonlocal filtered
        if not score_ratio_ok(row, ratio):
            filtered += 1
            return False
        problem = row_problem(convert, row)
        if problem is None:
            return True
        if args.drop_invalid_rows:
            return False
        raise MalformedRowError(source, split, index, *problem)

    # not from a cache, and in this process: the counts above come from running `usable`
    kept = raw.filter(usable, with_indices=True, load_from_cache_file=False, desc=f"Checking {source} [{split}]")
    dropped = len(raw) - len(kept) - filtered
    if counts is not None:
        counts[split] = {"rows_read": len(raw), "dropped_malformed": dropped, "filtered_score_ratio": filtered}
    if dropped or filtered:
        logger.warning(
            "%s [%s]: dropped %d malformed row(s), filtered %d by score ratio", source, split, dropped, filtered
        )
    if not len(kept):
        raise DataError(
            f"{source} [{split}]: no usable rows (dropped {dropped} malformed, filtered {filtered} by "
            f"shp_min_score_ratio {ratio}: lower it)"
            if filtered
            else f"{source} [{split}]: no usable rows ({dropped} malformed, dropped by drop_invalid_rows)"
        )
    dataset = kept.map(
        convert, remove_columns=kept.column_names, load_from_cache_file=False, desc=f"Converting {source} [{split}]"
    )
    dataset.info.description = f"dropped={dropped} filtered={filtered}"
    return dataset


def cut_splits(
    train: Dataset,
    evaluation: Dataset | None,
    args: DataArguments,
    train_split: str,
    test_split: str | None,
    source: str = "the data",
) -> tuple[Dataset, Dataset, str]:
    """The evaluation split, or a seeded ``eval_fraction`` of train held out; then the sample
    limits (training rows: a seeded random subset; evaluation rows: the first ones)."""
    if evaluation is None:
        n = len(train)
        held = math.ceil(args.eval_fraction * n)  # datasets' own rounding of test_size
        if held < 1 or n - held < 1:
            raise DataError(
                f"{source}: {n} row(s) in split {train_split!r} cannot be split with eval_fraction "
                f"{args.eval_fraction:g} ({held} held out, {n - held} left to train): add rows, or give "
                "an evaluation split (a test*.jsonl file beside it, or dataset_test_split)"
            )
        if held < 10:
            logger.warning(
                "%s: the evaluation split holds only %d row(s) (eval_fraction %g of %d): its metrics are "
                "noise; add rows or give an evaluation split",
                source,
                held,
                args.eval_fraction,
                n,
            )
        parts = train.train_test_split(test_size=args.eval_fraction, seed=args.split_seed)
        train, evaluation = parts["train"], parts["test"]
        test_split = f"{args.eval_fraction:g} of {train_split}"
    if args.max_train_samples:
        train = train.shuffle(seed=args.split_seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation, test_split


# --------------------------------------------------------------------------- public entry points


def load_preference_splits(args: DataArguments) -> tuple[Dataset, Dataset, dict]:
    """Training and evaluation preference pairs, plus a summary for the run's outputs."""
    if not args.dataset_name:
        raise DataError("dataset_name is required: a hub id or a local .json/.jsonl/.parquet file or directory")
    raw, source = load_raw(args.dataset_name, args.dataset_config)
    first = next(iter(raw.values()))
    fmt = detect_format(first.column_names, args.dataset_name) if args.dataset_format == "auto" else args.dataset_format
    default_train, default_test = _DEFAULT_SPLITS.get(fmt, ("train", "test"))
    train_split = args.dataset_train_split or default_train
    test_split = args.dataset_test_split or default_test
    if train_split not in raw:
        raise DataError(f"{source}: no split {train_split!r}; it has {list(raw)} (set dataset_train_split)")
    read: dict = {}
    train = convert_rows(raw[train_split], fmt, source, train_split, args, read)
    if test_split in raw:
        evaluation = convert_rows(raw[test_split], fmt, source, test_split, args, read)
    elif args.dataset_test_split:
        raise DataError(f"{source}: no split {test_split!r}; it has {list(raw)}")
    else:
        evaluation = None
    train, evaluation, test_split = cut_splits(train, evaluation, args, train_split, test_split, source)
    return train, evaluation, split_summary(source, fmt, train_split, test_split, train, evaluation, read=read)


def split_summary(source: str, fmt: str, train_split: str, eval_split: str, train, evaluation, **more) -> dict:
    """What ``data_summary.json`` records of the splits a run read (``more``: what else it says)."""
    return {
        "source": source,
        "format": fmt,
        "train_split": train_split,
        "eval_split": eval_split,
        "train_rows": len(train),
        "eval_rows": len(evaluation),
        **more,
    }
