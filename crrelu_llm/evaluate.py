"""Evaluation of checkpoints: DPO implicit rewards, generation, judged win rates, drift.

Reward metrics are per example. With ``r(y) = beta * (log pi(y|x) - log pi_ref(y|x))``, an
example is *correct* when r(chosen) > r(rejected), a *tie* when they are equal (a policy equal
to its reference ties everywhere: TRL's ``rewards/accuracies`` counts that as wrong), and the
margin is r(chosen) - r(rejected). Intervals are percentile bootstraps over examples. The
reference-free preference accuracy (does the policy give the chosen response the higher
log-probability, summed and per token) compares arms that have different references.

Examples are tokenized and truncated by TRL's own ``DPOTrainer`` pipeline, so the numbers
agree with what ``DPOTrainer.evaluate()`` logs for the same model, data and reference.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .files import write_text_atomic
from .stats import bootstrap_interval

logger = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Inputs that cannot be evaluated; the message says which and why."""


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def completion_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probabilities and completion token counts, one per row."""
    device = _device(model)
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
    logps = logits.float().log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].to(device).float()
    return (logps * mask).sum(1).cpu(), mask.sum(1).cpu()


def _check_tokenizers(tokenizer, *models) -> None:
    vocab = len(tokenizer)
    for model in models:
        size = model.get_input_embeddings().weight.shape[0]
        if size < vocab:
            raise EvaluationError(
                f"{model.config._name_or_path or type(model).__name__} has {size} embeddings but the tokenizer has "
                f"{vocab} tokens: the tokenizer does not belong to this model"
            )


def preference_logps(model, reference, tokenizer, dataset, max_length: int = 1024, batch_size: int = 8) -> dict:
    """Per-example log-probs of chosen and rejected under the policy and the reference."""
    from trl import DPOConfig, DPOTrainer

    if len(dataset) == 0:
        raise EvaluationError("the evaluation data is empty")
    _check_tokenizers(tokenizer, model, reference)
    args = DPOConfig(output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), "crrelu-llm-eval"),
                     per_device_eval_batch_size=batch_size, max_length=max_length, report_to=[],
                     bf16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
                     dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=dataset, eval_dataset=dataset,
                         processing_class=tokenizer)
    out = {k: [] for k in ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "tokens_chosen",
                           "tokens_rejected")}
    for batch in tqdm(trainer.get_eval_dataloader(), desc="Scoring preference pairs", leave=False):
        p, tokens = completion_logps(trainer.model, batch)
        r, _ = completion_logps(trainer.ref_model, batch)
        for name, values in (("policy", p), ("ref", r)):
            chosen, rejected = values.chunk(2)
            out[f"{name}_chosen"] += chosen.tolist()
            out[f"{name}_rejected"] += rejected.tolist()
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        out["tokens_chosen"] += chosen_tokens.tolist()
        out["tokens_rejected"] += rejected_tokens.tolist()
    return out


@dataclass
class RewardMetrics:
    beta: float
    n: int
    accuracy: float  # strictly correct, ties are not correct (as TRL counts)
    ties: float  # share of exact ties
    accuracy_ties_half: float
    accuracy_interval: tuple[float, float]
    margin: float
    margin_interval: tuple[float, float]
    chosen_reward: float
    rejected_reward: float


def reward_metrics(logps: dict, betas: list[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Reward accuracy and margins for each beta, plus reference-free preference accuracy."""
    n = len(logps["policy_chosen"])
    chosen_ratio = [p - r for p, r in zip(logps["policy_chosen"], logps["ref_chosen"])]
    rejected_ratio = [p - r for p, r in zip(logps["policy_rejected"], logps["ref_rejected"])]
    per_beta = []
    for beta in betas:
        margins = [beta * (c - r) for c, r in zip(chosen_ratio, rejected_ratio)]
        correct = [1.0 if m > 0 else 0.0 for m in margins]
        ties = [1.0 if m == 0 else 0.0 for m in margins]
        half = [c + t / 2 for c, t in zip(correct, ties)]
        per_beta.append(asdict(RewardMetrics(
            beta=beta, n=n, accuracy=statistics.fmean(correct), ties=statistics.fmean(ties),
            accuracy_ties_half=statistics.fmean(half),
            accuracy_interval=bootstrap_interval(correct, n_boot=n_boot, seed=seed),
            margin=statistics.fmean(margins), margin_interval=bootstrap_interval(margins, n_boot=n_boot, seed=seed),
            chosen_reward=beta * statistics.fmean(chosen_ratio), rejected_reward=beta * statistics.fmean(rejected_ratio),
        )))
    summed = [1.0 if c > r else 0.0 for c, r in zip(logps["policy_chosen"], logps["policy_rejected"])]
    per_token = [1.0 if c / max(tc, 1) > r / max(tr, 1) else 0.0 for c, r, tc, tr in
                 zip(logps["policy_chosen"], logps["policy_rejected"], logps["tokens_chosen"], logps["tokens_rejected"])]
    return {
        "n": n,
        "betas": per_beta,
        "preference_accuracy": statistics.fmean(summed),
        "preference_accuracy_interval": bootstrap_interval(summed, n_boot=n_boot, seed=seed),
        "preference_accuracy_per_token": statistics.fmean(per_token),
        "preference_accuracy_per_token_interval": bootstrap_interval(per_token, n_boot=n_boot, seed=seed),
    }


