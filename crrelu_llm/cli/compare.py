"""``crrelu-llm compare RUN [RUN ...] --out DIR``: report.md, report.json and plots. Its parser,
handler and printing."""

from __future__ import annotations

from pathlib import Path

from crrelu_llm.cli.common import command_parser


def register(commands) -> None:
    compare = command_parser(
        commands,
        "compare",
        "Compare run directories: report.md, report.json and plots, with "
        "intervals and the differences each sample size can detect.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run directory, or LABEL=DIR (same label: seeds)")
    compare.add_argument("--out", type=Path, required=True, help="directory to write the report to")


def run(args) -> int:
    from crrelu_llm.reporting.report import compare

    report = compare(args.runs, args.out)
    for label, arm in report["arms"].items():
        acc = arm.get("reward_accuracy")
        print(
            f"{label}: {len(arm['runs'])} run(s)"
            + (f", reward accuracy {acc['mean']:.3f} (n={acc['n'][0]})" if acc else "")
        )
    print(f"report: {args.out / 'report.md'}")
    return 0
