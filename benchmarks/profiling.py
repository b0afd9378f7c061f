"""Where a benchmark's time goes, for the benchmark scripts (a module beside them, not part of
the package): one run under torch.profiler (CPU, and CUDA where the device is a GPU) and one
under cProfile, summarised per unit of work (a token, an iteration) so that arms compare.

Summarised: wall time per unit; host time per call inside each labelled range (``labels``:
``record_function`` names the caller put around the code it wants measured) and outside them;
kernel launches, host-device synchronisations and Python garbage collections per unit; device
busy time per unit; the costliest ops (self host time), device kernels and Python functions.
Profiled runs are slower than timed ones: compare arms with each other, not with timings.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import time
from pathlib import Path

import torch

# host-device synchronisations and kernel launches, as torch.profiler names them
SYNCS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "aten::_local_scalar_dense",
)
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


def profile_run(fn, units: int, device: torch.device, labels: tuple[str, ...] = (), top: int = 12) -> dict:
    """Summary of ``fn()`` (which does ``units`` units of work; warm it up first) per unit."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof, GarbageCollections() as collections:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1000 / units
    python = cProfile.Profile()
    python.enable()
    fn()
    python.disable()

    events = prof.key_averages()
    by_name = {e.key: e for e in events}
    on_device = sorted(
        (e for e in events if e.device_type == torch.autograd.DeviceType.CUDA), key=lambda e: -_device_us(e)
    )
    ranges = {
        label: {
            "calls_per_unit": by_name[label].count / units,
            "host_us_per_call": by_name[label].cpu_time_total / by_name[label].count,
        }
        for label in labels
        if label in by_name
    }
    inside_ms = sum(by_name[label].cpu_time_total for label in ranges) / 1000 / units
    summary = {
        "units": units,
        "wall_ms_per_unit": wall_ms,
        "ranges": ranges,
        "host_ms_per_unit_outside_ranges": wall_ms - inside_ms,
        "garbage_collections": collections.counts,
        "garbage_collection_ms_per_unit": collections.seconds * 1000 / units,
        "launches_per_unit": sum(by_name[k].count for k in LAUNCHES if k in by_name) / units,
        "syncs_per_unit": {k: by_name[k].count / units for k in SYNCS if k in by_name},
        "device_busy_ms_per_unit": sum(_device_us(e) for e in on_device) / 1000 / units,
        "device_kernels": [
            {"name": e.key, "calls_per_unit": e.count / units, "device_us": _device_us(e) / e.count}
            for e in on_device[:top]
        ],
        "ops": [
            {"name": e.key, "calls_per_unit": e.count / units, "self_host_us": e.self_cpu_time_total / e.count}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
            if e.self_cpu_time_total > 0
        ],
    }
    rows = sorted(pstats.Stats(python).stats.items(), key=lambda item: -item[1][2])[:top]  # by own time
    summary["python"] = [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls_per_unit": calls / units,
            "own_us_per_unit": own * 1e6 / units,
            "cumulative_us_per_unit": cum * 1e6 / units,
        }
        for (file, line, name), (_, calls, own, cum, _) in rows
    ]
    return summary


def print_profile(name: str, p: dict, unit: str) -> None:
    ranges = "".join(
        f"; {label} {r['host_us_per_call']:.1f} us/call host x {r['calls_per_unit']:g} calls/{unit}"
        for label, r in p["ranges"].items()
    )
    syncs = ", ".join(f"{k} {v:g}" for k, v in p["syncs_per_unit"].items()) or "none"
    if ranges:
        ranges += f"; {p['host_ms_per_unit_outside_ranges']:.3f} ms/{unit} outside"
    print(
        f"-- profile {name}: {p['wall_ms_per_unit']:.3f} ms/{unit} profiled{ranges}; "
        f"{p['launches_per_unit']:g} launches/{unit}; "
        f"garbage collections {p['garbage_collections']} ({p['garbage_collection_ms_per_unit']:.2f} ms/{unit}); "
        f"device busy {p['device_busy_ms_per_unit']:.3f} ms/{unit}; syncs/{unit}: {syncs}"
    )
    for op in p["ops"]:
        print(f"   op  {op['name'][:60]:60s} {op['calls_per_unit']:8.1f}/{unit} {op['self_host_us']:9.1f} us host")
    for k in p["device_kernels"]:
        print(f"   gpu {k['name'][:60]:60s} {k['calls_per_unit']:8.1f}/{unit} {k['device_us']:9.1f} us")
    for fn in p["python"]:
        print(
            f"   py  {fn['function'][:60]:60s} {fn['calls_per_unit']:8.1f}/{unit} {fn['own_us_per_unit']:9.1f} us own "
            f"{fn['cumulative_us_per_unit']:9.1f} us cumulative"
        )
