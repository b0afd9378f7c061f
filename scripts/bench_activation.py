#!/usr/bin/env python
"""Time forward+backward of the activation alone on MLP-shaped tensors, against GELU.

For each dtype and width (tokens x 4*hidden for GPT-2 small/medium/large), runs in one process,
interleaved in a shuffled order on every repeat:

  gelu             torch.nn.GELU (native, the baseline)
  naive            relu(x) + eps*x*exp(-x^2/2) as the paper's snippet writes it
  crrelu           crrelu_llm.CRReLU, eager (kernel 'auto': Triton on CUDA, PyTorch ops elsewhere)
  crrelu-compiled  torch.compile(CRReLU())
  crrelu-kernel=compiled   eager module with the opt-in compiled kernel (CPU)
  crrelu-kernel=torch      eager module with the PyTorch-ops kernel (CUDA, against Triton)

and prints the median time and the bytes saved for backward (saved-tensor hooks), each as a
ratio to GELU's. --json FILE writes every figure.

  python scripts/bench_activation.py                 # full table
  python scripts/bench_activation.py --quick         # one width, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time

import torch
from torch import nn

import crrelu_llm
from crrelu_llm import kernels
from crrelu_llm.activation import crrelu_reference
from crrelu_llm.memory import count_saved_bytes

WIDTHS = {"gpt2-small": 3072, "gpt2-medium": 4096, "gpt2-large": 5120}


def saved_bytes(fn, x: torch.Tensor) -> int:
    with count_saved_bytes() as saved:
        fn(x)
    return saved["bytes"]


def variants(device: str, include_compiled: bool) -> dict[str, tuple[object, str]]:
    """name -> (callable, CRReLU kernel to select for its whole forward+backward)."""
    crrelu = crrelu_llm.CRReLU().to(device)
    out = {
        "gelu": (nn.GELU(), "auto"),
        "naive": (lambda x: crrelu_reference(x, crrelu.epsilon), "auto"),
        "crrelu": (crrelu, "auto"),
    }
    if include_compiled:
        out["crrelu-compiled"] = (torch.compile(crrelu_llm.CRReLU().to(device)), "auto")
        if device == "cpu":
            out["crrelu-kernel=compiled"] = (crrelu_llm.CRReLU().to(device), "compiled")
    if device == "cuda" and kernels.triton_available():
        out["crrelu-kernel=torch"] = (crrelu_llm.CRReLU().to(device), "torch")
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_once(variant, x: torch.Tensor, grad: torch.Tensor, device: str) -> float:
    fn, kernel = variant
    x.grad = None
    kernels.set_kernel(kernel)  # held for the backward too
    try:
        sync(device)
        start = time.perf_counter()
        fn(x).backward(grad)
        sync(device)
        return time.perf_counter() - start
    finally:
        kernels.set_kernel("auto")


def bench(dtype: torch.dtype, width: int, tokens: int, repeats: int, device: str, include_compiled: bool):
    torch.manual_seed(0)
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, width, device=device, dtype=dtype)
    fns = variants(device, include_compiled)
    for fn in fns.values():  # warm-up (and compile)
        for _ in range(2):
            time_once(fn, x, grad, device)
    times = {name: [] for name in fns}
    order = list(fns)
    for _ in range(repeats):
        random.shuffle(order)
        for name in order:
            times[name].append(time_once(fns[name], x, grad, device))
    rows = []
    base_time = statistics.median(times["gelu"])
    base_bytes = saved_bytes(fns["gelu"][0], x)
    for name, (fn, _) in fns.items():
        median = statistics.median(times[name])
        nbytes = saved_bytes(fn, x)
        rows.append({
            "variant": name, "dtype": str(dtype).removeprefix("torch."), "tokens": tokens, "width": width,
            "device": device, "median_ms": median * 1e3, "time_ratio": median / base_time,
            "saved_bytes": nbytes, "saved_ratio": nbytes / base_bytes,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--widths", default=",".join(WIDTHS), help=f"any of {', '.join(WIDTHS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--quick", action="store_true", help="gpt2-small width only, 5 repeats")
    parser.add_argument("--json", help="write all figures to this file")
    args = parser.parse_args()
    widths = ["gpt2-small"] if args.quick else args.widths.split(",")
    repeats = 5 if args.quick else args.repeats
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, device {args.device}, "
          f"threads {torch.get_num_threads()}, {args.tokens} tokens, {repeats} interleaved repeats (median)")
    print(f"{'dtype':9s} {'shape':>12s} {'variant':24s} {'ms':>9s} {'time/GELU':>10s} {'saved/GELU':>11s}")
    results = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        for width_name in widths:
            width = WIDTHS[width_name]
            for row in bench(dtype, width, args.tokens, repeats, args.device, not args.no_compile):
                results.append({**row, "width_name": width_name})
                print(f"{row['dtype']:9s} {args.tokens:>5d}x{width:<6d} {row['variant']:24s} "
                      f"{row['median_ms']:9.2f} {row['time_ratio']:10.2f} {row['saved_ratio']:11.2f}", flush=True)
    if args.json:
        meta = {"torch": torch.__version__, "device": args.device, "argv": sys.argv,
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
