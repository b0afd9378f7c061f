"""Scores of models on data: DPO implicit rewards per example, and drift against an original.

Reward metrics are per example. With ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))``, an
example is *correct* when r(chosen) > r(rejected), a *tie* when they are equal (a policy equal
to its reference ties everywhere: TRL's ``rewards/accuracies`` counts that as wrong), and the
margin is r(chosen) - r(rejected). Accuracies get Wilson intervals (:mod:`crrelu_llm.stats`),
and each pair's 0/1 outcome is kept (``correct``, in data order) so that two arms scored on the
same pairs are compared paired; margins get percentile bootstraps over examples. The
reference-free preference accuracy (does the policy give the chosen response the higher
log-probability, summed and per token) compares arms that have different references.

Examples are tokenized and truncated by TRL's own ``DPOTrainer`` pipeline, so the numbers
agree with what ``DPOTrainer.evaluate()`` logs for the same model, data and reference.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from crrelu_llm.data.encoding import check_tokenizers, encode_pairs, ensure_pad_token, model_device
from crrelu_llm.errors import EvaluationError
from crrelu_llm.stats import accuracy_estimate, bootstrap_interval


@torch.no_grad()
def completion_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probabilities and completion token counts, one per row."""
    device = model_device(model)
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    logps = logits.float().log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].to(device).float()
    return (logps * mask).sum(1).cpu(), mask.sum(1).cpu()


def preference_logps(
    model, reference, tokenizer, dataset, max_length: int = 1024, batch_size: int = 8, source: str = ""
) -> dict:
    """Per-example log-probs of chosen and rejected under the policy and the reference, and
    (``"lengths"``) what the length rule dropped and cut (:mod:`crrelu_llm.data.accounting`)."""
    from trl import DPOConfig

    from crrelu_llm.training.trainers.dpo import CRReLUDPOTrainer

    if len(dataset) == 0:
        raise EvaluationError("the evaluation data is empty")
    check_tokenizers(tokenizer, *(m for m in (model, reference) if m is not None))
    args = DPOConfig(
        output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "crrelu-llm-eval"),
        per_device_eval_batch_size=batch_size,
        max_length=max_length,
        report_to=[],
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        per_device_train_batch_size=1,
    )
    # TRL's pipeline (tokenization, the length rule), counted: the pairs it drops are not scored
    # no reference (a reference-free objective): the trainer makes its own copy, which is not scored
    trainer = CRReLUDPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        data_source=source,
    )
    out = {
        k: []
        for k in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "tokens_chosen", "tokens_rejected")
    }
    for batch in tqdm(trainer.get_eval_dataloader(), desc="Scoring preference pairs", leave=False):
        p, tokens = completion_logps(trainer.model, batch)
        r = completion_logps(trainer.ref_model, batch)[0] if reference is not None else torch.zeros_like(p)
        for name, values in (("policy", p), ("ref", r)):
            chosen, rejected = values.chunk(2)
            out[f"{name}_chosen"] += chosen.tolist()
            out[f"{name}_rejected"] += rejected.tolist()
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        out["tokens_chosen"] += chosen_tokens.tolist()
        out["tokens_rejected"] += rejected_tokens.tolist()
    out["lengths"] = trainer.data_accounting["eval"]
    return out


@dataclass
class Margins:
    """The implicit reward margin at one *evaluation* beta (it scales with beta; accuracy does not)."""

    beta: float
    margin: float
    margin_interval: tuple[float, float]
    chosen_reward: float
    rejected_reward: float


def reward_metrics(logps: dict, betas: list[float] = (0.1,), n_boot: int = 1000, seed: int = 0) -> dict:
    """Reward accuracy (once: for a fixed policy and reference its sign test does not depend on
    beta > 0), margins per evaluation beta, and the reference-free preference accuracy."""
    n = len(logps["policy_chosen"])
    chosen_ratio = [p - r for p, r in zip(logps["policy_chosen"], logps["ref_chosen"])]
    rejected_ratio = [p - r for p, r in zip(logps["policy_rejected"], logps["ref_rejected"])]
    log_ratio = [c - r for c, r in zip(chosen_ratio, rejected_ratio)]
    correct = [1.0 if m > 0 else 0.0 for m in log_ratio]  # strictly: ties are not correct (as TRL counts)
    ties = [1.0 if m == 0 else 0.0 for m in log_ratio]
    half = [c + t / 2 for c, t in zip(correct, ties)]
    margins = []
    for beta in betas:
        scaled = [beta * m for m in log_ratio]
        margins.append(
            asdict(
                Margins(
                    beta=beta,
                    margin=statistics.fmean(scaled),
                    margin_interval=bootstrap_interval(scaled, n_boot=n_boot, seed=seed),
                    chosen_reward=beta * statistics.fmean(chosen_ratio),
                    rejected_reward=beta * statistics.fmean(rejected_ratio),
                )
            )
        )
    summed = [1.0 if c > r else 0.0 for c, r in zip(logps["policy_chosen"], logps["policy_rejected"])]
    per_token = [
        1.0 if c / max(tc, 1) > r / max(tr, 1) else 0.0
        for c, r, tc, tr in zip(
            logps["policy_chosen"], logps["policy_rejected"], logps["tokens_chosen"], logps["tokens_rejected"]
        )
    ]
    accuracy = accuracy_estimate(correct)
    return {
        "n": n,
        "accuracy": accuracy.value,
        "accuracy_interval": accuracy.interval,
        "accuracy_interval_method": accuracy.interval_method,
        "correct": [int(c) for c in correct],
        "ties": statistics.fmean(ties),
        "accuracy_ties_half": statistics.fmean(half),
        "margins_per_evaluation_beta": margins,
        "preference_accuracy": statistics.fmean(summed),
        "preference_accuracy_interval": accuracy_estimate(summed).interval,
        "preference_accuracy_per_token": statistics.fmean(per_token),
        "preference_accuracy_per_token_interval": accuracy_estimate(per_token).interval,
    }


