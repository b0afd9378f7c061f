"""Greedy decoding per new token: CRReLU vs GELU vs the model's own activation, same process.

    python benchmarks/bench_generate.py                                   # GPT-2-small shape, CPU, fp32
    python benchmarks/bench_generate.py --preset gpt2-large --device cuda --dtype bfloat16

Three copies of one randomly initialised GPT-2-shaped model (same weights) differ only in the
MLP activation: the model's own (`gelu_new`), torch's GELU (patched in) and CRReLU (patched
in). Each repeat times `generate` of exactly --new-tokens tokens for batch 1 and batch 8, the
three models interleaved, after --warmup untimed rounds. Printed: median ms per new token with
its interquartile range, and the CRReLU/GELU ratio (median and IQR over repeats), flagged when
the ratio's range crosses the target. Then, the same way, the activation module alone on a
decoding step's MLP input (batch x 1 x 4·hidden): its host time per call, and what CRReLU's
extra time per call, times the layers, adds to GELU's time per token. That figure resolves
differences far below the run-to-run noise of whole decoding steps on a shared machine (it
leaves out effects on the rest of the step, which --profile shows).

--crrelu-kernels adds CRReLU arms that run with another kernel (``--crrelu-kernels auto torch``
on a GPU times the Triton kernel and the PyTorch ops side by side). --profile then decodes a few
tokens of batch --batches[0] once more per arm under torch.profiler and under cProfile and
prints (and writes to the JSON) where the time goes: host time per activation call and per
token outside it, kernel launches and host-device synchronisations per token, device busy time,
the costliest ops and Python functions. Profiled runs are slower than timed ones; compare the
arms with each other, not with the timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from profiling import print_profile, profile_run  # noqa: E402
from record import add_flags, output_path  # noqa: E402
from record import meta as record_meta  # noqa: E402
from timing import check_counts, describe, interleaved, quartiles, ratio, using_kernel  # noqa: E402

import crrelu_llm  # noqa: E402
from crrelu_llm.files import write_json
from crrelu_llm.ops import kernels

PRESETS = {
    "gpt2-small": {"n_layer": 12, "n_embd": 768, "n_head": 12},
    "gpt2-large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4},
}


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
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / new_tokens


def activation_us(act, x, calls: int = 200) -> float:
    """Host time of one call of ``act`` on ``x`` (a decoding step's MLP input), averaged over ``calls``."""
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(calls):
            act(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e6 / calls


def with_kernel(kernel: str, fn):
    """``fn``, run with the CRReLU kernel ``kernel``."""

    def call():
        with using_kernel(kernel):
            return fn()

    return call


def profile_decode(model, batch: int, new_tokens: int, device) -> dict:
    """Where one arm's decoding time goes, per token (see profiling.py): the activation modules
    are labelled ``mlp.act`` for the run."""
    from torch.profiler import record_function

    acts = [block.mlp.act for block in model.transformer.h]

    def labelled(forward):
        def call(x):
            with record_function("mlp.act"):
                return forward(x)

        return call

    for act in acts:
        act.forward = labelled(act.forward)
    try:
        per_token_ms(model, batch, new_tokens, device)  # warm, with the labels
        return profile_run(lambda: per_token_ms(model, batch, new_tokens, device), new_tokens, device, ("mlp.act",))
    finally:
        for act in acts:
            del act.forward


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
    parser.add_argument(
        "--crrelu-kernels",
        nargs="+",
        default=["auto"],
        choices=kernels.KERNELS,
        help="one CRReLU arm per kernel (default: auto, the kernel CRReLU picks)",
    )
    parser.add_argument("--profile", action="store_true", help="then profile each arm's decoding (see above)")
    parser.add_argument("--profile-tokens", type=int, default=8, help="new tokens per profiled run")
    add_flags(parser)
    args = parser.parse_args(argv)
    check_counts(parser, args.warmup, args.repeats)
    for flag, values in (
        ("--new-tokens", [args.new_tokens]),
        ("--profile-tokens", [args.profile_tokens]),
        ("--batches", args.batches),
    ):
        if min(values) < 1:
            parser.error(f"{flag} must be at least 1")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype, None)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        parser.error(f"--dtype {args.dtype!r} is not a torch floating-point dtype (float32, bfloat16, float16)")
    if "triton" in args.crrelu_kernels and (device.type != "cuda" or not kernels.triton_available()):
        parser.error("--crrelu-kernels triton needs --device cuda and the triton package")
    crrelu = build(args.preset, "crrelu", dtype, device)
    models = {
        "own (gelu_new)": build(args.preset, None, dtype, device),
        "gelu": build(args.preset, "gelu", dtype, device),
    }
    arms = {name: (model, "auto") for name, model in models.items()}
    arms.update(
        {
            "crrelu" if kernel == "auto" else f"crrelu (kernel={kernel})": (crrelu, kernel)
            for kernel in dict.fromkeys(args.crrelu_kernels)
        }
    )
    crrelu_arms = [name for name in arms if name.startswith("crrelu")]
    results = {
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "new_tokens": args.new_tokens,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "batches": {},
        "meta": record_meta(device=str(device)),
    }
    out = output_path(args, "generate", results["meta"])
    for batch in args.batches:
        fns = {
            name: with_kernel(kernel, lambda m=model, b=batch: per_token_ms(m, b, args.new_tokens, device))
            for name, (model, kernel) in arms.items()
        }
        times = interleaved(fns, args.warmup, args.repeats)
        entry = {name: quartiles(t) for name, t in times.items()}
        for name in crrelu_arms:
            entry[f"{name}/gelu"] = ratio(times, name, "gelu")
        # The activation alone on a decoding step's input, a figure this machine's noise cannot hide:
        # what it adds per token (x layers) against the whole step.
        x = torch.randn(batch, 1, 4 * crrelu.config.n_embd, device=device, dtype=dtype)
        alone = interleaved(
            {
                name: with_kernel(kernel, lambda m=model, x=x: activation_us(m.transformer.h[0].mlp.act, x))
                for name, (model, kernel) in arms.items()
            },
            args.warmup,
            args.repeats,
        )
        entry["activation_alone_us"] = {name: quartiles(t) for name, t in alone.items()}
        layers, gelu_ms = crrelu.config.n_layer, entry["gelu"]["median"]
        added = entry["activation_added_share_of_gelu_token"] = {}
        for name in crrelu_arms:
            extra_us = (
                entry["activation_alone_us"][name]["median"] - entry["activation_alone_us"]["gelu"]["median"]
            ) * layers
            added[name] = extra_us / 1000 / gelu_ms
        results["batches"][str(batch)] = entry
        print(
            f"batch {batch}: "
            + ", ".join(
                f"{name} {e['median']:.2f} ms/token [IQR {e['q1']:.2f}-{e['q3']:.2f}]"
                for name, e in entry.items()
                if name in arms
            )
            + "".join(f"; {name}/GELU {describe(entry[f'{name}/gelu'], args.target)}" for name in crrelu_arms),
            flush=True,
        )
        print(
            f"  activation alone on a {tuple(x.shape)} input, us/call: "
            + ", ".join(
                f"{name} {e['median']:.1f} [IQR {e['q1']:.1f}-{e['q3']:.1f}]"
                for name, e in entry["activation_alone_us"].items()
            )
            + "".join(
                f"; {name} x {layers} layers adds {share:+.2%} of GELU's {gelu_ms:.2f} ms/token"
                for name, share in added.items()
            ),
            flush=True,
        )
    if out:  # the timings are kept even if profiling fails
        write_json(out, results)
    if args.profile:
        results["profile"] = {"batch": args.batches[0], "new_tokens": args.profile_tokens, "arms": {}}
        for name, (model, kernel) in arms.items():
            profiled = with_kernel(
                kernel, lambda m=model: profile_decode(m, args.batches[0], args.profile_tokens, device)
            )()
            results["profile"]["arms"][name] = profiled
            print_profile(name, profiled, "token")
        if out:
            write_json(out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
