"""Evaluation stages as functions: load what they need, compute, write one result file, return it.

    from crrelu_llm.evaluation import evaluate
    evaluate.run_rewards("runs/crrelu/dpo", "runs/crrelu/sft", data="Anthropic/hh-rlhf", betas=[0.1])
    evaluate.run_winrate("runs/crrelu/dpo", "runs/gelu/dpo", data=..., judge="rule:arithmetic")
    evaluate.run_drift("runs/crrelu/patched", "gpt2", data=...)

Each function owns its model loading and its caching (generations are reused when the model,
the settings and the prompts are the same); its result file is named by
:mod:`crrelu_llm.evaluation.results`, which everyone who needs to find it reads (``crrelu-llm eval``,
the experiment runner, ``compare``). Results go to ``MODEL/eval/`` unless ``out`` is given.
The arithmetic lives in :mod:`crrelu_llm.evaluation.scoring`, generation in :mod:`crrelu_llm.evaluation.generation`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from crrelu_llm import run_files
from crrelu_llm.data.encoding import check_chat_template
from crrelu_llm.data.preference import DataArguments, load_preference_splits
from crrelu_llm.errors import EvaluationError
from crrelu_llm.evaluation.generation import GenerationSettings, generate
from crrelu_llm.evaluation.judges import make_judge
from crrelu_llm.evaluation.length_control import length_controlled_win_rate, token_lengths
from crrelu_llm.evaluation.results import (
    DRIFT,
    GENERATIONS,
    JUDGMENTS,
    MODEL_OUTPUTS,
    PROBE,
    REWARDS,
    WINRATE,
    eval_dir,
    slug,
)
from crrelu_llm.evaluation.scoring import drift, implicit_reward_metrics, preference_logps, reward_metrics
from crrelu_llm.evaluation.win_rates import win_rate
from crrelu_llm.files import check_writable, read_json, read_jsonl, writable_dir, write_json, write_jsonl
from crrelu_llm.patching.loading import load_causal_lm, load_tokenizer

logger = logging.getLogger("crrelu_llm.evaluate")


# --------------------------------------------------------------------------- shared steps


def _data(data: str, data_format: str, split: str | None, limit: int | None):
    args = DataArguments(
        dataset_name=data, dataset_format=data_format, dataset_test_split=split, max_eval_samples=limit
    )
    _, evaluation, summary = load_preference_splits(args)
    return evaluation, summary


def _shared_tokenizer(a: str, b: str, need: str):
    first, second = load_tokenizer(str(a)), load_tokenizer(str(b))
    if first.get_vocab() != second.get_vocab():
        raise EvaluationError(f"the tokenizers of {a} and {b} disagree (different vocabularies): {need}")
    return first


# --------------------------------------------------------------------------- the stages


def run_rewards(
    model,
    reference,
    data: str,
    *,
    data_format: str = "auto",
    split: str | None = None,
    betas=(0.1,),
    max_samples: int | None = None,
    max_length: int = 1024,
    batch_size: int = 8,
    out=None,
) -> dict:
    """DPO implicit-reward accuracy and margins of ``model`` against ``reference``, per beta;
    written to :data:`~crrelu_llm.evaluation.results.REWARDS`. With ``reference`` None, ``model`` is a run of a
    reference-free objective (SimPO, ORPO: its ``reference.json`` says which) and the reward is
    the one that objective defines (:data:`~crrelu_llm.evaluation.scoring.IMPLICIT_REWARDS`)."""
    model = str(model)
    objective = None if reference is not None else reference_free_objective(model)
    reference = str(reference) if reference is not None else None
    tokenizer = _shared_tokenizer(
        model, reference or model, "rewards need a policy and a reference that share one tokenizer"
    )
    evaluation, summary = _data(data, data_format, split, max_samples)
    check_chat_template(evaluation[0], tokenizer, model, data, "evaluate with a model whose tokenizer has one")
    writable_dir(eval_dir(model, out))  # once the models and data are known to be usable: a typo creates nothing
    logps = preference_logps(
        load_causal_lm(model),
        reference and load_causal_lm(reference),
        tokenizer,
        evaluation,
        max_length,
        batch_size,
        source=data,
    )
    summary["lengths"] = logps.pop("lengths")
    metrics = (
        implicit_reward_metrics(logps, objective, list(betas)) if objective else reward_metrics(logps, list(betas))
    )
    result = {
        "model": model,
        "reference": reference,
        "training_beta": _training_beta(model),
        "data": summary,
        **metrics,
    }
    result["warnings"] = _warnings("reward accuracy", result["accuracy_interval"], result["n"], "pairs", max_samples)
    write_json(REWARDS.file(model, out), result)
    return result


def reference_free_objective(model: str) -> str:
    """The reference-free objective (simpo, orpo) ``model`` was trained with, from its run's
    ``reference.json``; refused when it has a reference (DPO, KTO) or says nothing."""
    from crrelu_llm.training.objectives import REFERENCE_FREE

    recorded = Path(model) / run_files.REFERENCE
    objective = read_json(recorded).get("objective") if recorded.exists() else None
    if objective not in REFERENCE_FREE:
        raise EvaluationError(
            f"eval rewards: give --reference for {model}: only a run of a reference-free objective "
            f"({', '.join(REFERENCE_FREE)}; its reference.json says so) is scored without one"
        )
    return objective


def _training_beta(model: str) -> float | None:
    """The beta ``model`` was trained with, from the ``recipe.yaml`` of its run (None if unknown)."""
    recipe = Path(model) / run_files.RECIPE
    if not recipe.exists():
        return None
    import yaml

    return (yaml.safe_load(recipe.read_text()) or {}).get("beta")


WIDE = 0.10  # a 95% interval wider than +-10 points cannot separate arms that differ by a few points


def _warnings(what: str, interval, n: int, unit: str, asked: int | None) -> list[str]:
    """What a reader of this result must know before trusting it: fewer items than asked for
    (the split is smaller), an interval too wide to tell arms apart. Logged, and kept in the result."""
    notes = []
    if asked is not None and n < asked:
        notes.append(f"{what}: {n} {unit} evaluated, not the {asked} asked for: the evaluation split has only {n}")
    lo, hi = interval
    if (hi - lo) / 2 > WIDE:
        notes.append(
            f"{what}: the 95% interval is +-{100 * (hi - lo) / 2:.0f} points with n={n} {unit}, too wide "
            f"to tell arms apart by a few points; evaluate on more {unit}"
        )
    for note in notes:
        logger.warning("%s", note)
    return notes


def run_drift(
    model,
    original,
    data: str,
    *,
    data_format: str = "auto",
    split: str | None = None,
    max_samples: int | None = 200,
    max_length: int = 1024,
    batch_size: int = 8,
    out=None,
) -> dict:
    """Perplexity of both models and the per-token KL(model || original) on the chosen responses
    of ``data`` (each after its prompt; prompt tokens are not scored); written to
    :data:`~crrelu_llm.evaluation.results.DRIFT`."""
    model, original = str(model), str(original)
    tokenizer = _shared_tokenizer(
        model, original, "drift compares a model with its original, which must share one tokenizer"
    )
    evaluation, summary = _data(data, data_format, split, max_samples)
    pairs = _text_pairs(evaluation, data, "drift")
    # a pair whose prompt fills max_length has no response token left to score
    summary["lengths"] = _count_lengths(tokenizer, pairs, max_length, data, drops=True)
    writable_dir(eval_dir(model, out))  # once the models and data are known to be usable: a typo creates nothing
    result = {
        "model": model,
        "original": original,
        "data": summary,
        **drift(load_causal_lm(model), load_causal_lm(original), tokenizer, pairs, max_length, batch_size),
    }
    write_json(DRIFT.file(model, out), result)
    return result


def run_probe(
    model,
    data: str,
    *,
    original=None,
    data_format: str = "auto",
    split: str | None = None,
    max_samples: int | None = 200,
    max_length: int = 1024,
    batch_size: int = 8,
    out=None,
) -> dict:
    """Activation statistics per feed-forward layer of ``model`` on the prompts and chosen
    responses of ``data`` (:mod:`crrelu_llm.patching.probe`); written to
    :data:`~crrelu_llm.evaluation.results.PROBE`."""
    from crrelu_llm.patching.probe import activation_statistics, reference_activations

    model = str(model)
    evaluation, summary = _data(data, data_format, split, max_samples)
    pairs = _text_pairs(evaluation, data, "probe")
    summary["lengths"] = _count_lengths(load_tokenizer(model), pairs, max_length, data, drops=False)
    loaded = load_causal_lm(model)
    writable_dir(eval_dir(model, out))  # once the model is known to exist: a typo creates nothing
    if original is not None:
        _shared_tokenizer(model, str(original), "the probe runs one text through both")
    references = reference_activations(loaded, load_causal_lm(str(original)) if original is not None else None)
    layers = activation_statistics(loaded, load_tokenizer(model), pairs, references, max_length, batch_size)
    result = {
        "model": model,
        "original": str(original) if original is not None else None,
        "weights": weights_stamp(model),
        "data": summary,
        "layers": layers,
    }
    write_json(PROBE.file(model, out), result)
    return result


def _text_pairs(evaluation, data: str, what: str) -> list[tuple[str, str]]:
    """(prompt, chosen) text of every row; conversational rows are refused, not skipped."""
    if any(not isinstance(r["prompt"], str) for r in evaluation):
        raise EvaluationError(
            f"{what} reads plain text, and {data} holds conversational rows (lists of messages): "
            "give prompt/chosen/rejected strings (e.g. the data rendered with the chat template)"
        )
    return [(r["prompt"], r["chosen"]) for r in evaluation]


def _count_lengths(tokenizer, pairs, max_length: int, data: str, drops: bool) -> dict:
    """What cutting each prompt + response to ``max_length`` (their start kept) does, counted."""
    from crrelu_llm.data import accounting

    lengths = [
        {"prompt": len(tokenizer(p)["input_ids"]), "response": len(tokenizer(c, add_special_tokens=False)["input_ids"])}
        for p, c in pairs
    ]
    counts = accounting.account(lengths, len(pairs), "eval", "pair", max_length=max_length, drop_full_prompts=drops)
    accounting.check(counts, "eval", source=data)
    return counts


def weights_stamp(model: str) -> list | None:
    """Name, size and modification time of a local model's weight files: a model retrained in
    place gets a new stamp, so nothing computed from the old weights is reused."""
    path = Path(model)
    if not path.is_dir():
        return None
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(path.glob("*.safetensors"))]


def _completions(
    model: str, prompts: list, settings: GenerationSettings, file: Path, side: str, served=None
) -> list[str]:
    """Generations of ``model`` (by ``served``, a checked server, where given), reused from
    ``file`` when the model (and its weights), the settings and the prompts are the same."""
    record = {"model": model, "weights": weights_stamp(model), "settings": dataclasses.asdict(settings)}
    if served is not None:
        record["served"] = served.spec
    cached = read_jsonl(file) if file.exists() else []
    if cached and cached[0] == record and [r["prompt"] for r in cached[1:]] == prompts:
        logger.info("%s: reusing %s", side, file)
        return [r["completion"] for r in cached[1:]]
    if served is not None:
        texts = [samples[0] for samples in served.generate(prompts, settings, desc=f"Generating ({side}, served)")]
    else:
        texts = generate(load_causal_lm(model), load_tokenizer(model), prompts, settings, desc=f"Generating ({side})")
    write_jsonl(file, [record] + [{"prompt": p, "completion": c} for p, c in zip(prompts, texts)])
    return texts


def prompt_set(data: str, data_format: str = "auto", split: str | None = None, limit: int | None = None):
    """``(rows, summary)`` of the prompts to generate for: a prompt set (TRL's prompt-only,
    AlpacaEval's, Arena-Hard's; :mod:`crrelu_llm.data.prompts`), or the prompts of preference data.
    Each row: ``{"id", "prompt", "dataset", ...}``."""
    from crrelu_llm.data.prompts import PROMPT_FORMATS, detect_format, load_prompts, read_rows

    named = data_format in PROMPT_FORMATS
    if data_format == "auto" and Path(data).is_file():
        first = read_rows(data, split)[:1]
        named = bool(first) and detect_format(first[0]) in PROMPT_FORMATS
    if named:
        return load_prompts(data, data_format, split, limit)
    evaluation, summary = _data(data, data_format, split, limit)
    rows = [{"id": str(i), "prompt": p, "dataset": str(data)} for i, p in enumerate(evaluation["prompt"])]
    return rows, summary


def run_winrate(
    model,
    baseline,
    data: str,
    judge: str,
    *,
    data_format: str = "auto",
    split: str | None = None,
    num_prompts: int | None = 200,
    settings: GenerationSettings | None = None,
    out=None,
    judge_concurrency: int = 8,
    baseline_outputs=None,
    judge_template: str = "default",
    generate_with: str | None = None,
) -> dict:
    """Generate with ``model`` (and ``baseline``) from the same prompts, judge the pairs with the
    judge spec ``judge`` and write the win rate to :data:`~crrelu_llm.evaluation.results.WINRATE`
    (judgments beside it). ``baseline_outputs``, in place of ``baseline``: a file of reference
    outputs (AlpacaEval's or Arena-Hard's) for the same prompts. ``generate_with``
    (``openai:<model>@<base url>``): the model's completions come from that server, once it has
    passed :func:`crrelu_llm.evaluation.served.check_fidelity`. Each side's outputs are also
    written in AlpacaEval's ``model_outputs`` format."""
    from crrelu_llm.data.prompts import baseline_outputs as reference_outputs
    from crrelu_llm.data.prompts import write_model_outputs

    if (baseline is None) == (baseline_outputs is None):
        raise EvaluationError("give the baseline as a model (--baseline) or as reference outputs (--baseline-outputs)")
    model = str(model)
    baseline = str(baseline) if baseline is not None else None
    settings = settings or GenerationSettings()
    folder = check_writable(eval_dir(model, out))  # created once the inputs are known to be usable
    # a bad judge spec fails before data or generation
    judged_by = make_judge(judge, cache_dir=folder, max_concurrency=judge_concurrency, template=judge_template)
    rows, summary = prompt_set(data, data_format, split, num_prompts)
    prompts = [r["prompt"] for r in rows]
    theirs, generator = reference_outputs(rows, baseline_outputs) if baseline_outputs else (None, baseline)
    for side in [model] + ([baseline] if baseline else []):
        tokenizer = load_tokenizer(side)
        if settings.chat_template and getattr(tokenizer, "chat_template", None) is None:
            raise EvaluationError(
                f"--chat-template: the tokenizer of {side} has no chat template; drop "
                "--chat-template for plain-text prompts, or use a model whose tokenizer has one"
            )
        if not settings.chat_template and not isinstance(prompts[0], str):
            raise EvaluationError(
                f"{data} holds conversational prompts (lists of messages): pass --chat-template "
                "(with a tokenizer that has one) or give plain-text prompts"
            )
    served, fidelity = None, None
    if generate_with:  # the server must be this model: checked before anything is written
        from crrelu_llm.evaluation.served import ServedModel, check_fidelity

        served = ServedModel(generate_with, max_concurrency=judge_concurrency)
        fidelity = check_fidelity(served, load_causal_lm(model), load_tokenizer(model))
    writable_dir(folder)
    cache = {side: GENERATIONS.file(model, out, GENERATIONS.label_of(model=side)) for side in (model, baseline) if side}
    ours = _completions(model, prompts, settings, cache[model], "model", served)
    if theirs is None:
        theirs = _completions(baseline, prompts, settings, cache[baseline], "baseline")
    for side, outputs, name in ((model, ours, slug(model)), (baseline or baseline_outputs, theirs, generator)):
        write_model_outputs(MODEL_OUTPUTS.file(model, out, MODEL_OUTPUTS.label_of(model=side)), rows, outputs, name)
    baseline = baseline or str(baseline_outputs)
    outcomes = judged_by.judge(prompts, list(zip(ours, theirs)))
    # a prompt whose verdict could not be read in either order is counted apart, never guessed
    read = [i for i, o in enumerate(outcomes) if not (o.detail or {}).get("unreadable")]
    if not read:
        raise EvaluationError(
            f"the judge's verdict could not be read for any of {len(outcomes)} prompts: check --judge-template "
            "against what the judge answers (the judgments file keeps every answer)"
        )
    kept = [outcomes[i] for i in read]
    a, b = [ours[i] for i in read], [theirs[i] for i in read]
    stats = win_rate([o.winner for o in kept], a, b, [o.consistent for o in kept])
    policy_tokenizer = load_tokenizer(model)  # both sides measured in the policy's tokens
    stats.length_controlled = length_controlled_win_rate(
        [o.winner for o in kept], token_lengths(policy_tokenizer, a), token_lengths(policy_tokenizer, b)
    )
    write_jsonl(
        JUDGMENTS.in_folder(folder, JUDGMENTS.label_of(judge=judge, baseline=baseline, template=judge_template)),
        [
            {"prompt": p, "model": a, "baseline": b, "winner": o.winner, "consistent": o.consistent, "detail": o.detail}
            for p, a, b, o in zip(prompts, ours, theirs, outcomes)
        ],
    )
    result = {
        "model": model,
        "baseline": baseline,
        "baseline_generator": generator,
        "served": fidelity,  # the model's generations came from this server, checked against the model
        "judge": judged_by.name,
        "data": summary,
        "settings": dataclasses.asdict(settings),
        "stats": stats.to_dict(),
    }
    result["stats"]["unreadable"] = len(outcomes) - len(read)
    result["warnings"] = _warnings("win rate", stats.interval, stats.n, "prompts", num_prompts)
    if len(read) < len(outcomes):
        result["warnings"].append(
            f"{len(outcomes) - len(read)} of {len(outcomes)} prompts had no readable verdict: left out of the win "
            "rate (their answers are in the judgments file)"
        )
    write_json(
        WINRATE.file(model, out, WINRATE.label_of(judge=judge, baseline=baseline, template=judge_template)), result
    )
    return result
