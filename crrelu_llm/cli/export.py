"""``crrelu-llm export MODEL --out DIR``: a copy of a patched checkpoint that loads with
``trust_remote_code=True`` and without crrelu-llm. Its parser, handler and printing."""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.cli.common import command_parser, trust_flag


def register(commands) -> None:
    export = command_parser(
        commands,
        "export",
        "Write a copy of a patched checkpoint that loads with "
        "trust_remote_code=True and without crrelu-llm (modeling_crrelu.py and auto_map).",
    )
    export.add_argument("model", metavar="MODEL", help="a patched checkpoint directory")
    export.add_argument("--out", required=True, type=Path, help="directory to write the shareable checkpoint to")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    trust_flag(export)


def run(args) -> int:
    from crrelu_llm.patching.remote_code import export_remote_code

    export_remote_code(args.model, args.out, overwrite=args.overwrite)
    print(
        f"Saved to {args.out}: loads with AutoModelForCausalLM.from_pretrained({str(args.out)!r}, "
        "trust_remote_code=True), with or without crrelu-llm installed."
    )
    return 0
