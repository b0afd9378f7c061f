#!/usr/bin/env python
"""How much of the installed transformers the patcher covers.

Builds every architecture in ``MODEL_FOR_CAUSAL_LM_MAPPING`` from its default config (or, where
that is incomplete, the tiny one) on the meta device (module tree only, no memory, no download),
runs ``patch_model`` on it and sorts the outcome into: patched, no feed-forward activation module
(a clear error, as for Mamba or RWKV), or the default config could not be built at all.

Usage: python scripts/patch_coverage.py [--json FILE] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass

import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from crrelu_llm.errors import NoActivationFoundError
from crrelu_llm.patching.patch import patch_model
from crrelu_llm.patching.tiny import tiny_config


@dataclass
class ArchitectureOutcome:
    model_type: str
    status: str  # "patched" | "no-activation" | "build-failed" | "patch-failed"
    count: int
    replaced_types: list[str]
    detail: str


def _build(make_config):
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_config(make_config()), None
    except Exception as err:  # noqa: BLE001 - a config that cannot build is data here
        return None, err


def architecture_coverage(model_types: list[str] | None = None) -> list[ArchitectureOutcome]:
    outcomes = []
    for model_type in sorted(model_types or MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        model, err = _build(lambda mt=model_type: CONFIG_MAPPING[mt]())
        if model is None:  # some default configs are incomplete; the tiny one fills in sizes
            model, err = _build(lambda mt=model_type: tiny_config(mt))
        if model is None:
            outcomes.append(
                ArchitectureOutcome(model_type, "build-failed", 0, [], f"{type(err).__name__}: {err}"[:200])
            )
            continue
        try:
            report = patch_model(model)
        except NoActivationFoundError as err:
            outcomes.append(ArchitectureOutcome(model_type, "no-activation", 0, [], str(err)[:300]))
        except Exception as err:  # noqa: BLE001
            outcomes.append(
                ArchitectureOutcome(model_type, "patch-failed", 0, [], f"{type(err).__name__}: {err}"[:300])
            )
        else:
            kinds = sorted({r.old_type for r in report.replaced})
            outcomes.append(ArchitectureOutcome(model_type, "patched", report.count, kinds, type(model).__name__))
    return outcomes


def summarise(outcomes: list[ArchitectureOutcome]) -> str:
    counts = Counter(o.status for o in outcomes)
    buildable = len(outcomes) - counts["build-failed"]
    share = counts["patched"] / buildable if buildable else 0.0
    lines = [
        f"{len(outcomes)} causal-LM architectures; {buildable} build (default or tiny config); "
        f"patched {counts['patched']} ({share:.1%} of buildable); "
        f"no feed-forward activation module: {counts['no-activation']}; patch errors: {counts['patch-failed']}"
    ]
    for status in ("no-activation", "patch-failed", "build-failed"):
        names = [o.model_type for o in outcomes if o.status == status]
        if names:
            lines.append(f"  {status}: {', '.join(names)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", help="write every outcome to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="one line per architecture")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    outcomes = architecture_coverage()
    if args.verbose:
        for o in outcomes:
            print(f"{o.model_type:32s} {o.status:14s} {o.count:4d} {','.join(o.replaced_types) or o.detail[:80]}")
    print(f"transformers {transformers.__version__}: {summarise(outcomes)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(o) for o in outcomes], f, indent=1)


if __name__ == "__main__":
    main()
