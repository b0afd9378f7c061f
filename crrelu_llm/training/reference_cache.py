"""Reference log-probabilities computed once and shared by the DPO runs that can use them.

Every beta and seed of an arm trains against the same reference (the arm's SFT model) on the
same data, so the reference's log-probabilities of every chosen and rejected response are the
same for all of them: about a quarter of a DPO step's compute, repeated in every run. TRL
computes them up front with ``precompute_ref_log_probs: true``; with ``ref_logps_cache_dir``
:class:`~crrelu_llm.training.trainers.dpo.CRReLUDPOTrainer` keeps them in that directory under a key of:

- the reference weights: a SHA-256 of the reference's state dict (:func:`weights_checksum`, the
  same digest TRL keeps from 1.15 on), taken before anything is sharded;
- the tokenized data: a SHA-256 of the prompt, chosen and rejected token ids, in order;
- the truncation settings applied after tokenization (``max_length``, ``truncation_mode``,
  ``max_prompt_length``, ``prompt_truncation_mode``) and the padding token.

Any change in these gives another key, and the log-probabilities are computed again. A file is
written whole (to a temporary name, then renamed) next to a JSON record of its key's inputs;
runs started together take turns on a lock file, so the first computes and the rest reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger("crrelu_llm.reference_cache")
COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
SETTINGS = ("max_length", "truncation_mode", "max_prompt_length", "prompt_truncation_mode", "pad_token")


def weights_checksum(module) -> str:
    """SHA-256 over a module's state dict, entry by entry in name order: each tensor's dtype, then
    its bytes (bfloat16 and float8, which numpy cannot hold, as float32)."""
    import torch

    digest = hashlib.sha256()
    for _, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu()
        digest.update(str(tensor.dtype).encode())
        if tensor.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
            tensor = tensor.to(torch.float32)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def data_checksum(dataset) -> str:
    """SHA-256 of the token-id columns, read through Arrow (no Python loop over rows)."""
    import pyarrow as pa

    table = dataset.with_format("arrow").select_columns([c for c in TOKEN_COLUMNS if c in dataset.column_names])
    digest = hashlib.sha256()
    for start in range(0, len(table), 10_000):
        chunk = table[start : start + 10_000]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, chunk.schema) as writer:
            writer.write_table(chunk.combine_chunks())
        digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def cache_key(model_hash: str, dataset, args) -> tuple[str, dict]:
    inputs = {
        "reference_weights": model_hash,
        "data": data_checksum(dataset),
        "rows": len(dataset),
        **{name: getattr(args, name, None) for name in SETTINGS},
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:24], inputs


def cached_reference_logps(folder: Path, dataset, name: str, model_hash: str, args, compute, accelerator):
    """``dataset`` with the reference log-prob columns: from ``folder`` when its key is there,
    else from ``compute()`` (TRL's precompute), then stored in ``folder`` for the next run."""
    from accelerate.utils import broadcast_object_list
    from datasets import Dataset, concatenate_datasets

    key = [cache_key(model_hash, dataset, args) if accelerator.is_main_process else None]
    broadcast_object_list(key, from_process=0)  # ranks hash their own shards of a ZeRO-3 model: use rank 0's
    key, inputs = key[0]
    file = folder / f"{name}-{key}.parquet"
    # runs of one arm started at once (experiment --executor local/slurm) wait for the first to
    # compute them; the other ranks of this run wait for rank 0 in the broadcast below
    lock = FileLock(str(folder / f".{name}-{key}.lock")) if accelerator.is_main_process else nullcontext()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    with lock:
        rows = [len(Dataset.from_parquet(str(file))) if accelerator.is_main_process and file.exists() else None]
        broadcast_object_list(rows, from_process=0)
        if rows[0] == len(dataset):
            logger.info("reference log-probabilities for %s: reusing %s", name, file)
            return concatenate_datasets([dataset, Dataset.from_parquet(str(file))], axis=1)
        if rows[0] is not None:
            logger.warning("%s holds %d rows for %d: computing again", file, rows[0], len(dataset))
        logger.info("reference log-probabilities for %s: computing (key %s)", name, key)
        out = compute()
        if accelerator.is_main_process:
            tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
            out.select_columns(list(COLUMNS)).to_parquet(str(tmp))
            os.replace(tmp, file)
            file.with_suffix(".json").write_text(json.dumps(inputs, indent=1, default=str))
        accelerator.wait_for_everyone()
    return out
