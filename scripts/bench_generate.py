"""Greedy decoding per new token: CRReLU vs GELU vs the model's own activation, same process.

    python scripts/bench_generate.py                                   # GPT-2-small shape, CPU, fp32
    python scripts/bench_generate.py --preset gpt2-large --device cuda --dtype bfloat16

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
import cProfile
import gc
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import crrelu_llm  # noqa: E402
from crrelu_llm import kernels  # noqa: E402
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
    """``fn`` run with the CRReLU kernel ``kernel`` (``auto``: whatever is set already)."""
    if kernel == "auto":
        return fn

    def call():
        before = kernels.get_kernel()
        kernels.set_kernel(kernel)
        try:
            return fn()
        finally:
            kernels.set_kernel(before)

    return call


# host-device synchronisations and kernel launches, as torch.profiler names them
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
         "aten::_local_scalar_dense")
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def _device_us(event) -> float:
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)) or 0.0)


class GarbageCollections:
    """Counts Python's garbage collections by generation, and the time they take, while active."""

    def __enter__(self):
        self.counts, self.seconds, self._start = {0: 0, 1: 0, 2: 0}, 0.0, None
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.counts[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._start


def profile_decode(model, batch: int, new_tokens: int, device, top: int = 12) -> dict:
    """Where one arm's decoding time goes (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile, record_function

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
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof, GarbageCollections() as collections:
            wall_ms = per_token_ms(model, batch, new_tokens, device)
        python = cProfile.Profile()
        python.enable()
        per_token_ms(model, batch, new_tokens, device)
        python.disable()
    finally:
        for act in acts:
            del act.forward
    events = prof.key_averages()
    by_name = {e.key: e for e in events}
    act = by_name.get("mlp.act")
    on_device = sorted((e for e in events if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: -_device_us(e))
    summary = {
        "profiled_ms_per_token": wall_ms,
        "activation_calls_per_token": act.count / new_tokens if act else 0.0,
        "activation_host_us_per_call": act.cpu_time_total / act.count if act else 0.0,
        "host_ms_per_token_outside_activation": wall_ms - (act.cpu_time_total / 1000 / new_tokens if act else 0.0),
        "garbage_collections": collections.counts,
        "garbage_collection_ms_per_token": collections.seconds * 1000 / new_tokens,
        "launches_per_token": sum(by_name[k].count for k in LAUNCHES if k in by_name) / new_tokens,
        "syncs_per_token": {k: by_name[k].count / new_tokens for k in SYNCS if k in by_name},
        "device_busy_ms_per_token": sum(_device_us(e) for e in on_device) / 1000 / new_tokens,
        "device_kernels": [{"name": e.key, "calls_per_token": e.count / new_tokens, "device_us": _device_us(e) / e.count}
                           for e in on_device[:top]],
        "ops": [{"name": e.key, "calls_per_token": e.count / new_tokens, "self_host_us": e.self_cpu_time_total / e.count,
                 "self_device_us": _device_us(e) / e.count}
                for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top] if e.self_cpu_time_total > 0],
    }
    stats = pstats.Stats(python, stream=io.StringIO())
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # by own time
    summary["python"] = [{"function": f"{Path(file).name}:{line}({name})", "calls_per_token": calls / new_tokens,
                          "own_us_per_token": own * 1e6 / new_tokens, "cumulative_us_per_token": cum * 1e6 / new_tokens}
                         for (file, line, name), (_, calls, own, cum, _) in rows]
    return summary


def print_profile(name: str, p: dict) -> None:
    syncs = ", ".join(f"{k} {v:g}" for k, v in p["syncs_per_token"].items()) or "none"
    print(f"-- profile {name}: {p['profiled_ms_per_token']:.2f} ms/token profiled; activation "
          f"{p['activation_host_us_per_call']:.1f} us/call host x {p['activation_calls_per_token']:g} calls/token; "
          f"{p['host_ms_per_token_outside_activation']:.2f} ms/token outside it; {p['launches_per_token']:g} "
          f"launches/token; garbage collections {p['garbage_collections']} ({p['garbage_collection_ms_per_token']:.2f} "
          f"ms/token); device busy {p['device_busy_ms_per_token']:.2f} ms/token; syncs/token: {syncs}")
    for op in p["ops"]:
        print(f"   op  {op['name'][:60]:60s} {op['calls_per_token']:8.1f}/token {op['self_host_us']:9.1f} us host "
              f"{op['self_device_us']:9.1f} us device")
    for k in p["device_kernels"]:
        print(f"   gpu {k['name'][:60]:60s} {k['calls_per_token']:8.1f}/token {k['device_us']:9.1f} us")
    for fn in p["python"]:
        print(f"   py  {fn['function'][:60]:60s} {fn['calls_per_token']:8.1f}/token {fn['own_us_per_token']:9.1f} us own "
              f"{fn['cumulative_us_per_token']:9.1f} us cumulative")


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
    parser.add_argument("--crrelu-kernels", nargs="+", default=["auto"], choices=kernels.KERNELS,
                        help="one CRReLU arm per kernel (default: auto, the kernel CRReLU picks)")
    parser.add_argument("--profile", action="store_true", help="then profile each arm's decoding (see above)")
    parser.add_argument("--profile-tokens", type=int, default=8, help="new tokens per profiled run")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    check_counts(parser, args.warmup, args.repeats)
    for flag, values in (("--new-tokens", [args.new_tokens]), ("--profile-tokens", [args.profile_tokens]),
                         ("--batches", args.batches)):
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
    models = {"own (gelu_new)": build(args.preset, None, dtype, device), "gelu": build(args.preset, "gelu", dtype, device)}
    arms = {name: (model, "auto") for name, model in models.items()}
    arms.update({"crrelu" if kernel == "auto" else f"crrelu (kernel={kernel})": (crrelu, kernel)
                 for kernel in dict.fromkeys(args.crrelu_kernels)})
    crrelu_arms = [name for name in arms if name.startswith("crrelu")]
    results = {"preset": args.preset, "device": str(device), "dtype": args.dtype, "new_tokens": args.new_tokens,
               "warmup": args.warmup, "repeats": args.repeats, "torch": torch.__version__, "batches": {}}
    for batch in args.batches:
        fns = {name: with_kernel(kernel, lambda m=model: per_token_ms(m, batch, args.new_tokens, device))
               for name, (model, kernel) in arms.items()}
        times = interleaved(fns, args.warmup, args.repeats)
        entry = {name: quartiles(t) for name, t in times.items()}
        for name in crrelu_arms:
            entry[f"{name}/gelu"] = ratio(times, name, "gelu")
        # The activation alone on a decoding step's input, a figure this machine's noise cannot hide:
        # what it adds per token (x layers) against the whole step.
        x = torch.randn(batch, 1, 4 * crrelu.config.n_embd, device=device, dtype=dtype)
        alone = interleaved({name: with_kernel(kernel, lambda m=model: activation_us(m.transformer.h[0].mlp.act, x))
                             for name, (model, kernel) in arms.items()}, args.warmup, args.repeats)
        entry["activation_alone_us"] = {name: quartiles(t) for name, t in alone.items()}
        layers, gelu_ms = crrelu.config.n_layer, entry["gelu"]["median"]
        added = entry["activation_added_share_of_gelu_token"] = {}
        for name in crrelu_arms:
            extra_us = (entry["activation_alone_us"][name]["median"] - entry["activation_alone_us"]["gelu"]["median"]) * layers
            added[name] = extra_us / 1000 / gelu_ms
        results["batches"][str(batch)] = entry
        print(f"batch {batch}: " + ", ".join(f"{name} {e['median']:.2f} ms/token [IQR {e['q1']:.2f}-{e['q3']:.2f}]"
                                              for name, e in entry.items() if name in arms)
              + "".join(f"; {name}/GELU {describe(entry[f'{name}/gelu'], args.target)}" for name in crrelu_arms),
              flush=True)
        print(f"  activation alone on a {tuple(x.shape)} input, us/call: "
              + ", ".join(f"{name} {e['median']:.1f} [IQR {e['q1']:.1f}-{e['q3']:.1f}]"
                          for name, e in entry["activation_alone_us"].items())
              + "".join(f"; {name} x {layers} layers adds {share:+.2%} of GELU's {gelu_ms:.2f} ms/token"
                        for name, share in added.items()), flush=True)
    if args.profile:
        results["profile"] = {"batch": args.batches[0], "new_tokens": args.profile_tokens, "arms": {}}
        for name, (model, kernel) in arms.items():
            profiled = with_kernel(kernel, lambda m=model: profile_decode(m, args.batches[0], args.profile_tokens, device))()
            results["profile"]["arms"][name] = profiled
            print_profile(name, profiled)
    if args.json:
        write_json(Path(args.json), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
