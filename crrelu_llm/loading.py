"""Load causal LMs by hub id, local path or built-in tiny name, and check patched ones.

``MODEL`` on the command line is a Hugging Face hub id (``gpt2``), a local directory written by
``save_pretrained``, or ``tiny-<model_type>`` (``tiny-gpt2``, ``tiny-llama``...): a tiny random
model built offline, for trying the tool without a download. ``trust_remote_code`` is off
unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from .errors import ModelLoadError, UsageError
from .patch import epsilon_parameters, epsilon_tensor, verify_patch
from .tiny import TINY_MODEL_PREFIX, tiny_causal_lm, tiny_config, tiny_model_type, tiny_tokenizer


def _hint(name: str) -> str:
    if Path(name).exists():
        return f"{name!r} exists locally but is not a transformers checkpoint (no loadable config.json?)"
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        return f"{name!r} looks like a path but no such local directory exists"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return "HF_HUB_OFFLINE=1 is set and the model is not in the local cache; pass a local directory"
    return (
        f"{name!r} is neither a local directory nor a reachable hub id; check the spelling, "
        f"your network, or use a built-in tiny model such as '{TINY_MODEL_PREFIX}gpt2'"
    )


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config only (no weights are downloaded)."""
    if tiny_model_type(name_or_path):
        try:
            return tiny_config(tiny_model_type(name_or_path))
        except ValueError as err:
            raise ModelLoadError(f"{name_or_path!r}: {err}") from err
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load the config of {name_or_path!r}: {_hint(name_or_path)}. ({err})") from err


def load_causal_lm(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
    **kwargs,
) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with clear errors, then a check that a patched
    checkpoint came back as saved: the recorded modules are in place and every ``epsilon``
    equals the value stored in the safetensors files, bit for bit."""
    model_type = tiny_model_type(name_or_path)
    if model_type:
        try:
            return tiny_causal_lm(model_type, seed=seed)
        except ValueError as err:
            raise ModelLoadError(f"{name_or_path!r}: {err}") from err
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise UsageError(f"dtype must be 'auto' or a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
        dtype = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load {name_or_path!r}: {_hint(name_or_path)}. ({err})") from err
    verify_patch(model)
    if Path(name_or_path).is_dir():
        check_stored_epsilons(model, Path(name_or_path))
    return model


def stored_epsilons(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Every ``*.epsilon`` tensor stored in the checkpoint's safetensors files."""
    found = {}
    for file in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if key.endswith(".epsilon"):
                    found[key] = handle.get_tensor(key)
    return found


def check_stored_epsilons(model: torch.nn.Module, checkpoint_dir: Path) -> None:
    """Raise if a loaded ``epsilon`` differs from the checkpoint's (transformers can silently
    re-initialise parameters it does not know)."""
    stored = stored_epsilons(checkpoint_dir)
    for name, param in epsilon_parameters(model).items():
        if name not in stored:
            continue
        expected = stored[name].to(param.dtype).reshape(())
        loaded = epsilon_tensor(param).cpu()
        if not torch.equal(loaded, expected):
            raise ModelLoadError(
                f"{name} loaded as {loaded.item()!r} but {checkpoint_dir} stores {stored[name].item()!r}: "
                "the checkpoint was not loaded faithfully (was crrelu_llm imported before loading?)"
            )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a hub id or local checkpoint (``tiny-*``: the offline character tokenizer)."""
    from transformers import AutoTokenizer

    if tiny_model_type(name_or_path):
        return tiny_tokenizer()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"No tokenizer could be loaded from {name_or_path!r}: {_hint(name_or_path)} ({err})") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
