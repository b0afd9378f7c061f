#!/usr/bin/env python
"""Time full training steps (TRL DPOTrainer and SFTTrainer) of one model with GELU and CRReLU.

All arms start from the same weights (a GPT-2-small-shaped model built offline: 12 layers,
768 hidden, 50257 vocabulary), see the same batch, and are stepped in a shuffled, interleaved
order; the step is ``trainer.training_step`` plus ``optimizer.step``. Arms:

  gelu_new   GPT-2 as shipped (NewGELUActivation, the python tanh formula)
  gelu       torch's native GELU (the stricter baseline)
  crrelu     patched with crrelu_llm.patch_model

Prints the median step time with its interquartile range, the per-round ratio to each GELU
baseline (median and IQR, flagged when its range crosses --target), and the memory of each arm
as ratios: on CUDA the peak allocated memory, on CPU the bytes autograd saves for backward.
At least 2 warm-up rounds and 10 interleaved repeats (fewer once reported a 9% slowdown that
a longer run did not reproduce).

  python benchmarks/bench_train_step.py                   # DPO and SFT, GPT-2-small shape
  python benchmarks/bench_train_step.py --layers 2 --quick
  python benchmarks/bench_train_step.py --preset gpt2-large --dtype bfloat16   # the GPU check
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from record import add_flags, output_path
from record import meta as record_meta
from timing import check_counts, describe, interleaved, quartiles, ratio

PRESETS = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
}


def build_arms(preset: str, layers: int | None, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, GPT2Config

    import crrelu_llm

    sizes = dict(PRESETS[preset])
    if layers:
        sizes["n_layer"] = layers
    config = GPT2Config(vocab_size=50257, n_positions=1024, activation_function="gelu_new", **sizes)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype)
    arms = {"gelu_new": base}
    arms["gelu"] = copy.deepcopy(base)
    crrelu_llm.patch_model(arms["gelu"], activation="gelu")
    arms["crrelu"] = copy.deepcopy(base)
    crrelu_llm.patch_model(arms["crrelu"], activation="crrelu")
    return arms


def make_trainers(kind: str, arms, batch_pairs: int, seq: int, device: str):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from crrelu_llm.patching.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    half = seq // 2
    rows = [
        {
            "prompt": ("question %d " % i * 40)[:half],
            "chosen": ("good answer " * 40)[:half],
            "rejected": ("bad reply " * 40)[:half],
        }
        for i in range(batch_pairs)
    ]
    common = dict(
        per_device_train_batch_size=batch_pairs,
        report_to=[],
        save_strategy="no",
        max_length=seq,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=device == "cpu",
        learning_rate=1e-6,
        dataloader_num_workers=0,
    )
    trainers = {}
    for name, model in arms.items():
        out = f"/tmp/crrelu-bench-{kind}-{name}"
        if kind == "dpo":
            ref = copy.deepcopy(model).eval().requires_grad_(False)
            trainer = DPOTrainer(
                model=model,
                ref_model=ref,
                args=DPOConfig(output_dir=out, **common),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
            )
        else:
            texts = [{"text": r["prompt"] + r["chosen"]} for r in rows]
            trainer = SFTTrainer(
                model=model,
                args=SFTConfig(output_dir=out, **common),
                train_dataset=Dataset.from_list(texts),
                processing_class=tokenizer,
            )
        trainer.create_optimizer_and_scheduler(num_training_steps=1000)
        trainer.current_gradient_accumulation_steps = 1
        batch = next(iter(trainer.get_train_dataloader()))
        trainers[name] = (trainer, batch)
    return trainers


def step(trainer, batch, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def memory_of_step(trainer, batch, device: str) -> int:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step(trainer, batch, device)
        return torch.cuda.max_memory_allocated()
    from memory import count_saved_bytes

    with count_saved_bytes() as saved:
        trainer.training_step(trainer.model, batch)
    trainer.optimizer.zero_grad(set_to_none=True)
    return saved["bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-small", choices=list(PRESETS))
    parser.add_argument("--layers", type=int, default=None, help="override the number of blocks")
    parser.add_argument("--kinds", default="dpo,sft")
    parser.add_argument("--batch-pairs", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (prompt + completion)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--target", type=float, default=1.02, help="CRReLU/GELU step-time ratio to meet")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_flags(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    check_counts(parser, args.warmup, args.repeats)
    repeats = args.repeats
    dtype = getattr(torch, args.dtype)
    print(
        f"# torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, {args.preset}"
        f"{f' ({args.layers} layers)' if args.layers else ''}, {args.dtype}, {args.batch_pairs} pairs x {args.seq} "
        f"tokens, {args.warmup} warm-up + {repeats} interleaved rounds (median, IQR)"
    )
    results = []
    for kind in args.kinds.split(","):
        arms = build_arms(args.preset, args.layers, dtype, args.device)
        trainers = make_trainers(kind, arms, args.batch_pairs, args.seq, args.device)
        times = interleaved(
            {name: (lambda t=t: step(*t, args.device)) for name, t in trainers.items()}, args.warmup, repeats
        )
        memory = {name: memory_of_step(*trainers[name], args.device) for name in trainers}
        for name in trainers:
            q = quartiles(times[name])
            row = {
                "kind": kind,
                "arm": name,
                "median_s": q["median"],
                "iqr_s": [q["q1"], q["q3"]],
                "memory_bytes": memory[name],
                "time_vs_gelu_new": ratio(times, name, "gelu_new"),
                "time_vs_gelu": ratio(times, name, "gelu"),
                "memory_vs_gelu_new": memory[name] / memory["gelu_new"],
                "memory_vs_gelu": memory[name] / memory["gelu"],
            }
            results.append(row)
            print(
                f"{kind:4s} {name:9s} step {q['median'] * 1e3:8.1f} ms [IQR {q['q1'] * 1e3:.1f}-{q['q3'] * 1e3:.1f}]  "
                f"time/gelu {describe(row['time_vs_gelu'], args.target)}  memory/gelu {row['memory_vs_gelu']:.3f}",
                flush=True,
            )
        del trainers, arms
    meta = record_meta(device=args.device)
    out = output_path(args, "train_step", meta)
    if out:
        from crrelu_llm.files import write_json

        write_json(out, {"meta": meta, "results": results})


if __name__ == "__main__":
    main()
