"""crrelu-llm: swap the MLP activation of pretrained causal LMs for CRReLU and study DPO.

Importing the package registers ``"crrelu"`` (and ``"swish_beta"``) as transformers activation names and lets
``from_pretrained`` rebuild patched checkpoints (see :mod:`crrelu_llm.patching.record`).
"""

from crrelu_llm.errors import NoActivationFoundError
from crrelu_llm.ops.activation import DEFAULT_EPSILON_INIT, CRReLU, CRReLUFunction, crrelu
from crrelu_llm.ops.candidates import SwishBeta
from crrelu_llm.patching.discovery import available_activations, find_activations
from crrelu_llm.patching.patch import (
    activation_logs,
    activation_parameters,
    epsilon_parameters,
    epsilon_values,
    patch_model,
    peft_modules_to_save,
)
from crrelu_llm.patching.record import PatchReport, patch_record, register_with_transformers, verify_patch
from crrelu_llm.version import __version__

register_with_transformers()

__all__ = [
    "CRReLU",
    "CRReLUFunction",
    "SwishBeta",
    "activation_logs",
    "activation_parameters",
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
