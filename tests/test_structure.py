"""The package's shape: no import cycles between modules, one error root that the CLI turns into
one line (and nothing else), and a thin command line over library calls."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crrelu_llm import errors

from helpers import run_examples

PACKAGE = Path(__file__).resolve().parents[1] / "crrelu_llm"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of the file (lazy imports count)."""
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.with_suffix("").relative_to(PACKAGE.parent).parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    graph = {}
    for name, file in modules.items():
        package = name if file.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                deps |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crrelu_llm"):
                deps |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("crrelu_llm")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path + [node, dep]
            if dep not in state and (cycle := visit(dep, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "crrelu_llm.cli" in graph and graph["crrelu_llm.experiments.experiment"]  # the walk found the modules
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# The subpackages in the order data flows through them: a module imports only from its own layer
# or the ones before it (the foundation is the top-level modules beside cli.py).
LAYERS = ["foundation", "ops", "data", "patching", "training", "evaluation", "reporting", "experiments", "cli"]


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "crrelu_llm":
        return "package"
    if module == "crrelu_llm.cli" or module.startswith("crrelu_llm.cli."):
        return "cli"
    return "foundation" if len(parts) == 2 else parts[1]


def test_data_flows_one_way_through_the_subpackages():
    graph = import_graph()
    assert {layer_of(m) for m in graph} >= set(LAYERS)  # every layer exists
    upward = [
        f"{m} imports {d}"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer_of(m) != "package"
        and (layer_of(d) == "package" or LAYERS.index(layer_of(d)) > LAYERS.index(layer_of(m)))
    ]
    assert not upward, "; ".join(upward)


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("crrelu_llm.training.train") == "training" and layer_of("crrelu_llm.errors") == "foundation"
    assert LAYERS.index(layer_of("crrelu_llm.evaluation.scoring")) > LAYERS.index(layer_of("crrelu_llm.patching.probe"))


def test_no_private_name_is_imported_across_modules():
    crossing = []
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("crrelu_llm")):
                crossing += [
                    f"{file.relative_to(PACKAGE)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not crossing, "; ".join(crossing)


def test_every_module_is_small_enough_to_read_in_one_sitting():
    long = {
        str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py") if (n := len(f.read_text().splitlines())) > 450
    }
    assert not long, long


def test_library_modules_do_not_import_the_cli():
    graph = import_graph()
    assert not [
        m
        for m, deps in graph.items()
        if not m.startswith("crrelu_llm.cli")
        and any(d == "crrelu_llm.cli" or d.startswith("crrelu_llm.cli.") for d in deps)
    ]


# Where a built-in error is raised on purpose, it is a programming error (a wrong argument type,
# a length mismatch inside statistics) or caught inside the module (a judge's retry loop).
BUILT_IN_ALLOWED = {"TypeError": None, "ValueError": {"stats.py", "judges.py", "activation.py"}}


def test_every_error_the_project_raises_derives_from_one_root():
    raised, built_in = set(), []
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                raised.add(name)
                if (
                    name in dir(__builtins__)
                    or name in BUILT_IN_ALLOWED
                    or name.endswith("Error")
                    and not hasattr(errors, name)
                ):
                    built_in.append((name, file.name, node.lineno))
    ours = {name for name in raised if hasattr(errors, name)}
    assert {"RecipeError", "DataError", "MalformedRowError", "ModelLoadError", "EvaluationError", "UsageError"} <= ours
    for name in ours:
        assert issubclass(getattr(errors, name), errors.CRReLULLMError), name
    for name, file, line in built_in:
        allowed = BUILT_IN_ALLOWED.get(name, ())
        assert allowed is None or file in allowed, f"{file}:{line} raises {name}: use an error of crrelu_llm.errors"


def _cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "crrelu_llm.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        **kwargs,
    )


def test_cli_turns_project_errors_into_one_line_and_exit_2(tmp_path):
    result = _cli("patch", "tiny-gpt2", "--out", str(tmp_path / "p"), "--activation", "crelu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1].startswith("crrelu-llm patch: error: unknown activation 'crelu'") and "Traceback" not in result.stderr
    )


def test_cli_lets_programming_errors_keep_their_traceback(tmp_path, monkeypatch):
    """A ValueError that is not one of ours is a bug: it must not be dressed up as bad input."""
    from crrelu_llm import cli
    from crrelu_llm.patching import checkpoints

    def broken(*args, **kwargs):
        raise ValueError("a bug inside the library")

    monkeypatch.setattr(checkpoints, "patch_checkpoint", broken)
    with pytest.raises(ValueError, match="a bug inside the library"):
        cli.main(["patch", "tiny-gpt2", "--out", str(tmp_path / "p")])


def functions(path: Path):
    """(qualified name, lines) of every function defined in a module, nested ones included."""
    tree = ast.parse(path.read_text())
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_cli_functions_are_small():
    """The CLI parses, calls one library function and prints: no handler grows past a screen."""
    handlers = [
        (f, name, n)
        for f in (PACKAGE / "cli").glob("*.py")
        for name, n in functions(f)
        if name == "run" or name.startswith("_")
    ]
    assert len(handlers) >= 12
    for file, name, lines in handlers:
        assert lines <= 25, f"cli/{file.name}:{name} is {lines} lines"


def test_each_command_has_its_own_module_and_none_is_long():
    """One module per command (its parser, handler and printing), each at most 300 lines."""
    from crrelu_llm import cli

    modules = {m.__name__.rsplit(".", 1)[1] for m in cli.MODULES}
    assert modules >= {"patch", "export", "train", "evaluate", "probe", "experiment", "compare", "pairs"}
    for file in (PACKAGE / "cli").glob("*.py"):
        assert len(file.read_text().splitlines()) <= 300, file.name


def test_no_function_is_longer_than_a_screenful_and_the_run_reads_in_one():
    long = [
        f"{file.relative_to(PACKAGE)}:{name} ({n} lines)"
        for file in PACKAGE.rglob("*.py")
        for name, n in functions(file)
        if n > 120
    ]
    assert not long, long
    prepare = dict(functions(PACKAGE / "training" / "train.py"))["prepare"]
    assert prepare <= 80, f"training.train.prepare is {prepare} lines"


COMMANDS = {"sft", "dpo", "simpo", "orpo", "kto", "distill"}


def maps_commands_to_trainers(node) -> bool:
    """A dict literal keyed by two or more training commands whose values name trainers or configs."""
    if not isinstance(node, ast.Dict):
        return False
    keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
    names = [
        v.id
        if isinstance(v, ast.Name)
        else v.attr
        if isinstance(v, ast.Attribute)
        else v.value
        if isinstance(v, ast.Constant) and isinstance(v.value, str)
        else ""
        for v in node.values
    ]
    return len(keys & COMMANDS) >= 2 and any("Trainer" in n or "Config" in n for n in names)


def test_only_the_objectives_table_maps_a_command_to_its_trainer_and_config():
    from crrelu_llm.training.objectives import OBJECTIVES

    assert set(OBJECTIVES) == COMMANDS
    assert all(
        o.trainer.__name__.endswith("Trainer") and o.config.__name__.endswith("Config") for o in OBJECTIVES.values()
    )
    found = []
    for file in PACKAGE.rglob("*.py"):
        if file.name == "objectives.py":
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if maps_commands_to_trainers(node):
                found.append(f"{file.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("__mro__", "__bases__"):
                found.append(f"{file.relative_to(PACKAGE)}:{node.lineno} reads {node.attr}")
    assert not found, found


def test_the_table_check_sees_a_second_table():
    assert maps_commands_to_trainers(
        ast.parse('{"dpo": CRReLUDPOTrainer, "sft": trainer.CRReLUSFTTrainer}').body[0].value
    )
    assert not maps_commands_to_trainers(ast.parse('{"simpo": "SimPO\'s reward", "orpo": "log odds"}').body[0].value)


def test_each_objective_has_its_config_beside_its_trainer_in_a_module_of_its_own():
    """TRL's dpo_config.py/dpo_trainer.py: a reader who changes one objective opens one module,
    which holds that objective's config and trainer and no other objective's."""
    from crrelu_llm.training.objectives import OBJECTIVES

    modules = {}
    for name, objective in OBJECTIVES.items():
        config_module, trainer_module = objective.config.__module__, objective.trainer.__module__
        assert config_module == trainer_module, f"{name}: config in {config_module}, trainer in {trainer_module}"
        modules.setdefault(trainer_module, []).append(name)
    shared = {m: names for m, names in modules.items() if len(names) > 1}
    assert not shared, f"modules holding more than one objective: {shared}"


def test_every_public_function_and_class_has_a_caller():
    """Dead code: a top-level function or class of the package that nothing in the package,
    its tests, scripts or benchmarks names (discovery.has_parameters was one)."""
    sources = {
        p: p.read_text()
        for d in ("crrelu_llm", "tests", "scripts", "benchmarks")
        for p in (PACKAGE.parent / d).rglob("*.py")
    }
    dead = []
    for file in PACKAGE.rglob("*.py"):
        for node in ast.parse(sources[file]).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                word = re.compile(rf"\b{re.escape(node.name)}\b")
                uses = sum(len(word.findall(text)) for text in sources.values()) - 1  # less its definition
                if uses == 0:
                    dead.append(f"{file.relative_to(PACKAGE)}:{node.name}")
    assert not dead, dead


# A line of the README or the docs that tells the story of a day or of a machine that happened
# to be there, rather than what the tool does: dated figures belong in docs/results.md.
DIARY = re.compile(
    r"\b(morning|afternoon|evening|tonight|today|yesterday)\b|twice as slow|at hand|that day"
    r"|happened to|\bsession\b|has not had a GPU|previous run|on this machine",
    re.IGNORECASE,
)


def test_the_readme_and_docs_read_as_documentation_not_a_diary():
    docs = [p for p in (PACKAGE.parent / "docs").glob("*.md") if p.name != "results.md"]  # the dated record
    pages = [PACKAGE.parent / "README.md", *docs]
    lines = [
        f"{p.name}:{i}: {line.strip()}"
        for p in pages
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if DIARY.search(line)
    ]
    assert not lines, lines
    assert DIARY.search("The machine ran twice as slowly in the afternoon")


def test_the_architecture_page_lists_every_module():
    layout = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for file in PACKAGE.rglob("*.py"):
        if file.name != "__init__.py" and file.parent.name != "kernels" and file.parent.name != "bench_tasks":
            path = str(file.relative_to(PACKAGE.parent))
            assert path in layout, f"docs/architecture.md does not describe {path}"


def test_the_documented_bad_input_table_is_held_by_its_tests():
    """Every message excerpt in docs/cli.md's table appears in the test file its row names."""
    page = (PACKAGE.parent / "docs" / "cli.md").read_text() + "\n## "
    section = page[page.index("## What bad input gets") :]
    section = section[: section.index("\n## ")]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 15
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert len(cells) == 3, row
        _, message, test_file = cells
        text = (PACKAGE.parent / test_file.strip("`")).read_text()
        for excerpt in message.split("`")[1::2]:
            assert excerpt in text or excerpt.replace("'", "\\'") in text, f"{excerpt!r} is not checked in {test_file}"


def resolves(reference: str) -> bool:
    """Whether ``crrelu_llm.a.b.name`` names an importable module or an attribute of one."""
    import importlib

    parts = reference.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_every_docstring_reference_names_something_that_exists():
    """A docstring that names a module or function names one that is there (modules move)."""
    role = re.compile(r":(?:mod|func|class|data|meth|attr):`~?(crrelu_llm[\w.]*)`")
    stale = [
        f"{file.relative_to(PACKAGE)}: {m.group(1)}"
        for file in PACKAGE.rglob("*.py")
        for m in role.finditer(file.read_text())
        if not resolves(m.group(1))
    ]
    assert not stale, stale
    assert resolves("crrelu_llm.data.accounting.truncate_like_reference")
    assert not resolves("crrelu_llm.data.preference.truncate_like_reference")


def test_the_public_api_has_examples_and_they_run(tmp_path, monkeypatch):
    """TRL's way: the public API's docstrings carry an ``Example::`` block, and each runs as a
    doctest, training included (a ``+SKIP`` line marks only what would download)."""
    import doctest

    import crrelu_llm
    from crrelu_llm import help as help_module
    from crrelu_llm import run_files, trackers
    from crrelu_llm.ops import scalars
    from crrelu_llm.training import objectives, output_dir
    from crrelu_llm.training.trainers.dpo import CRReLUDPOConfig, CRReLUDPOTrainer

    documented = [
        crrelu_llm.CRReLU,
        crrelu_llm.patch_model,
        crrelu_llm.activation_parameters,
        crrelu_llm.activation_logs,
        CRReLUDPOConfig,
        CRReLUDPOTrainer,
        objectives,
        run_files,
        scalars,
        output_dir,
        help_module,
        trackers,
    ]
    monkeypatch.chdir(tmp_path)  # what the examples write (runs/doc) goes there
    for obj in documented:
        assert "Example::" in (obj.__doc__ or ""), obj
    finder = doctest.DocTestFinder(recurse=False)
    ran = run_examples(test for obj in documented for test in finder.find(obj, getattr(obj, "__name__", None)))
    assert ran >= 15
