"""crrelu-llm: swap the MLP activation of pretrained causal LMs for CRReLU and study DPO.

Importing the package registers ``"crrelu"`` as a transformers activation name and lets
``from_pretrained`` rebuild patched checkpoints (see :mod:`crrelu_llm.patch`).
"""

from .version import __version__  # noqa: E402
from .activation import DEFAULT_EPSILON_INIT, CRReLU, CRReLUFunction, crrelu  # noqa: E402
from .patch import (  # noqa: E402
    NoActivationFoundError,
    PatchReport,
    available_activations,
    epsilon_parameters,
    epsilon_values,
    find_activations,
    patch_model,
    patch_record,
    peft_modules_to_save,
    register_with_transformers,
    verify_patch,
)

register_with_transformers()

__all__ = [
    "CRReLU",
    "CRReLUFunction",
    "crrelu",
    "DEFAULT_EPSILON_INIT",
    "NoActivationFoundError",
    "PatchReport",
    "available_activations",
    "epsilon_parameters",
    "epsilon_values",
    "find_activations",
    "patch_model",
    "patch_record",
    "peft_modules_to_save",
    "register_with_transformers",
    "verify_patch",
    "__version__",
]