IMPLICIT_REWARDS = {
    "simpo": "SimPO's: beta times the mean token log-probability of the response (length-normalised)",
    "orpo": "ORPO's: the log odds of the response, log(p / (1 - p)) with p its mean token probability; the "
    "margin at beta 1 is the log odds ratio",
}


def implicit_reward_metrics(
    logps: dict, objective: str, betas: list[float] = (0.1,), n_boot: int = 1000, seed: int = 0
) -> dict:
    """:func:`reward_metrics` for a model trained without a reference: the reward its objective
    defines (:data:`IMPLICIT_REWARDS`) in place of DPO's log-ratio to a reference."""

    def score(logp: float, tokens: float) -> float:
        mean = logp / max(tokens, 1)
        return mean if objective == "simpo" else mean - math.log1p(-math.exp(min(mean, -1e-12)))

    scores = {
        f"{side}_{pick}": [
            score(lp, t) if side == "policy" else 0.0 for lp, t in zip(logps[f"policy_{pick}"], logps[f"tokens_{pick}"])
        ]
        for side in ("policy", "ref")
        for pick in ("chosen", "rejected")
    }
    result = reward_metrics(
        {**scores, "tokens_chosen": logps["tokens_chosen"], "tokens_rejected": logps["tokens_rejected"]},
        betas,
        n_boot,
        seed,
    )
    raw = reward_metrics(logps, betas, n_boot, seed)  # the preference accuracies read the plain log-probs
    result.update({k: v for k, v in raw.items() if k.startswith("preference_accuracy")})
    return {**result, "objective": objective, "implicit_reward": IMPLICIT_REWARDS[objective]}


# --------------------------------------------------------------------------- drift


@torch.no_grad()
def drift(
    patched, original, tokenizer, pairs: list[tuple[str, str]], max_length: int = 512, batch_size: int = 8
) -> dict:
    """Perplexity of both models and the mean per-token KL(patched || original) on the
    completion tokens of (prompt, completion) pairs, each predicted after its prompt. Prompt
    tokens are context only: a prompt is often unpredictable by design (a random question)."""
    if not pairs:
        raise EvaluationError("no text to measure drift on")
    check_tokenizers(tokenizer, patched, original)
    ensure_pad_token(tokenizer)
    nll = {"patched": 0.0, "original": 0.0}
    kl_sum, tokens, per_example = 0.0, 0, []
    for start in tqdm(range(0, len(pairs), batch_size), desc="Measuring drift", leave=False):
        ids, attention, scored = encode_pairs(tokenizer, pairs[start : start + batch_size], max_length)
        mask = scored[:, 1:].float()
        logp = {}
        for name, model in (("patched", patched), ("original", original)):
            device = model_device(model)
            out = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
            logp[name] = out.float().log_softmax(-1).cpu()
            token_logp = logp[name].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            nll[name] -= float((token_logp * mask).sum())
        kl = (logp["patched"].exp() * (logp["patched"] - logp["original"])).sum(-1)
        kl_sum += float((kl * mask).sum())
        tokens += int(mask.sum())
        per_example += list(zip((kl * mask).sum(1).tolist(), mask.sum(1).tolist()))
    if tokens == 0:
        raise EvaluationError(
            "the drift data has no completion tokens to score (are the completions empty, or cut off by max_length?)"
        )
    return {
        "scored": "completion tokens, each predicted after its prompt",
        "tokens": tokens,
        "perplexity_patched": math.exp(nll["patched"] / tokens),
        "perplexity_original": math.exp(nll["original"] / tokens),
        "kl_patched_original": kl_sum / tokens,
        "kl_interval": bootstrap_interval(
            per_example, lambda draw: sum(k for k, _ in draw) / max(1.0, sum(t for _, t in draw))
        ),
        "examples": len(per_example),
        # per example, in data order: what arms measured on the same examples are compared by, paired
        "per_example_kl": [k / t if t else 0.0 for k, t in per_example],
    }


# --------------------------------------------------------------------------- multiple choice


def multiple_choice_accuracy(model, tokenizer, items: list[dict], max_length: int = 1024) -> dict:
    """Share of ``items`` (``question``, ``choices``, ``answer`` index) whose answer has the highest
    summed log-probability after the question: lm-eval's ``acc``, computed here directly."""
    if not items:
        raise EvaluationError("no multiple-choice items to score")
    check_tokenizers(tokenizer, model)
    correct = 0
    for item in items:
        ids, attention, scored = encode_pairs(tokenizer, [(item["question"], c) for c in item["choices"]], max_length)
        logps, _ = completion_logps(model, {"input_ids": ids, "attention_mask": attention, "completion_mask": scored})
        correct += int(logps.argmax()) == item["answer"]
    return {"accuracy": correct / len(items), "n": len(items)}
