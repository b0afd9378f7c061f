"""Text pairs as the token tensors a causal LM scores: shared by scoring, drift and the probes."""

from __future__ import annotations

import torch

from crrelu_llm.errors import DataError, EvaluationError


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def check_tokenizers(tokenizer, *models) -> None:
    vocab = len(tokenizer)
    for model in models:
        size = model.get_input_embeddings().weight.shape[0]
        if size < vocab:
            raise EvaluationError(
                f"{model.config._name_or_path or type(model).__name__} has {size} embeddings but the tokenizer has "
                f"{vocab} tokens: the tokenizer does not belong to this model"
            )


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int):
    """Token ids of prompt + completion (tokenized apart, as TRL does), right-padded, with a mask
    that marks the completion tokens (truncated to ``max_length`` from the right)."""
    rows = []
    for prompt, completion in pairs:
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        rows.append(((p + c)[:max_length], ([0] * len(p) + [1] * len(c))[:max_length]))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    scored = torch.tensor([m + [0] * (width - len(m)) for _, m in rows])
    return ids, attention, scored


def check_chat_template(example: dict, tokenizer, model: str, where: str, fix: str) -> None:
    """Conversational rows (lists of messages) need a tokenizer with a chat template: refuse them
    up front, naming the data, the model whose tokenizer lacks one, and ``fix``."""
    from trl.data_utils import is_conversational

    if is_conversational(example) and getattr(tokenizer, "chat_template", None) is None:
        raise DataError(
            f"{where} holds conversational rows (lists of messages), but the tokenizer of {model} has no "
            f"chat template: {fix}, or give the data as plain text (prompt/completion or "
            "prompt/chosen/rejected strings)"
        )


def ensure_pad_token(tokenizer):
    """Pad with the end-of-sequence token where a tokenizer has no pad token (GPT-2's): the one
    place this project sets it, for every tokenizer it loads or is given."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
