"""Generation served by an OpenAI-compatible ``/v1/completions`` endpoint, as ``vllm serve`` (or
SGLang, TGI) exposes one on an exported checkpoint, checked against the model before it is trusted.

A server can silently run another model than the one evaluated: vLLM's own GPT-2 and Llama code
builds the architecture's built-in activation, not CRReLU. So before any generation,
:func:`check_fidelity` asks the server for the log-probabilities of a few fixed prompts' own
tokens (``echo`` and ``logprobs``, the fields vLLM serves) and compares them with the local
model's. A difference beyond the tolerance is refused in one line, before anything is written.

Requests are sent ``max_concurrency`` at a time, retried as the judge's are (429 and 503 after
``Retry-After``, timeouts and other 5xx with backoff, other 4xx not at all); a prompt's K samples
are one request (``n``).

Example::

    >>> from crrelu_llm.evaluation.served import parse_served
    >>> parse_served("openai:runs/crrelu-shared@http://127.0.0.1:8000/v1")
    ('runs/crrelu-shared', 'http://127.0.0.1:8000/v1')
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch

from crrelu_llm.errors import EvaluationError, UsageError
from crrelu_llm.evaluation.http import RetriesExhausted, Unretriable, post_with_retries

# a handful of fixed prompts whose own tokens the server and the model must score alike
FIDELITY_PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "12+7=19. 3+5=8. 40+2=",
    "Question: what is the capital of France?\nAnswer:",
    "def add(a, b):\n    return a + b\n",
)
TOLERANCE = 0.05  # nats per token, the largest difference allowed (fp32 kernels differ by far less)


def parse_served(spec: str) -> tuple[str, str]:
    """``openai:<model>@<base url>`` -> (model, base url); anything else is a one-line usage error."""
    kind, _, rest = str(spec).partition(":")
    model, _, url = rest.partition("@")
    if kind != "openai" or not model or not url:
        raise UsageError(
            f"--generate-with {spec!r}: write openai:<model>@<base url>, e.g. openai:my-model@http://127.0.0.1:8000/v1"
        )
    return model, url.rstrip("/")


class ServedModel:
    """An OpenAI-compatible completions endpoint (``httpx``); the key, if any, from
    ``$OPENAI_API_KEY``, in a header only."""

    def __init__(self, spec: str, max_concurrency: int = 8, max_retries: int = 4, backoff: float = 1.0, timeout=120.0):
        self.spec = spec
        self.model, self.base_url = parse_served(spec)
        self.model_checked = None  # (model, tokenizer) once check_fidelity has passed
        self.max_concurrency, self.max_retries, self.backoff = max_concurrency, max_retries, backoff
        import httpx

        key = os.environ.get("OPENAI_API_KEY")
        self.client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_concurrency),
        )

    def post(self, body: dict) -> dict:
        """One ``/completions`` request, retried as the judge's requests are
        (:func:`crrelu_llm.evaluation.http.post_with_retries`)."""
        try:
            return post_with_retries(
                self.client, "/completions", {"model": self.model, **body}, dict, self.max_retries, self.backoff
            )
        except Unretriable as err:
            raise EvaluationError(
                f"the server at {self.base_url} refused the request ({err}): check the model name and the URL"
            ) from None
        except RetriesExhausted as err:
            raise EvaluationError(
                f"the server at {self.base_url} gave no answer after {self.max_retries + 1} tries ({err})"
            ) from None

    def prompt_logprobs(self, prompt: str) -> list[float]:
        """The log-probability the server gives each of the prompt's own tokens after the first."""
        answer = self.post({"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 1})
        values = answer["choices"][0]["logprobs"]["token_logprobs"]  # the prompt's tokens, then the one generated
        return [float(v) for v in values[1 : len(values) - 1]]

    def complete(self, prompt: str, settings, samples: int, seed: int) -> list[str]:
        wanted = settings.max_new_tokens
        if self.model_checked is not None:  # as local generation: no further than the model's last position
            from crrelu_llm.evaluation.generation import room

            model, tokenizer = self.model_checked
            wanted = room(model, len(tokenizer(prompt)["input_ids"]), wanted)
        body = {
            "prompt": prompt,
            "max_tokens": wanted,
            "temperature": settings.temperature if settings.do_sample else 0.0,
            "top_p": settings.top_p if settings.do_sample else 1.0,
            "n": samples,
            "seed": seed,
        }
        return [choice["text"] for choice in self.post(body)["choices"]]

    def generate(self, prompts: list[str], settings, samples: int = 1, desc: str = "Generating (served)"):
        """Every prompt's ``samples`` completions, ``max_concurrency`` requests in flight, with a
        progress bar: ``[[prompt 0's samples], ...]``."""
        from tqdm.auto import tqdm

        if any(not isinstance(p, str) for p in prompts):
            raise EvaluationError("served generation takes plain-text prompts (render conversations first)")
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [
                pool.submit(self.complete, p, settings, samples, settings.seed + i) for i, p in enumerate(prompts)
            ]
            return [f.result() for f in tqdm(futures, desc=desc, leave=False)]


@torch.no_grad()
def local_prompt_logprobs(model, tokenizer, prompt: str) -> list[float]:
    """The model's log-probability of each of the prompt's tokens after the first."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(next(model.parameters()).device)
    logits = model(input_ids=ids).logits.float().log_softmax(-1)
    return logits[0, :-1].gather(-1, ids[0, 1:, None])[:, 0].tolist()


def check_fidelity(served: ServedModel, model, tokenizer, tolerance: float = TOLERANCE) -> dict:
    """Refuse a server that is not ``model``: its log-probabilities of :data:`FIDELITY_PROMPTS`' own
    tokens must equal the local model's within ``tolerance`` nats. Returns what was compared."""
    worst, tokens = 0.0, 0
    for prompt in FIDELITY_PROMPTS:
        theirs, ours = served.prompt_logprobs(prompt), local_prompt_logprobs(model, tokenizer, prompt)
        if len(theirs) != len(ours):
            raise EvaluationError(
                f"the server at {served.base_url} tokenizes {prompt[:30]!r} into {len(theirs) + 1} tokens, the "
                f"model into {len(ours) + 1}: it does not serve this model's tokenizer"
            )
        worst = max([worst, *(abs(a - b) for a, b in zip(theirs, ours))])
        tokens += len(ours)
    if worst > tolerance:
        raise EvaluationError(
            f"the server at {served.base_url} does not serve this model: its log-probabilities differ from the "
            f"local model's by up to {worst:.3g} nats on {tokens} tokens of {len(FIDELITY_PROMPTS)} fixed prompts "
            f"(tolerance {tolerance:g}); a server that builds another activation (vLLM's own GPT-2 and Llama code "
            "builds the architecture's) is refused: serve the exported checkpoint with its remote code"
        )
    served.model_checked = (model, tokenizer)
    return {
        "server": served.spec,
        "prompts": len(FIDELITY_PROMPTS),
        "tokens": tokens,
        "max_difference": worst,
        "tolerance": tolerance,
    }
