"""The folder tree is the architecture: jobs -> pipeline -> singan, never back; no import loops
inside a package (an import inside a function still counts); and a choice between recipes or
tasks is made by their registries, not by comparing names across files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("singan", "pipeline", "jobs")
LAYER = {"singan": 0, "pipeline": 1, "jobs": 2}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def runtime_imports(path: Path, name: str | None = None) -> set[str]:
    """The project modules `path` (module `name`) imports when it runs: every import statement,
    at any depth, except those under `if TYPE_CHECKING:` (annotations only, never executed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.If)
               and ast.unparse(guard.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
               for statement in guard.body for node in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from singan.data import outputs` imports singan.data.outputs
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
    return {other for other in found if other in MODULES and other != name}


GRAPH = {name: runtime_imports(path, name) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_loop_and_ignores_annotation_only_imports(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    guarded = tmp_path / "guarded.py"
    guarded.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from singan.recipes.singan.networks import SinGAN\n"
                       "def f():\n    from singan.recipes.singan.training import train_scale\n")
    assert runtime_imports(guarded) == {"singan.recipes.singan.training"}


@pytest.mark.parametrize("package", ["singan", "pipeline"])
def test_no_import_loops(package):
    inside = {name: {other for other in deps if other.split(".")[0] == package}
              for name, deps in GRAPH.items() if name.split(".")[0] == package}
    # A package's __init__ re-exports its modules; what matters is that no module needs the
    # package (or itself, through others) while being imported.
    inside.pop(package, None)
    inside = {name: deps - {package} for name, deps in inside.items()}
    assert cycles(inside) == []


def test_dependencies_point_one_way_jobs_pipeline_singan():
    backwards = [(name, other) for name, deps in GRAPH.items() for other in deps
                 if LAYER[other.split(".")[0]] > LAYER[name.split(".")[0]]]
    assert backwards == []


# Names that only a registry may compare: recipes (singan/recipes/__init__.py,
# singan/recipes/spec.py and the recipes' own modules) and manifest tasks (pipeline/tasks.py).
RECIPE_NAMES = {"singan", "consingan"}
TASK_NAMES = {"train", "sr", "animate"}
ALLOWED = {"pipeline/tasks.py": TASK_NAMES}


def compared_strings(path: Path) -> set[str]:
    """String constants that take part in ==, !=, in, not in comparisons in `path`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                for leaf in ast.walk(operand):
                    if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                        found.add(leaf.value)
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_choices_between_recipes_and_tasks_are_made_by_their_registries(name):
    path = MODULES[name]
    compared = compared_strings(path) & (RECIPE_NAMES | TASK_NAMES)
    compared -= ALLOWED.get(str(path.relative_to(ROOT)), set())
    assert compared == set(), f"{name} compares {sorted(compared)}: look them up in the registry"


# Only pipeline/storage.py talks to storage libraries, so that every remote call has its time
# limit and one retry layer (ours), and S3 requests are sent once each (see its docstring).
STORAGE_LIBRARIES = {"fsspec", "s3fs", "botocore", "aiobotocore"}
STORAGE_MODULE = "pipeline.storage"


def storage_bypasses(path: Path) -> list[str]:
    """What in `path` goes around pipeline.storage: imports of STORAGE_LIBRARIES (at any depth,
    annotation-only ones too) and reads of a `.fs` attribute (a Storage's filesystem)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            names = []
        found += [f"line {node.lineno}: imports {name}" for name in names
                  if name.split(".")[0] in STORAGE_LIBRARIES]
        if isinstance(node, ast.Attribute) and node.attr == "fs":
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_checker_finds_storage_bypasses(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("import fsspec.core\nfrom s3fs import S3FileSystem\nimport json\n"
                      "def f(store):\n    import botocore.session\n    return store.fs.glob('*')\n")
    assert storage_bypasses(module) == ["line 1: imports fsspec.core", "line 2: imports s3fs",
                                        "line 5: imports botocore.session", "line 6: store.fs"]


@pytest.mark.parametrize("name", sorted(set(MODULES) - {STORAGE_MODULE}))
def test_only_pipeline_storage_talks_to_storage_libraries(name):
    assert storage_bypasses(MODULES[name]) == [], (
        f"{name} goes around pipeline.storage: use its functions (filesystem calls there have "
        "the time limit and the one retry layer)")


def test_no_module_is_hidden_by_a_name_of_its_package():
    """A package's attribute named like one of its modules is that module (the function
    `singan.train` once hid the module of the same name, and `singan.apps.animate` another)."""
    import importlib
    import types

    hidden = []
    for init in (ROOT / "singan").rglob("__init__.py"):
        package = importlib.import_module(module_name(init))
        for path in init.parent.iterdir():
            name = path.stem if path.suffix == ".py" else path.name
            if name.startswith("_") or not (path.suffix == ".py" or (path / "__init__.py").exists()):
                continue
            value = getattr(package, name, None)
            if value is not None and not isinstance(value, types.ModuleType):
                hidden.append(f"{package.__name__}.{name}")
    assert hidden == []
