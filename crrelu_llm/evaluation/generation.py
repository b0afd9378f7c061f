"""Generation for win rates: batched, left-padded, with recorded and reproducible settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from crrelu_llm.data.encoding import ensure_pad_token, model_device
from crrelu_llm.errors import EvaluationError


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
    if chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise EvaluationError(
            f"--chat-template: the tokenizer of {tokenizer.name_or_path or 'the model'} has no chat "
            "template; drop --chat-template for plain-text prompts, or use a model whose tokenizer "
            "has one"
        )
    if chat_template:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise EvaluationError("conversational prompts need chat_template: true (and a tokenizer with a template)")
    return prompt


def generate(model, tokenizer, prompts: list, settings: GenerationSettings, desc: str = "Generating") -> list[str]:
    """Completions for ``prompts``, batched, left-padded, reproducible for a given seed."""
    return [texts[0] for texts in generate_samples(model, tokenizer, prompts, settings, 1, desc)]


def room(model, prompt_tokens: int, wanted: int) -> int:
    """New tokens that fit the model's positions after the batch's (padded) prompts: a model with
    learned position embeddings (GPT-2's 1024) fails past its last one, whichever sample runs on."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit or prompt_tokens + wanted <= limit:
        return wanted
    if prompt_tokens >= limit:
        raise EvaluationError(f"prompts of {prompt_tokens} tokens fill the model's {limit} positions: shorten them")
    return limit - prompt_tokens


@torch.no_grad()
def generate_samples(
    model, tokenizer, prompts: list, settings: GenerationSettings, samples: int, desc: str = "Generating"
) -> list[list[str]]:
    """``samples`` completions for each prompt, drawn in one ``generate`` call per batch of prompts
    (``num_return_sequences``): ``[[prompt 0's samples], ...]``, reproducible for a given seed."""
    if not prompts:
        raise EvaluationError("no prompts to generate from")
    tokenizer.padding_side = "left"
    ensure_pad_token(tokenizer)
    model.eval()
    device = model_device(model)
    texts = [_render(tokenizer, p, settings.chat_template) for p in prompts]
    outputs = []
    for start in tqdm(range(0, len(texts), settings.batch_size), desc=desc, leave=False):
        torch.manual_seed(settings.seed + start)
        batch = tokenizer(
            texts[start : start + settings.batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=not settings.chat_template,
        ).to(device)
        kwargs = dict(
            max_new_tokens=room(model, batch["input_ids"].shape[1], settings.max_new_tokens),
            do_sample=settings.do_sample,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **settings.extra,
        )
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        if samples > 1:
            kwargs["num_return_sequences"] = samples
        generated = model.generate(**batch, **kwargs)
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        texts_out = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)  # prompt by prompt, samples together
        outputs += [texts_out[i : i + samples] for i in range(0, len(texts_out), samples)]
    return outputs
