#!/usr/bin/env python
"""Walk every causal-LM architecture of the installed transformers and report which ones the
patcher handles. Usage: python scripts/patch_coverage.py [--json FILE] [--verbose]"""

import argparse
import json
from dataclasses import asdict

import transformers

import crrelu_llm  # noqa: F401
from crrelu_llm.coverage import architecture_coverage, summarise


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
