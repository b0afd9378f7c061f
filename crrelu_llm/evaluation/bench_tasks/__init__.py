"""lm-evaluation-harness tasks shipped with crrelu-llm, defined in YAML over local data.

``crrelu_arith_mc``: four-way multiple-choice sums (``"12+7="`` -> ``"19."`` among answers off by
one or two), the capability the built-in ``arithmetic`` task trains, scored by lm-eval as the sum
of the choice's log-probabilities (``acc``). The items (``crrelu_arith_mc.jsonl``, 500 test and 50
few-shot rows) are :func:`crrelu_llm.evaluation.tasks.multiple_choice_arithmetic` with seed 0, outside the
prompts of the demo's training split, so the demo measures held-out skill (``tests/test_capability.py``
checks the file against :func:`items`).
"""

from __future__ import annotations

from pathlib import Path

TASK_DIR = Path(__file__).parent
LOCAL_TASKS = tuple(sorted(p.stem for p in TASK_DIR.glob("*.yaml")))
ITEMS = TASK_DIR / "crrelu_arith_mc.jsonl"
N_TEST, N_FEWSHOT = 500, 50


def items() -> list[dict]:
    """The shipped items, each with its ``split``; generated the same way every time."""
    from crrelu_llm.evaluation.tasks import generate_task_data, multiple_choice_arithmetic

    demo_train = {row["prompt"] for row in generate_task_data("arithmetic", 5500, 0)[:5000]}
    rows = multiple_choice_arithmetic(N_TEST + N_FEWSHOT, seed=0, exclude=demo_train)
    return [{**row, "split": "test" if i < N_TEST else "train"} for i, row in enumerate(rows)]
