"""``crrelu-llm sft|dpo|simpo|orpo|kto|distill --config RECIPE [--arm NAME] [--key value ...]``:
one command per row of the objectives table (:data:`crrelu_llm.training.objectives.OBJECTIVES`).
TRL's parser owns their flags (:func:`crrelu_llm.training.recipes.parse_recipe`), so these
commands take the rest of the line as it is, and :func:`crrelu_llm.cli.main` hands it to
:func:`crrelu_llm.training.train.main`; this module lists them in ``--help``."""

from __future__ import annotations

import argparse

from crrelu_llm.training.objectives import OBJECTIVES  # the table imports no TRL

COMMANDS = tuple(OBJECTIVES)


def register(commands) -> None:
    for name, objective in OBJECTIVES.items():
        sub = commands.add_parser(name, help=objective.summary, description=objective.summary, add_help=False)
        sub.add_argument("recipe_args", nargs=argparse.REMAINDER, help="--config RECIPE.yaml and --key value overrides")
