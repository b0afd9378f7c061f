"""The trackers a recipe reports to (``report_to``): each one checked installed before any model
loads, with the install that brings it.

TensorBoard comes with crrelu-llm (every shipped recipe reports to it); the others are
transformers' integrations, installed with an extra (``pip install "crrelu-llm[wandb]"``) or on
their own. The names and the test of what is installed are transformers' own.

Example::

    >>> from crrelu_llm.trackers import check_trackers, tracker_names
    >>> tracker_names("none"), tracker_names(["tensorboard"])
    ([], ['tensorboard'])
    >>> check_trackers(["tensorboard"], "recipe.yaml")  # installed with crrelu-llm: nothing to say
"""

from __future__ import annotations

from crrelu_llm.errors import RecipeError, did_you_mean

# tracker -> what installs it (an extra of this project where there is one, else the package)
INSTALL = {
    "tensorboard": "pip install tensorboard (crrelu-llm installs it; a partial install may lack it)",
    "wandb": 'pip install "crrelu-llm[wandb]"',
    "mlflow": "pip install mlflow",
    "trackio": "pip install trackio",
    "comet_ml": "pip install comet_ml",
    "neptune": "pip install neptune",
    "clearml": "pip install clearml",
    "dvclive": "pip install dvclive",
    "swanlab": "pip install swanlab",
    "codecarbon": "pip install codecarbon",
}


def tracker_names(report_to) -> list[str]:
    """``report_to`` (a name, a list, ``none`` or ``all``) as the list of trackers it names;
    ``all`` is every installed one, as transformers reads it."""
    if report_to is None:
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in names:
        from transformers.integrations import get_available_reporting_integrations

        return get_available_reporting_integrations()
    return [n for n in names if n != "none"]


def check_trackers(report_to, source: str) -> None:
    """Refuse, in one line naming the install, a tracker that is not installed or not known."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    installed = set(get_available_reporting_integrations())
    for name in tracker_names(report_to):
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(
                f"{source}: report_to: {name!r} is not a tracker transformers knows "
                f"({', '.join(sorted(INTEGRATION_TO_CALLBACK))})" + did_you_mean(name, INTEGRATION_TO_CALLBACK)
            )
        if name not in installed:
            how = INSTALL.get(name, f"pip install {name}")
            raise RecipeError(f"{source}: report_to: {name} is not installed: {how}, or remove it from report_to")
