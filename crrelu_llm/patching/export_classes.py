"""The activation classes a remote-code export carries: each patched class's own source, when it
is self-contained (it needs nothing from its module but ``torch``, ``nn``, ``F`` and ``math``).

A class that reaches for anything else (a helper function, a constant, another class of its
package) cannot be copied faithfully into ``modeling_crrelu.py``; the export is refused with the
names it would lose, rather than writing a file that fails, or behaves differently, where it loads.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import textwrap

from crrelu_llm.errors import PatchError
from crrelu_llm.ops.candidates import CORRECTED_PREFIX, MATCHED_PREFIX
from crrelu_llm.patching.discovery import is_import_path, make_activation

# What the modeling file imports; a class may use these and nothing else from its module.
AVAILABLE = {"torch", "nn", "F", "math"}
HEADER_IMPORTS = "import math\n\nimport torch.nn.functional as F\n"


def _free_names(tree: ast.ClassDef) -> set[str]:
    bound = {tree.name}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return used - bound - set(dir(builtins))


def class_source(name: str, kwargs: dict | None = None) -> tuple[str, str]:
    """(class name, source) of the activation ``name`` builds, checked self-contained."""
    cls = type(make_activation(name, kwargs=kwargs))
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError) as err:
        raise PatchError(
            f"export: the source of {name} ({cls.__qualname__}) cannot be read ({err}), so it "
            "cannot be written into the exported files"
        ) from None
    tree = ast.parse(source).body[0]
    missing = sorted(_free_names(tree) - AVAILABLE)
    if missing:
        raise PatchError(
            f"export: {name} is not self-contained: its class uses {', '.join(missing)} from its "
            f"module, which the exported modeling file would not have. Move what it needs into the "
            f"class (torch, nn, F and math are available), or share the checkpoint with crrelu-llm"
        )
    bases = [ast.unparse(b) for b in tree.bases]
    if bases != ["nn.Module"]:
        raise PatchError(
            f"export: {name} derives from {', '.join(bases) or 'nothing'}; a class copied into the "
            "exported files must derive from nn.Module directly"
        )
    return cls.__name__, source


# The built-in candidate as the exported file carries it: the same arithmetic and parameter, without
# the DeepSpeed bookkeeping of crrelu_llm.ops.candidates.SwishBeta (training is not the export's business).
SWISH_BETA_SOURCE = '''class SwishBeta(nn.Module):
    """x * sigmoid(beta * x) with a learnable 0-dim beta (Ramachandran et al. 2017)."""

    def __init__(self, beta_init=1.0):
        super().__init__()
        self.beta_init = float(beta_init)
        self.beta = nn.Parameter(torch.tensor(self.beta_init))

    def forward(self, x):
        return x * torch.sigmoid(self.beta.to(x.dtype) * x)

    def reset_parameters(self):
        with torch.no_grad():
            self.beta.fill_(self.beta_init)
'''


# corrected_<base>: the correction on a transformers activation, which the exported file's
# transformers provides (crrelu_llm.ops.candidates.CorrectedActivation, without its DeepSpeed bookkeeping)
CORRECTED_SOURCE = '''class CorrectedActivation(nn.Module):
    """base(x) + eps * x * exp(-x**2 / 2): the correction term on a transformers activation."""

    def __init__(self, base="gelu", epsilon_init=0.01):
        super().__init__()
        self.base_name = base
        self.base = ACT2FN[base]
        self.epsilon_init = float(epsilon_init)
        self.epsilon = nn.Parameter(torch.tensor(self.epsilon_init))

    def forward(self, x):
        return self.base(x) + self.epsilon.to(x.dtype) * x * torch.exp(-x * x / 2)

    def reset_parameters(self):
        with torch.no_grad():
            self.epsilon.fill_(self.epsilon_init)
'''


# matched_<base>: the correction at the layer's measured inputs (mu, sigma from the record and buffers)
MATCHED_SOURCE = '''class MatchedActivation(nn.Module):
    """base(x) + eps * z * exp(-z**2 / 2), z = (x - mu) / sigma: the correction at the layer's inputs
    (with earlier corrections, folded by refits, as [eps, mu, sigma] rows)."""

    def __init__(self, base="gelu", mu=0.0, sigma=1.0, folded=None):
        super().__init__()
        self.base_name = base
        self.base = ACT2FN[base]
        self.epsilon_init = 0.0
        self.epsilon = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("mu", torch.tensor(float(mu)))
        self.register_buffer("sigma", torch.tensor(float(sigma)))
        self.register_buffer("folded", torch.tensor(folded or [], dtype=torch.float32).reshape(-1, 3))

    @staticmethod
    def _bump(x, mu, sigma):
        z = (x - mu.to(x.dtype)) / sigma.to(x.dtype)
        return z * torch.exp(-z * z / 2)

    def forward(self, x):
        y = self.base(x)
        for eps, mu, sigma in self.folded:
            y = y + eps.to(x.dtype) * self._bump(x, mu, sigma)
        return y + self.epsilon.to(x.dtype) * self._bump(x, self.mu, self.sigma)

    def reset_parameters(self):
        with torch.no_grad():
            self.epsilon.fill_(self.epsilon_init)
'''


def exported_classes(record: dict) -> tuple[str, dict[str, str]]:
    """The sources of every activation class the patch ``record`` uses other than CRReLU and
    transformers' own, and ``{recorded name: class name}`` for the modeling file's table."""
    sources, table = [], {}
    if any(e["activation"].startswith(CORRECTED_PREFIX) for e in record.get("modules", {}).values()):
        sources.append(CORRECTED_SOURCE)  # built by the modeling file's _rebuild from the name's base
    if any(e["activation"].startswith(MATCHED_PREFIX) for e in record.get("modules", {}).values()):
        sources.append(MATCHED_SOURCE)
    for entry in record.get("modules", {}).values():
        name = entry["activation"]
        if name in table or name == "crrelu" or not (is_import_path(name) or name == "swish_beta"):
            continue
        class_name, source = (
            ("SwishBeta", SWISH_BETA_SOURCE)
            if name == "swish_beta"
            else class_source(name, entry.get("activation_kwargs"))
        )
        if class_name in table.values() or class_name in ("CRReLU", "CRReLUConfig"):
            raise PatchError(f"export: two activation classes would be called {class_name} in the modeling file")
        table[name] = class_name
        sources.append(source)
    return "\n\n".join(sources), table