# --------------------------------------------------------------------------- generation


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    chat_template: bool = False  # apply the tokenizer's chat template to each prompt
    extra: dict = field(default_factory=dict)


def _render(tokenizer, prompt, chat_template: bool) -> str:
    if chat_template:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise EvaluationError("conversational prompts need chat_template: true (and a tokenizer with a template)")
    return prompt


@torch.no_grad()
def generate(model, tokenizer, prompts: list, settings: GenerationSettings, desc: str = "Generating") -> list[str]:
    """Completions for ``prompts``, batched, left-padded, reproducible for a given seed."""
    if not prompts:
        raise EvaluationError("no prompts to generate from")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    device = _device(model)
    texts = [_render(tokenizer, p, settings.chat_template) for p in prompts]
    outputs = []
    for start in tqdm(range(0, len(texts), settings.batch_size), desc=desc, leave=False):
        torch.manual_seed(settings.seed + start)
        batch = tokenizer(texts[start:start + settings.batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=not settings.chat_template).to(device)
        kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **settings.extra)
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        generated = model.generate(**batch, **kwargs)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


def slug(name: str, parts: int = 2) -> str:
    """A file-name-safe label for a model: the last ``parts`` components of its path or hub id."""
    import re

    tail = "/".join(Path(str(name).rstrip("/")).parts[-parts:])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tail)[-80:]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Atomic JSONL write."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- drift


@torch.no_grad()
def drift(patched, original, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 8) -> dict:
    """Perplexity of both models and the mean per-token KL(patched || original) on the same text."""
    if not texts:
        raise EvaluationError("no text to measure drift on")
    _check_tokenizers(tokenizer, patched, original)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    nll = {"patched": 0.0, "original": 0.0}
    kl_sum, tokens = 0.0, 0
    for start in tqdm(range(0, len(texts), batch_size), desc="Measuring drift", leave=False):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length)
        ids = batch["input_ids"]
        mask = batch["attention_mask"][:, 1:].float()
        logp = {}
        for name, model in (("patched", patched), ("original", original)):
            device = _device(model)
            out = model(input_ids=ids.to(device), attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
            logp[name] = out.float().log_softmax(-1).cpu()
            token_logp = logp[name].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            nll[name] -= float((token_logp * mask).sum())
        kl = (logp["patched"].exp() * (logp["patched"] - logp["original"])).sum(-1)
        kl_sum += float((kl * mask).sum())
        tokens += int(mask.sum())
    if tokens == 0:
        raise EvaluationError("the drift text has no tokens to predict (each text needs at least two tokens)")
    return {"tokens": tokens, "perplexity_patched": math.exp(nll["patched"] / tokens),
            "perplexity_original": math.exp(nll["original"] / tokens), "kl_patched_original": kl_sum / tokens}
