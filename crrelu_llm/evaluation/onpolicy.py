"""On-policy preference pairs: sample K responses per prompt from a model, score them with a
judge, and keep the best against the worst (the recipe of SimPO's on-policy sets: 5 samples
per prompt from the SFT model, scored by a reward model).

    from crrelu_llm.evaluation.onpolicy import PairSettings, run_pairs
    run_pairs("runs/gelu/sft", "data/", "rule:arithmetic", "runs/gelu/pairs", PairSettings(num_samples=4))

Samples come from the same generation code as ``eval winrate``
(:func:`crrelu_llm.evaluation.generation.generate_samples`): a prompt's K samples in one
``generate`` call (``num_return_sequences``), seeded per batch of prompts. Scoring:

- pointwise judges (``rule:<task>``, ``reward-model:<id>``) score each sample alone;
- a pairwise judge (``openai:<model>@<url>``) compares every two samples of a prompt, in both
  orders (an order-dependent verdict is a tie), and a sample's score is its wins minus its
  losses over the K - 1 others (a round robin, Copeland's rule): K (K - 1) / 2 pairs a prompt.

Chosen is the highest-scored sample, rejected the lowest (the first of equals, in sample
order). A prompt whose non-empty samples all score the same, or that has fewer than two
non-empty samples, is dropped and counted. The output directory is a preference dataset in
the project's format: ``train.jsonl`` (prompt, chosen, rejected), ``test.jsonl`` (the source's
held-out pairs, untouched, so that evaluation stays comparable across arms), ``_samples.jsonl``
(every sample with its score), ``_pairs.json``, the record: model, judge, K, sampling
settings, seed, data and counts (prompts, pairs kept, dropped, score spread), and a pairwise
judge's verdict cache ``_judge/``. Files and folders named with a leading ``_`` are not read as
data, so the directory is a dataset as it is. The record is written last: a directory without
it is unfinished. Run again with the same inputs, it has nothing to do; with other inputs, it is
refused, naming what differs.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

from crrelu_llm.errors import EvaluationError, OutputError, UsageError
from crrelu_llm.files import check_writable, read_json, write_json, write_jsonl

logger = logging.getLogger("crrelu_llm.onpolicy")
RECORD = "_pairs.json"  # "_": not read as data by crrelu_llm.data.preference


@dataclass
class PairSettings:
    """How the samples are drawn and how many prompts are used."""

    num_samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = 128
    batch_size: int = 8
    num_prompts: int | None = None  # the first N prompts of the training split (None: all)
    chat_template: bool = False

    def check(self) -> None:
        if self.num_samples < 2:
            raise UsageError(f"--num-samples {self.num_samples}: a pair needs at least 2 samples per prompt")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise UsageError(
                f"--temperature must be > 0 and --top-p in (0, 1]; got {self.temperature:g} and {self.top_p:g}"
            )
        if self.num_prompts is not None and self.num_prompts < 1:
            raise UsageError(f"--num-prompts {self.num_prompts}: give at least 1, or leave it out for every prompt")


def record_file(out) -> Path:
    return Path(out) / RECORD


def _inputs(model: str, data: str, judge: str, settings: PairSettings, split: str | None) -> dict:
    from crrelu_llm.evaluation.evaluate import weights_stamp

    return {
        "model": model,
        "weights": weights_stamp(model),
        "data": data,
        "split": split,
        "judge": judge,
        "settings": dataclasses.asdict(settings),
        "sampling": "K per prompt in one generate call (num_return_sequences)",  # how the samples were drawn
    }


def _prompts_and_test(data: str, data_format: str, split: str | None, limit: int | None):
    """The prompts to sample for (the training split, or ``split``), and the held-out pairs to
    copy beside them (None when the source has none: a file of prompts alone)."""
    from crrelu_llm.data.preference import DataArguments, load_preference_splits, load_raw
    from crrelu_llm.data.prompts import PROMPT_FORMATS, detect_format, load_prompts

    raw, source = load_raw(data)
    columns = next(iter(raw.values())).column_names
    named = data_format if data_format in PROMPT_FORMATS else detect_format(dict.fromkeys(columns))
    if named in ("alpaca_eval", "arena_hard"):  # the field's prompt sets: their instructions or first turns
        rows, _ = load_prompts(data, named, split, limit)
        return [r["prompt"] for r in rows], None
    if "prompt" in columns and not {"chosen", "rejected"} & set(columns):  # a file of prompts
        rows = raw[split or "train"] if (split or "train") in raw else next(iter(raw.values()))
        prompts = list(rows["prompt"])
        return prompts[:limit] if limit else prompts, None
    train, test, _ = load_preference_splits(
        DataArguments(dataset_name=data, dataset_format=data_format, dataset_train_split=split)
    )
    prompts = list(train["prompt"])
    return prompts[:limit] if limit else prompts, [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in test]


def score_samples(judge, prompts: list, samples: list[list[str]]) -> list[list[float]]:
    """One score per sample: the judge's own score for a pointwise judge, wins minus losses in a
    round robin of every two samples (both orders: :class:`~crrelu_llm.evaluation.judges.PairwiseLLMJudge`)
    for a pairwise one."""
    k = len(samples[0])
    if hasattr(judge, "scores"):
        flat_prompts = [p for p in prompts for _ in range(k)]
        flat = judge.scores(flat_prompts, [s for row in samples for s in row])
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
    rounds = [(i, j) for i in range(k) for j in range(i + 1, k)]
    outcomes = judge.judge(
        [p for p in prompts for _ in rounds], [(row[i], row[j]) for row in samples for i, j in rounds]
    )
    scores = [[0.0] * k for _ in prompts]
    for index, outcome in enumerate(outcomes):
        row, which = divmod(index, len(rounds))
        i, j = rounds[which]
        if outcome.winner is not None:
            winner, loser = (i, j) if outcome.winner == 0 else (j, i)
            scores[row][winner] += 1
            scores[row][loser] -= 1
    return scores


def select_pairs(prompts: list, samples: list[list[str]], scores: list[list[float]]) -> tuple[list[dict], dict]:
    """Best against worst per prompt, over its non-empty samples; the counts of what was dropped."""
    rows, spreads, tied, too_few = [], [], 0, 0
    for prompt, texts, values in zip(prompts, samples, scores, strict=True):
        candidates = [(v, i) for i, (t, v) in enumerate(zip(texts, values)) if t.strip()]
        if len(candidates) < 2:
            too_few += 1
            continue
        best = max(candidates, key=lambda c: (c[0], -c[1]))
        worst = min(candidates, key=lambda c: (c[0], c[1]))
        if best[0] == worst[0]:
            tied += 1
            continue
        rows.append({"prompt": prompt, "chosen": texts[best[1]], "rejected": texts[worst[1]]})
        spreads.append(best[0] - worst[0])
    spread = (
        {
            "mean": statistics.fmean(spreads),
            "median": statistics.median(spreads),
            "min": min(spreads),
            "max": max(spreads),
        }
        if spreads
        else None
    )
    return rows, {
        "prompts": len(prompts),
        "pairs": len(rows),
        "dropped_all_tied": tied,
        "dropped_fewer_than_two_nonempty": too_few,
        "score_spread": spread,
    }


def _check_out(out: Path, inputs: dict) -> dict | None:
    """The finished record when ``out`` already holds this very run; None when ``out`` is free."""
    record = record_file(out)
    if record.exists():
        old = read_json(record)
        if old.get("inputs") == inputs:
            return old
        differ = sorted(k for k in set(inputs) | set(old.get("inputs", {})) if inputs.get(k) != old["inputs"].get(k))
        raise OutputError(
            f"{out} holds pairs made from other inputs ({', '.join(differ)} differ): give another --out, "
            "or remove it to make them again"
        )
    if out.exists() and any(f.name != "_judge" for f in out.iterdir()):  # _judge: an interrupted run's verdicts
        raise OutputError(f"{out} is not empty and holds no {RECORD}: give an empty or new --out")
    return None


def run_pairs(
    model,
    data: str,
    judge: str,
    out,
    settings: PairSettings | None = None,
    *,
    data_format: str = "auto",
    split: str | None = None,
    judge_concurrency: int = 8,
    generate_with: str | None = None,
) -> dict:
    """Sample, score and pair (the module docstring); returns the record written to ``_pairs.json``.
    ``generate_with`` (``openai:<model>@<base url>``): the samples come from that server (K per
    prompt in one request), once it has passed :func:`crrelu_llm.evaluation.served.check_fidelity`.

    Example:
        >>> run_pairs("runs/gelu/sft", "data/", "rule:arithmetic", "pairs/")  # doctest: +SKIP
    """
    from crrelu_llm.evaluation.generation import GenerationSettings, generate_samples
    from crrelu_llm.evaluation.judges import make_judge
    from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer

    model, out, settings = str(model), Path(out), settings or PairSettings()
    settings.check()
    inputs = _inputs(model, str(data), judge, settings, split)
    if generate_with:
        inputs["served"] = generate_with
    finished = _check_out(out, inputs)
    if finished is not None:
        logger.info("%s: these pairs are made already; nothing to do", out)
        return {**finished, "reused": True}
    check_writable(out)
    # a bad spec fails here; a pairwise judge caches its verdicts in ``out``, so an interrupted run asks nothing twice
    scorer = make_judge(judge, cache_dir=out / "_judge", max_concurrency=judge_concurrency)
    prompts, test = _prompts_and_test(str(data), data_format, split, settings.num_prompts)
    if not prompts:
        raise EvaluationError(f"{data}: no prompts to sample for")
    loaded, tokenizer = load_causal_lm(model), load_tokenizer(model)
    drawn = GenerationSettings(
        max_new_tokens=settings.max_new_tokens,
        do_sample=True,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        batch_size=settings.batch_size,
        chat_template=settings.chat_template,
    )
    # all K samples of a prompt in one generate call (num_return_sequences) or request (n), not K passes
    desc = f"Sampling {settings.num_samples} per prompt"
    if generate_with:
        from crrelu_llm.evaluation.served import ServedModel, check_fidelity

        served = ServedModel(generate_with, max_concurrency=judge_concurrency)
        check_fidelity(served, loaded, tokenizer)  # before anything is written
        samples = served.generate(prompts, drawn, settings.num_samples, desc=desc + " (served)")
    else:
        samples = generate_samples(loaded, tokenizer, prompts, drawn, settings.num_samples, desc=desc)
    scores = score_samples(scorer, prompts, samples)
    rows, counts = select_pairs(prompts, samples, scores)
    if not rows:
        raise EvaluationError(
            f"no pair left from {len(prompts)} prompts: every prompt's samples tie or are empty "
            f"({counts['dropped_all_tied']} tied); sample more (--num-samples) or hotter "
            "(--temperature)"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        out / "_samples.jsonl", [{"prompt": p, "samples": s, "scores": v} for p, s, v in zip(prompts, samples, scores)]
    )
    write_jsonl(out / "train.jsonl", rows)
    if test:
        write_jsonl(out / "test.jsonl", test)
    record = {
        "inputs": inputs,
        "judge_name": scorer.name,
        "counts": counts,
        "held_out": len(test) if test else 0,
        "scheme": "best against worst; pairwise judges by round robin",
    }
    write_json(record_file(out), record)
    return record
