"""A recipe's arms: choosing one (``--arm NAME``: its keys laid over the shared ones, ``{arm}``
filled in), and what must hold across them whichever arm runs: the same kernels, and none that
would bypass a patched activation.

Example::

    >>> from crrelu_llm.training.arms import select_arm
    >>> recipe = {"output_dir": "runs/{arm}", "arms": {"gelu": {"activation": None}, "crrelu": {}}}
    >>> select_arm(recipe, "gelu", "recipe.yaml")
    {'output_dir': 'runs/gelu', 'activation': None}
"""

from __future__ import annotations

import json

from crrelu_llm.errors import RecipeError, did_you_mean


def _fill_arm(value, arm: str):
    if isinstance(value, str):
        return value.replace("{arm}", arm)
    if isinstance(value, list):
        return [_fill_arm(v, arm) for v in value]
    return value


def select_arm(config: dict, arm: str | None, path: str) -> dict:
    """The recipe's shared keys with ``arms[arm]`` laid over them and ``{arm}`` filled in."""
    arms = config.get("arms")
    shared = {k: v for k, v in config.items() if k != "arms"}
    if arms is None:
        if arm is not None:
            raise RecipeError(f"--arm {arm}: {path} defines no arms; drop --arm")
        return shared
    if not isinstance(arms, dict) or not all(isinstance(v, dict) for v in arms.values()):
        raise RecipeError(f"{path}: 'arms' must map each arm name to its keys, e.g. crrelu: {{activation: crrelu}}")
    if arm is None:
        raise RecipeError(f"{path} defines the arms {', '.join(arms)}: pass --arm NAME to choose one")
    if arm not in arms:
        raise RecipeError(f"--arm {arm}: {path} has no such arm (it has {', '.join(arms)})" + did_you_mean(arm, arms))
    return {k: _fill_arm(v, arm) for k, v in {**shared, **arms[arm]}.items()}


# Options that swap a model's layers for fused or hub kernels. Liger's fused MLP kernels never call the
# activation module, and transformers' hub kernels replace the layers they know: a patched arm would
# be silently bypassed, and arms of one recipe would differ in more than the recipe varies.
KERNEL_OPTIONS = ("use_liger_kernel", "use_kernels")


def kernel_options(keys) -> dict:
    """The kernel options set in a mapping of recipe keys (or on parsed training arguments):
    ``use_liger_kernel``, and ``use_kernels`` (TRL passes it to ``from_pretrained`` through
    ``model_init_kwargs``)."""
    get = keys.get if isinstance(keys, dict) else lambda k: getattr(keys, k, None)
    init = get("model_init_kwargs") or {}
    if isinstance(init, str):  # given as JSON on the command line
        init = json.loads(init)
    values = {"use_liger_kernel": get("use_liger_kernel"), "use_kernels": get("use_kernels") or init.get("use_kernels")}
    return {k: v for k, v in values.items() if v}


def check_kernels(arms: dict[str, dict], source: str) -> None:
    """Kernel options apply to every arm alike, and to no patched one: ``arms`` maps each arm ("" for
    a recipe without arms) to its keys; refused in one line otherwise."""
    arms = {arm: kernel_options(keys) | {"activation": keys.get("activation", "crrelu")} for arm, keys in arms.items()}
    for option in KERNEL_OPTIONS:
        values = {arm: bool(keys.get(option)) for arm, keys in arms.items()}
        if len(set(values.values())) > 1:
            on = sorted(a for a, v in values.items() if v)
            raise RecipeError(
                f"{source}: {option} is set for the arm(s) {', '.join(on)} only: kernel options apply to every "
                "arm alike (set it once in the shared keys), so that arms differ only in what the recipe varies"
            )
        patched = sorted(a or "this run" for a, keys in arms.items() if keys.get(option) and _patched(keys))
        if patched:
            which = "this run" if patched == ["this run"] else f"arm {patched[0]}"
            raise RecipeError(
                f"{source}: {option}: true swaps MLP layers for kernels that never call the activation module, "
                f"so the patched activation of {which} would be silently bypassed: set {option}: false"
            )


def _patched(keys: dict) -> bool:
    return keys.get("activation", "crrelu") not in (None, "none", "None")


def check_arms(config: dict, path: str) -> None:
    """What holds across a recipe's arms, checked whichever arm runs: the same kernels."""
    shared = {k: v for k, v in config.items() if k != "arms"}
    arms = config.get("arms") or {}
    check_kernels({arm: {**shared, **(keys or {})} for arm, keys in arms.items()} or {"": shared}, path)
