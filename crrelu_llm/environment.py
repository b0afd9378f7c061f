"""The environment a result was computed in, recorded beside it (``summary.json``), so two
results can be compared and a difference diagnosed from the files alone."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from crrelu_llm import reproducibility

PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "tokenizers", "lm_eval", "crrelu-llm")
SETTINGS = (
    "MKL_CBWR",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_VISIBLE_DEVICES",
    "PYTHONHASHSEED",
)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import re

    import torch

    config = torch.__config__.show()
    blas = {
        key.lower(): (re.search(rf"{key}=([^,\s]+)", config) or [None, None])[1] for key in ("BLAS_INFO", "LAPACK_INFO")
    }
    blas["mkl_available"] = torch.backends.mkl.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cpu": _cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "blas": blas,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else [],
        "settings": {key: os.environ.get(key) for key in SETTINGS},
        "reproducible": reproducibility.settings(),
        "executable": sys.executable,
    }
