"""Judges of completion pairs, behind one interface.

    outcomes = judge(prompts, [(model_completion, baseline_completion), ...])

Each outcome says which side won: ``winner`` 0 (first), 1 (second) or ``None`` (tie), plus
``consistent`` for judges that look at both orders. A new judge is a small class with a
``judge`` method (and a ``name``):

- :class:`RewardModelJudge`: any ``AutoModelForSequenceClassification`` reward model scores
  each response alone, through its tokenizer's chat template where it has one; the higher score
  wins (order cannot matter).
- :class:`PairwiseLLMJudge`: an OpenAI-compatible chat endpoint compares the two responses in
  both orders; a verdict that flips with the order is a tie (MT-Bench practice). Several
  requests in flight (``max_concurrency``), ``Retry-After`` honoured, no retry of errors that
  cannot succeed; every verdict is cached on disk, so an interrupted run resumes without
  asking again. The API key is read from an environment variable and never logged or saved.
- :class:`RuleBasedJudge`: a function scores each completion (the built-in synthetic tasks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from crrelu_llm.data.encoding import ensure_pad_token
from crrelu_llm.errors import JudgeError, UsageError
from crrelu_llm.evaluation.http import RetriesExhausted, Unretriable, post_with_retries
from crrelu_llm.evaluation.judge_templates import TEMPLATES, JudgeTemplate, load_template

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    winner: int | None  # 0: first completion, 1: second, None: tie
    consistent: bool | None = None  # pairwise judges: same verdict in both orders
    detail: dict | None = None


class Judge(Protocol):
    name: str

    def judge(self, prompts: list[str], completion_pairs: list[tuple[str, str]]) -> list[Outcome]: ...


def _by_score(a: float, b: float) -> int | None:
    return 0 if a > b else 1 if b > a else None


# --------------------------------------------------------------------------- rule-based


class RuleBasedJudge:
    """``score(prompt, completion) -> float``; the higher score wins, equal scores tie."""

    def __init__(self, score: Callable[[str, str], float], name: str = "rule"):
        self.score, self.name = score, name

    def scores(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Each completion's score alone (what on-policy pairs rank samples by)."""
        return [self.score(p, c) for p, c in zip(prompts, completions, strict=True)]

    def judge(self, prompts, completion_pairs):
        outcomes = []
        for prompt, (a, b) in zip(prompts, completion_pairs, strict=True):
            sa, sb = self.score(prompt, a), self.score(prompt, b)
            outcomes.append(Outcome(_by_score(sa, sb), detail={"scores": [sa, sb]}))
        return outcomes


# --------------------------------------------------------------------------- reward model


