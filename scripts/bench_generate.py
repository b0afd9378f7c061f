"""Greedy decoding per new token: CRReLU vs GELU vs the model's own activation, same process.

    python scripts/bench_generate.py                                   # GPT-2-small shape, CPU, fp32
    python scripts/bench_generate.py --preset gpt2-large --device cuda --dtype bfloat16

Three copies of one randomly initialised GPT-2-shaped model (same weights) differ only in the
MLP activation: the model's own (`gelu_new`), torch's GELU (patched in) and CRReLU (patched
in). Each repeat times `generate` of exactly --new-tokens tokens for batch 1 and batch 8, the
three models interleaved, after --warmup untimed rounds. Printed: median ms per new token with
its interquartile range, and the CRReLU/GELU ratio (median and IQR over repeats), flagged when
the ratio's range crosses the target.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import crrelu_llm  # noqa: E402
from crrelu_llm.files import write_json  # noqa: E402
from timing import check_counts, describe, interleaved, quartiles, ratio  # noqa: E402

PRESETS = {"gpt2-small": {"n_layer": 12, "n_embd": 768, "n_head": 12},
           "gpt2-large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
           "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4}}


def build(preset: str, activation: str | None, dtype, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**PRESETS[preset], vocab_size=50257, n_positions=1024))
    if activation:
        crrelu_llm.patch_model(model, activation=activation)
    return model.to(device=device, dtype=dtype).eval()


def per_token_ms(model, batch: int, new_tokens: int, device) -> float:
    ids = torch.randint(100, 1000, (batch, 16), generator=torch.Generator().manual_seed(batch)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / new_tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpt2-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--target", type=float, default=1.05, help="CRReLU/GELU per-token ratio to meet")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    check_counts(parser, args.warmup, args.repeats)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    models = {"own (gelu_new)": build(args.preset, None, dtype, device),
              "gelu": build(args.preset, "gelu", dtype, device),
              "crrelu": build(args.preset, "crrelu", dtype, device)}
    results = {"preset": args.preset, "device": str(device), "dtype": args.dtype, "new_tokens": args.new_tokens,
               "warmup": args.warmup, "repeats": args.repeats, "torch": torch.__version__, "batches": {}}
    for batch in args.batches:
        fns = {name: (lambda m=model: per_token_ms(m, batch, args.new_tokens, device)) for name, model in models.items()}
        times = interleaved(fns, args.warmup, args.repeats)
        entry = {name: quartiles(t) for name, t in times.items()}
        entry["crrelu/gelu"] = ratio(times, "crrelu", "gelu")
        results["batches"][str(batch)] = entry
        print(f"batch {batch}: " + ", ".join(f"{name} {e['median']:.2f} ms/token [IQR {e['q1']:.2f}-{e['q3']:.2f}]"
                                              for name, e in entry.items() if name != "crrelu/gelu")
              + f"; CRReLU/GELU {describe(entry['crrelu/gelu'], args.target)}", flush=True)
    if args.json:
        write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
