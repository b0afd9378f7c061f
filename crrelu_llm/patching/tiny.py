"""Tiny models built offline from configs, for tests, CI and the offline demo.

``tiny_config(model_type)`` takes the architecture's default config and shrinks every size
field it knows; ``tiny_causal_lm(model_type)`` builds the model from it with a fixed seed.
Nothing is downloaded.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from crrelu_llm.errors import UsageError, did_you_mean

# Size fields across architectures and the tiny value each gets when the config has it.
_TINY_SIZES = {
    "hidden_size": 32,
    "n_embd": 32,
    "d_model": 32,
    "embed_dim": 32,
    "dim": 32,
    "word_embed_proj_dim": 32,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "n_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_heads": 4,
    "n_heads": 4,
    "num_key_value_heads": 2,
    "multi_query_group_num": 2,
    "intermediate_size": 64,
    "n_inner": 64,
    "ffn_dim": 64,
    "ffn_hidden_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 128,
    "max_position_embeddings": 128,
    "n_positions": 128,
    "n_ctx": 128,
    "head_dim": 8,
    "rotary_dim": 4,
    "sliding_window": 64,
    "query_pre_attn_scalar": 8,
}


def _set(config: PretrainedConfig, key: str, value) -> None:
    try:
        setattr(config, key, value)
    except AttributeError:  # a derived, read-only property (Falcon's head_dim, Mamba's layer_types)
        pass


def tiny_config(model_type: str, **overrides) -> PretrainedConfig:
    """The default config of ``model_type`` with its size fields made tiny."""
    if model_type not in CONFIG_MAPPING:
        raise UsageError(
            f"unknown transformers model type {model_type!r}"
            + did_you_mean(model_type, CONFIG_MAPPING.keys(), show=str, n=3)
        )
    config = AutoConfig.for_model(model_type)
    for key, value in _TINY_SIZES.items():
        if key in config.to_dict() or hasattr(config, key):
            current = getattr(config, key, None)
            if current is None and key in {"sliding_window", "head_dim", "rotary_dim"}:
                continue
            _set(config, key, value)
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(getattr(config, token, None), int) and getattr(config, token) >= config.vocab_size:
            _set(config, token, config.vocab_size - 1)
    for key, value in overrides.items():
        setattr(config, key, value)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and layer_types and hasattr(config, "num_hidden_layers"):
        n = config.num_hidden_layers
        _set(config, "layer_types", [layer_types[i % len(layer_types)] for i in range(n)])
    return config


TINY_MODEL_PREFIX = "tiny-"


def tiny_model_type(name: str) -> str | None:
    """``gpt2`` for ``tiny-gpt2`` (a built-in tiny model), None for anything else, including a
    local directory that happens to be called ``tiny-...``."""
    from pathlib import Path

    if name.startswith(TINY_MODEL_PREFIX) and not Path(name).exists():
        return name[len(TINY_MODEL_PREFIX) :]
    return None


def tiny_causal_lm(model_type: str = "gpt2", seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny, randomly initialised causal LM of ``model_type``, in eval mode."""
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_tokenizer():
    """A character-level fast tokenizer (printable ASCII and newline, 100 ids) built offline
    with the ``tokenizers`` library; ids fit the tiny models' 128-entry vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    chars = ["\n"] + [chr(i) for i in range(32, 127)]
    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<eos>"
    )