class RewardModelJudge:
    """Scores prompt + response with a sequence-classification reward model (logit 0)."""

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model=None,
        tokenizer=None,
        batch_size: int = 8,
        max_length: int = 1024,
        device: str | None = None,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if model is None:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path)
                tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            except (OSError, ValueError) as err:
                raise JudgeError(
                    f"reward-model judge {model_name_or_path!r} could not be loaded: give a local "
                    f"directory or a reachable hub id ({type(err).__name__}: {str(err)[:200]})"
                ) from err
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.name = f"reward-model:{model_name_or_path or type(model).__name__}"

    def texts(self, prompts: list, completions: list[str]) -> tuple[list, list | None]:
        """What the reward model reads: with a chat template (as modern reward models are trained),
        the conversation rendered by it, user prompt then assistant response; without one, the
        plain (prompt, response) text pair."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            return list(prompts), list(completions)
        rendered = []
        for prompt, completion in zip(prompts, completions):
            messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            conversation = [*messages, {"role": "assistant", "content": completion}]
            rendered.append(self.tokenizer.apply_chat_template(conversation, tokenize=False))
        return rendered, None

    @torch.no_grad()
    def scores(self, prompts: list[str], completions: list[str]) -> list[float]:
        out = []
        ensure_pad_token(self.tokenizer)
        first, second = self.texts(prompts, completions)
        for start in range(0, len(prompts), self.batch_size):
            pair = (first[start : start + self.batch_size],)
            if second is not None:
                pair += (second[start : start + self.batch_size],)
            batch = self.tokenizer(
                *pair,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=second is not None,  # a rendered template carries its own
            )
            logits = self.model(**batch.to(self.device)).logits
            out.extend(logits[:, 0].float().cpu().tolist())
        return out

    def judge(self, prompts, completion_pairs):
        first = self.scores(prompts, [a for a, _ in completion_pairs])
        second = self.scores(prompts, [b for _, b in completion_pairs])
        return [Outcome(_by_score(a, b), detail={"scores": [a, b]}) for a, b in zip(first, second)]


# --------------------------------------------------------------------------- pairwise LLM


class PairwiseLLMJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint as a pairwise judge (``httpx``).

    Keeps ``max_concurrency`` requests in flight. 429 and 503 wait as long as ``Retry-After``
    says (else back off exponentially), like timeouts, dropped connections and other 5xx;
    401, 403, 404 and other client errors cannot succeed on retry and stop at once."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        cache_path: str | Path | None = None,
        max_retries: int = 4,
        backoff: float = 1.0,
        timeout: float = 60.0,
        temperature: float = 0.0,
        name: str | None = None,
        max_concurrency: int = 8,
        template: JudgeTemplate | None = None,
    ):
        if max_concurrency < 1:
            raise UsageError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_retries, self.backoff, self.timeout, self.temperature = max_retries, backoff, timeout, temperature
        self.max_concurrency = max_concurrency
        self.name = name or f"pairwise:{model}"
        self.template = template or TEMPLATES["default"]
        self.cache_path = Path(cache_path) if cache_path else None
        self.cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._client = None
        self._failure: JudgeError | None = None  # once one question fails for good, the rest are not asked
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.cache[entry["key"]] = entry["verdict"]

    def _key(self, prompt: str, a: str, b: str) -> str:
        payload = json.dumps([self.base_url, self.model, self.template.prompt, prompt, a, b], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def _http(self):
        if self._client is None:
            import httpx

            headers = {}
            key = os.environ.get(self.api_key_env)
            if key:  # in a header only: never in a message, a log or the cache
                headers["Authorization"] = f"Bearer {key}"
            limits = httpx.Limits(max_connections=self.max_concurrency)
            self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout, limits=limits)
        return self._client

    def _ask(self, content: str) -> str:
        """One answer (the judge's text), retried as the class docstring says."""
        body = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.template.max_tokens,
            "messages": [{"role": "user", "content": content}],
        }

        def stop_if_failed():  # once one question failed for good, the others stop at their next try
            if self._failure is not None:
                raise self._failure

        try:
            return post_with_retries(
                self._http(),
                "/chat/completions",
                body,
                lambda answer: answer["choices"][0]["message"]["content"] or "",
                self.max_retries,
                self.backoff,
                before=stop_if_failed,
            )
        except Unretriable as err:
            self._failure = JudgeError(
                f"judge {self.model} at {self.base_url} refused the request ({err}); "
                f"retrying cannot help: check the model name, the URL and "
                f"${self.api_key_env}"
            )
            raise self._failure from None
        except RetriesExhausted as err:
            raise JudgeError(
                f"judge {self.model} at {self.base_url} gave no usable verdict after {self.max_retries + 1} tries "
                f"({err}); {len(self.cache)} verdicts so far are cached"
                + (f" in {self.cache_path}" if self.cache_path else "")
            ) from None

    def verdict(self, prompt: str, a: str, b: str) -> str:
        """The judge's answer for one ordering (its verdict read by the template), from the cache
        or the endpoint. An answer without a readable verdict is kept as it is: counted, not guessed."""
        key = self._key(prompt, a, b)
        with self._lock:
            if key in self.cache:
                return self.cache[key]
        verdict = self.template.verdict_text(self._ask(self.template.render(prompt, a, b)))
        with self._lock:
            self.cache[key] = verdict
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a") as f:
                    f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")
        return verdict

    def judge(self, prompts, completion_pairs):
        from concurrent.futures import ThreadPoolExecutor

        self._failure = None
        questions = [(p, a, b) for p, (a, b) in zip(prompts, completion_pairs, strict=True)]
        orders = [q for p, a, b in questions for q in ((p, a, b), (p, b, a))]  # a shown as A, then as B
        unique = list(dict.fromkeys(orders))  # an identical question is asked once
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency)
        futures = {pool.submit(self.verdict, *q): q for q in unique}
        answers = {}
        try:
            from concurrent.futures import as_completed

            from tqdm.auto import tqdm

            for future in tqdm(as_completed(futures), total=len(futures), desc=f"Judging ({self.name})", leave=False):
                answers[futures[future]] = future.result()
        finally:  # after a failure, questions not yet asked are not asked
            pool.shutdown(wait=True, cancel_futures=True)
        return [self._outcome(answers[(p, a, b)], answers[(p, b, a)]) for p, a, b in questions]

    def _outcome(self, forward: str, backward: str) -> Outcome:
        """Both orders read: the first completion wins if it is preferred shown as A and as B; a
        tie in either order, or a verdict that flips with the order, is a tie; an unreadable
        verdict in either order makes the prompt unreadable (counted apart, never guessed)."""
        (side_f, strength_f), (side_b, strength_b) = self.template.read(forward), self.template.read(backward)
        detail = {"verdicts": [forward, backward], "strengths": [strength_f, strength_b]}
        if side_f is None or side_b is None:
            return Outcome(None, None, {**detail, "unreadable": True})
        first_f, first_b = {"A": 0, "B": 1}.get(side_f), {"A": 1, "B": 0}.get(side_b)  # None: a tie
        consistent = first_f == first_b
        winner = first_f if consistent else None
        return Outcome(winner, consistent, detail)


