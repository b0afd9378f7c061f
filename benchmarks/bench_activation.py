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

and prints the median time with its interquartile range, the per-round ratio to GELU (median
and IQR, flagged when its range crosses --target), and the bytes saved for backward
(saved-tensor hooks) as a ratio to GELU's. At least 2 warm-up rounds and 10 repeats.
--json FILE writes every figure.

--profile then runs five timed forward+backward iterations of gelu, crrelu (and, on CUDA,
crrelu-kernel=torch) once more under torch.profiler and cProfile, per dtype at the widest
width, and prints where each iteration's time goes (benchmarks/profiling.py); --json keeps it.

--host measures per-call host time instead: a 1 x width tensor, forward without grad and
forward+backward, each round 1000 calls of CRReLU and of GELU, interleaved (target 1.5), and
of the same kernels registered as a torch.library custom op (what registering would cost).

  python benchmarks/bench_activation.py                 # full table
  python benchmarks/bench_activation.py --quick         # one width
  python benchmarks/bench_activation.py --host          # per-call overhead on tiny tensors
"""

from __future__ import annotations

import argparse
import functools
import platform
import time

import torch
from memory import count_saved_bytes
from profiling import print_profile, profile_run
from record import add_flags, output_path
from record import meta as record_meta
from timing import check_counts, describe, interleaved, quartiles, ratio, using_kernel
from torch import nn

import crrelu_llm
from crrelu_llm.files import write_json
from crrelu_llm.ops import kernels
from crrelu_llm.ops.activation import crrelu_reference

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
    with using_kernel(kernel):  # held for the backward too
        sync(device)
        start = time.perf_counter()
        fn(x).backward(grad)
        sync(device)
        return time.perf_counter() - start


def profile_variants(dtype: torch.dtype, width: int, tokens: int, device: str, iterations: int = 5) -> dict:
    torch.manual_seed(0)
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, width, device=device, dtype=dtype)
    out = {}
    for name, variant in variants(device, include_compiled=False).items():
        if name == "naive":
            continue
        time_once(variant, x, grad, device)  # warm
        out[name] = profile_run(
            lambda v=variant: [time_once(v, x, grad, device) for _ in range(iterations)],
            iterations,
            torch.device(device),
        )
        print_profile(f"{name}, {str(dtype).removeprefix('torch.')} {tokens}x{width}", out[name], "iteration")
    return out


def bench(
    dtype: torch.dtype,
    width: int,
    tokens: int,
    warmup: int,
    repeats: int,
    device: str,
    include_compiled: bool,
    target: float,
):
    torch.manual_seed(0)
    x = torch.randn(tokens, width, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, width, device=device, dtype=dtype)
    fns = variants(device, include_compiled)
    for fn in fns.values():  # compile outside the timed rounds
        time_once(fn, x, grad, device)
    times = interleaved({name: (lambda v=v: time_once(v, x, grad, device)) for name, v in fns.items()}, warmup, repeats)
    rows = []
    base_bytes = saved_bytes(fns["gelu"][0], x)
    for name, (fn, _) in fns.items():
        nbytes = saved_bytes(fn, x)
        q, r = quartiles(times[name]), ratio(times, name, "gelu")
        rows.append(
            {
                "variant": name,
                "dtype": str(dtype).removeprefix("torch."),
                "tokens": tokens,
                "width": width,
                "device": device,
                "median_ms": q["median"] * 1e3,
                "iqr_ms": [q["q1"] * 1e3, q["q3"] * 1e3],
                "time_ratio": r,
                "verdict": describe(r, target),
                "saved_bytes": nbytes,
                "saved_ratio": nbytes / base_bytes,
            }
        )
    return rows


class CustomOpCRReLU(nn.Module):
    """CRReLU's kernels behind a ``torch.library.custom_op`` (forward and backward ops, autograd
    registered): what registering the activation with torch.library would cost per call."""

    def __init__(self):
        super().__init__()
        self.epsilon = nn.Parameter(torch.tensor(crrelu_llm.ops.activation.DEFAULT_EPSILON_INIT))
        self.op = _custom_op()

    def forward(self, x):
        return self.op(x, self.epsilon)


@functools.cache
def _custom_op():
    @torch.library.custom_op("crrelu_bench::crrelu", mutates_args=())
    def crrelu(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return kernels.crrelu_forward(x, eps)

    @crrelu.register_fake
    def _(x, eps):
        return torch.empty_like(x)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        x, eps = ctx.saved_tensors
        return kernels.crrelu_backward(grad, x, eps, *ctx.needs_input_grad)

    crrelu.register_autograd(backward, setup_context=setup_context)
    return crrelu


def host_overhead(width: int, calls: int, warmup: int, repeats: int, target: float, device: str) -> list[dict]:
    """Per-call host time on a 1 x width tensor: forward without grad, and forward+backward
    (on CUDA without synchronising: the time the host spends issuing the calls)."""
    x = torch.randn(1, width, device=device, requires_grad=True)
    grad = torch.ones(1, width, device=device)
    modules = {
        "gelu": nn.GELU(),
        "crrelu": crrelu_llm.CRReLU().to(device),
        "crrelu-custom-op": CustomOpCRReLU().to(device),
    }

    def forward(module):
        def run():
            with torch.no_grad():
                start = time.perf_counter()
                for _ in range(calls):
                    module(x)
                return (time.perf_counter() - start) / calls

        return run

    def forward_backward(module):
        def run():
            start = time.perf_counter()
            for _ in range(calls):
                module(x).backward(grad)
            return (time.perf_counter() - start) / calls

        return run

    rows = []
    for mode, make in (("forward, no grad", forward), ("forward+backward", forward_backward)):
        times = interleaved({name: make(m) for name, m in modules.items()}, warmup, repeats)
        r, r_op = ratio(times, "crrelu", "gelu"), ratio(times, "crrelu-custom-op", "gelu")
        rows.append(
            {
                "mode": mode,
                "width": width,
                "gelu_us": quartiles(times["gelu"]),
                "crrelu_us": quartiles(times["crrelu"]),
                "ratio": r,
                "verdict": describe(r, target),
                "custom_op_us": quartiles(times["crrelu-custom-op"]),
                "custom_op_ratio": r_op,
            }
        )
        g, c, o = rows[-1]["gelu_us"], rows[-1]["crrelu_us"], rows[-1]["custom_op_us"]
        print(
            f"{mode:18s} 1x{width}: GELU {g['median'] * 1e6:.2f} us [IQR {g['q1'] * 1e6:.2f}-{g['q3'] * 1e6:.2f}], "
            f"CRReLU {c['median'] * 1e6:.2f} us [IQR {c['q1'] * 1e6:.2f}-{c['q3'] * 1e6:.2f}]; "
            f"CRReLU/GELU {describe(r, target)}; as a custom op {o['median'] * 1e6:.2f} us, "
            f"{r_op['median']:.2f} [IQR {r_op['q1']:.2f}-{r_op['q3']:.2f}] GELU",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--target", type=float, default=None, help="CRReLU/GELU ratio to meet (default 1.1; --host 1.5)"
    )
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--widths", default=",".join(WIDTHS), help=f"any of {', '.join(WIDTHS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--quick", action="store_true", help="gpt2-small width only")
    parser.add_argument("--profile", action="store_true", help="then profile gelu and crrelu at the widest width")
    parser.add_argument("--host", action="store_true", help="per-call host time on 1 x width tensors instead")
    parser.add_argument("--calls", type=int, default=1000, help="calls per round with --host")
    add_flags(parser)
    args = parser.parse_args()
    check_counts(parser, args.warmup, args.repeats)
    if args.profile and args.host:
        parser.error("--profile profiles the forward+backward table; leave out --host")
    widths = ["gpt2-small"] if args.quick else args.widths.split(",")
    target = args.target or (1.5 if args.host else 1.1)
    meta = record_meta(device=args.device, threads=torch.get_num_threads(), warmup=args.warmup, repeats=args.repeats)
    out = output_path(args, "host" if args.host else "activation", meta)
    if args.host:
        print(
            f"# torch {torch.__version__}, threads {torch.get_num_threads()}, {args.calls} calls per round, "
            f"{args.warmup} warm-up + {args.repeats} interleaved rounds (median, IQR)"
        )
        results = host_overhead(WIDTHS["gpt2-large"], args.calls, args.warmup, args.repeats, target, args.device)
    else:
        print(
            f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, device {args.device}, "
            f"threads {torch.get_num_threads()}, {args.tokens} tokens, {args.warmup} warm-up + {args.repeats} "
            "interleaved rounds (median, IQR)"
        )
        print(f"{'dtype':9s} {'shape':>12s} {'variant':24s} {'ms':>9s} {'IQR ms':>17s} {'saved/GELU':>11s}  time/GELU")
        results = []
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            for width_name in widths:
                width = WIDTHS[width_name]
                for row in bench(
                    dtype, width, args.tokens, args.warmup, args.repeats, args.device, not args.no_compile, target
                ):
                    results.append({**row, "width_name": width_name})
                    iqr = f"{row['iqr_ms'][0]:.2f}-{row['iqr_ms'][1]:.2f}"
                    print(
                        f"{row['dtype']:9s} {args.tokens:>5d}x{width:<6d} {row['variant']:24s} "
                        f"{row['median_ms']:9.2f} {iqr:>17s} {row['saved_ratio']:11.2f}  {row['verdict']}",
                        flush=True,
                    )
    if out:  # the timings are kept even if profiling fails
        write_json(out, {"meta": meta, "results": results})
    profiles = {}
    if args.profile:
        width = max(WIDTHS[name] for name in widths)
        for dtype_name in args.dtypes.split(","):
            profiles[f"{dtype_name} {args.tokens}x{width}"] = profile_variants(
                getattr(torch, dtype_name), width, args.tokens, args.device
            )
    if out and profiles:
        write_json(out, {"meta": meta, "results": results, "profile": profiles})


if __name__ == "__main__":
    main()