JUDGE_SPECS = "reward-model:<model id or path>, openai:<model>@<base url> (key from $OPENAI_API_KEY) or rule:<task>"


def _parse_spec(spec: str) -> tuple[str, str, str]:
    """(kind, model or task, base url) of a judge spec; a bad spec is a one-line usage error."""
    kind, _, rest = str(spec).partition(":")
    if kind == "openai" and rest and "@" not in rest:
        raise UsageError(
            f"judge {spec!r}: the base URL is missing; write openai:{rest}@<base url>, "
            "e.g. openai:gpt-4o@https://api.openai.com/v1"
        )
    model, _, url = rest.partition("@") if kind == "openai" else (rest, "", "")
    if kind not in ("reward-model", "openai", "rule") or not model or (kind == "openai" and not url):
        raise UsageError(f"unknown judge {spec!r}: use {JUDGE_SPECS}")
    return kind, model, url


def judge_name(spec: str) -> str:
    """The name a judge built from ``spec`` carries (and that result files are named by),
    without building it (a reward model is not loaded)."""
    kind, model, _ = _parse_spec(spec)
    return {"openai": f"pairwise:{model}"}.get(kind, f"{kind}:{model}")


def make_judge(
    spec: str, cache_dir: Path | None = None, max_concurrency: int = 8, template: str | None = None
) -> Judge:
    """``reward-model:<path or id>``, ``openai:<model>@<base_url>`` or ``rule:<task>``;
    ``max_concurrency`` is how many requests an ``openai:`` judge keeps in flight; ``template``
    its prompt and verdict (:mod:`crrelu_llm.evaluation.judge_templates`: a shipped name or a file)."""
    kind, model, url = _parse_spec(spec)
    if template not in (None, "default") and kind != "openai":
        raise UsageError(f"--judge-template applies to openai: judges, not to {kind}:")
    if kind == "reward-model":
        return RewardModelJudge(model)
    if kind == "openai":
        chosen = load_template(template)
        digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
        cache = (cache_dir / f"judge-cache-{digest}.jsonl") if cache_dir else None
        name = judge_name(spec) + ("" if chosen.name == "default" else f"+{chosen.name}")
        return PairwiseLLMJudge(
            url, model, cache_path=cache, name=name, max_concurrency=max_concurrency, template=chosen
        )
    from crrelu_llm.evaluation.tasks import scorer

    return RuleBasedJudge(scorer(model), name=judge_name(spec))
