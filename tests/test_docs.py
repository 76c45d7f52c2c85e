"""Every file, module and attribute that the docs and the code's docstrings and comments name
exists, so that a rename cannot leave them pointing at nothing. The failure lists every broken
reference as FILE:LINE: REFERENCE (KIND: why), so that one pass fixes them all.

Where: README.md, docs/*.md, jobs/README.md and bench/NOTES.md, whole (code blocks included);
and the docstrings (module, class, function) and comments of every .py file under singan/,
pipeline/, jobs/, bench/, infra/ and tests/ (not other string literals: code is not prose).

What counts as a reference, and when it is broken:
- path: a word with a slash whose last part has a file extension (.py, .md, .toml, .json,
  .png, ...: EXTENSIONS), in backticks or plain. It must name an existing file or folder inside
  the repo, relative to the repo root or to the folder of the file that names it; the repo is
  what a fresh clone holds (git's tracked files and new ones it does not ignore).
  Not references:
  - URLs and URIs (a "://" or ":/" in the word: https://..., s3://..., runs:/...), absolute
    paths ("/tmp/...", "~/.cache/...") and paths in the user's working folder ("./mlflow.db",
    where a command run there writes);
  - placeholders: a "<", ">", "{", "}", "*", "$" or "..." in the word ({output}/{image_id}/x.png,
    docs/*.md), or a metavariable part (METAVARIABLE: DIR/x.png, jobs/NAME.py, scale_XX.png,
    start_scale_S/beta_B.gif, sr_xF.png);
  - what the tools write: a path whose first folder is one of OUTPUT_FOLDERS (runs/ and
    outputs/, where the commands and the jobs write, and the folders of one image's output:
    model/, reals/, samples/, sr/, animate/, metrics/, _results/), and the value of an --out or
    --output option in a usage line;
  - the official SinGAN code's files, named when comparing with it (OFFICIAL_CODE).
- dotted: a word starting with singan., pipeline., jobs. or bench. Its longest prefix that is a
  module file of the repo must exist, and each remaining part must be an attribute, found by
  parsing (no import, so no script runs): a top-level def, class, assignment or import of that
  module (an import is followed to where it points), or a submodule of a package; then a
  class's own defs, assignments and `self.NAME =` attributes and those of its bases (a base
  from outside the project is imported and asked). `singan.train(...)` counts when singan/
  exports `train`. A path to a module's attribute ("pipeline/tracking.ARTIFACTS") is checked
  as the dotted name. Not references: the entry-point groups of pyproject.toml
  ("singan.model_sources") and a dotted word ending in a file extension ("jobs.json").
- name: a bare file name of the project's own kinds (.py, .md, .toml; no slash). Some file of
  the repo must have that name, unless the text says it lives in the project's shared folder
  outside the repo ("shared folder" or "shared <word> folder" within SHARED_WINDOW characters
  of it, as in "the project's shared reference folder (SINGAN.md)"), or it is one of
  OFFICIAL_CODE.
- test: a pytest id, FILE::FUNCTION or FILE::CLASS::METHOD (docs/reliability.md names the
  tests behind its promises): the file (relative to the repo root, tests/ or the naming file's
  folder) must define it.
- link: a Markdown link [text](target) to a local file, relative to the Markdown file's folder
  (anchors "#..." and URLs are not checked).
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import subprocess
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
        "jobs/README.md", "bench/NOTES.md"]
CODE_FOLDERS = ("singan", "pipeline", "jobs", "bench", "infra", "tests")
PACKAGES = ("singan", "pipeline", "jobs", "bench")
EXTENSIONS = {"py", "md", "toml", "txt", "json", "jsonl", "png", "jpg", "jpeg", "gif", "webp",
              "yaml", "yml", "parquet", "csv", "npz", "pth", "pt", "sh", "cfg", "ini", "html",
              "db", "lock", "in"}
BARE_EXTENSIONS = {"py", "md", "toml"}
# Written by the tools, not part of the repo: the commands' and the job's output folders, and the
# folders inside one image's output (singan/data/outputs.py, pipeline/ledger.py).
OUTPUT_FOLDERS = {"runs", "outputs", "model", "reals", "samples", "sr", "animate", "metrics",
                  "_results"}
SHARED_WINDOW = 80
SHARED_FOLDER = re.compile(r"shared(?:\s+\w+)?\s+folder")
# The official SinGAN code's files (outside the repo), named when comparing with it. Its bare
# training, models and config modules are left out: those were also names of this project's own
# modules, so a doc names the official ones with their folder (SinGAN/models.py).
OFFICIAL_CODE = {"main_train.py", "random_samples.py", "functions.py", "imresize.py",
                 "manipulate.py", "SinGAN/training.py", "SinGAN/functions.py",
                 "SinGAN/imresize.py", "SinGAN/models.py", "SinGAN/manipulate.py"}
# Metavariables of usage lines and layouts: a whole part (DIR/x.png, jobs/NAME.py) or a name's
# suffix (start_scale_S/beta_B.gif).
METAVARIABLE = re.compile(r"(?:DIR|NAME|FILE|PATH|URL|ID)|\w*_[A-Z]{1,2}|\w*_x[A-Z]")
OUTPUT_OPTION = re.compile(r"--(?:out|output)[ =]$")
PLACEHOLDER = re.compile(r"[<>{}*$]|\.\.\.")
WORD = re.compile(r"[\w./{}<>*$~:@+%=-]+")
PATH = re.compile(r"[\w.-]*(?:/[\w.-]+)*/[\w.-]*\.(\w+)|[\w-][\w.-]*\.(\w+)")
DOTTED = re.compile(r"(?<![\w./-])(?:singan|pipeline|jobs|bench)(?:\.[A-Za-z_]\w*)+")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SKIPPED_DIRS = {"__pycache__", "runs", "outputs", "node_modules"}
TEST_ID = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*(?:test_\w+|conftest)\.py)::(\w+)(?:::(\w+))?")


def skipped(path: Path) -> bool:
    """Not the repo's own files: hidden folders (.venv, .git, caches), build and tool outputs."""
    return any(part in SKIPPED_DIRS or part.startswith(".") or part.endswith(".egg-info")
               for part in path.relative_to(ROOT).parts)


def entry_point_groups() -> set[str]:
    return set(re.findall(r'entry-points\."([^"]+)"', (ROOT / "pyproject.toml").read_text()))


def repo_files() -> set[Path] | None:
    """The files of the repo as a fresh clone has them: tracked, or new and not ignored (a local
    mlflow.db or run folder must not make a reference pass here and fail in CI); None outside a
    git checkout (then every file on disk counts)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {ROOT / line for line in listed.splitlines() if (ROOT / line).is_file()}


NOT_MODULES = entry_point_groups()
REPO_FILES = repo_files()
REPO_FOLDERS = (None if REPO_FILES is None else
                {folder for file in REPO_FILES for folder in file.parents
                 if folder.is_relative_to(ROOT)})
FILE_NAMES = ({p.name for p in ROOT.rglob("*") if not skipped(p) and p.is_file()}
              if REPO_FILES is None else {p.name for p in REPO_FILES})


def in_repo(path: Path) -> bool:
    if REPO_FILES is None:
        return path.exists()
    return path in REPO_FILES or path in REPO_FOLDERS


# --- where the text is --------------------------------------------------------------------------

def python_text(source: str) -> list[tuple[int, str]]:
    """(line number, line) of every docstring line and comment of a module's source."""
    lines = source.splitlines()
    found: dict[int, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc = body[0]
                for number in range(doc.lineno, doc.end_lineno + 1):
                    found[number] = lines[number - 1]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = found.get(token.start[0], "") + " " + token.string
    return sorted(found.items())


def scanned_files() -> Iterator[tuple[str, list[tuple[int, str]]]]:
    for name in DOCS:
        yield name, list(enumerate((ROOT / name).read_text().splitlines(), 1))
    for folder in CODE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not skipped(path):
                yield str(path.relative_to(ROOT)), python_text(path.read_text())


# --- what a reference is ------------------------------------------------------------------------

def references(lines: list[tuple[int, str]], markdown: bool) -> Iterator[tuple[int, str, str]]:
    """(line number, kind, reference) for every reference in the lines: kinds "link", "test",
    "dotted", "path" and "name" (a bare file name)."""
    text = "\n".join(line for _, line in lines)
    offset = 0
    for number, line in lines:
        links = set()
        if markdown:
            for match in LINK.finditer(line):
                target = match.group(1)
                if not re.match(r"[a-z][\w+.-]*:|#", target):
                    links.add(target.split("#")[0])
                    yield number, "link", target.split("#")[0]
        for match in TEST_ID.finditer(line):
            yield number, "test", match.group(0)
        for match in DOTTED.finditer(line):
            name = match.group(0)
            if name not in NOT_MODULES and name.rsplit(".", 1)[1] not in EXTENSIONS:
                yield number, "dotted", name
        for match in WORD.finditer(line):
            word = match.group(0)
            if "://" in word or ":/" in word or word.startswith(("/", "~", "./")) \
                    or PLACEHOLDER.search(word):
                continue
            word = word.rstrip(".:,;=-").lstrip(":=-")
            path = PATH.fullmatch(word)
            parts = word.split("/")
            if not path or word in links or len(parts) > 1 and parts[0] in OUTPUT_FOLDERS \
                    or word in OFFICIAL_CODE or OUTPUT_OPTION.search(line[:match.start()]) \
                    or any(METAVARIABLE.fullmatch(part.split(".")[0]) for part in parts):
                continue
            extension = path.group(1) or path.group(2)
            if "/" in word:
                if extension in EXTENSIONS:
                    yield number, "path", word
                elif word.split("/")[0] in PACKAGES and re.fullmatch(r"[\w/.]+", word):
                    yield number, "dotted", word.replace("/", ".")
            elif extension in BARE_EXTENSIONS and not DOTTED.fullmatch(word):
                start = offset + match.start()
                window = text[max(0, start - SHARED_WINDOW):start + len(word) + SHARED_WINDOW]
                if not SHARED_FOLDER.search(window):
                    yield number, "name", word
        offset += len(line) + 1


# --- whether it exists --------------------------------------------------------------------------

def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


_TABLES: dict[str, dict[str, ast.AST]] = {}


def top_level(module: str) -> dict[str, ast.AST]:
    """Each top-level name of a project module and the statement (or alias) that binds it."""
    if module not in _TABLES:
        path = module_file(module)
        table: dict[str, ast.AST] = {}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        _bind(ast.parse(path.read_text()).body, table, package)
        _TABLES[module] = table
    return _TABLES[module]


def _bind(body: list[ast.stmt], table: dict[str, ast.AST], package: str) -> None:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            table[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        table[leaf.id] = node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                table[alias.asname or alias.name.split(".")[0]] = ast.Import(
                    names=[ast.alias(name=alias.name if alias.asname else
                                     alias.name.split(".")[0])])
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                table[alias.asname or alias.name] = ast.ImportFrom(
                    module=source, names=[alias], level=0)
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for part in ("body", "orelse", "finalbody"):
                _bind(getattr(node, part, []), table, package)
            for handler in getattr(node, "handlers", []):
                _bind(handler.body, table, package)


def is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES and module_file(module) is not None


def lookup(module: str, name: str) -> tuple | None:
    """What `name` is in project module `module`: ("module", dotted), ("class", module, node),
    ("external", object), ("value",) or None when it is not there."""
    if module_file(f"{module}.{name}"):
        return ("module", f"{module}.{name}")
    node = top_level(module).get(name)
    if node is None:
        return None
    if isinstance(node, ast.ClassDef):
        return ("class", module, node)
    if isinstance(node, ast.Import):
        return resolve_module(node.names[0].name)
    if isinstance(node, ast.ImportFrom):
        source, original = node.module, node.names[0].name
        if is_project(f"{source}.{original}"):
            return ("module", f"{source}.{original}")
        if is_project(source):
            return lookup(source, original)
        return resolve_external(source, original)
    return ("value",)


def resolve_module(name: str) -> tuple | None:
    if is_project(name):
        return ("module", name)
    try:
        return ("external", importlib.import_module(name))
    except ImportError:
        return None


def resolve_external(module: str, name: str) -> tuple | None:
    try:
        return ("external", getattr(importlib.import_module(module), name))
    except (ImportError, AttributeError):
        try:
            return ("external", importlib.import_module(f"{module}.{name}"))
        except ImportError:
            return None


def class_attribute(module: str, node: ast.ClassDef, name: str) -> tuple | None:
    table: dict[str, ast.AST] = {}
    _bind(node.body, table, module)
    for method in node.body:
        if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            for leaf in ast.walk(method):
                if isinstance(leaf, ast.Attribute) and isinstance(leaf.ctx, ast.Store) \
                        and isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                    table.setdefault(leaf.attr, leaf)
    if name in table:
        found = table[name]
        return ("class", module, found) if isinstance(found, ast.ClassDef) else ("value",)
    for base in node.bases:
        parts = ast.unparse(base).split("[")[0].split(".")
        kind = lookup(module, parts[0])
        for part in parts[1:]:
            kind = attribute(kind, part) if kind else None
        found = attribute(kind, name) if kind else None
        if found:
            return found
    return None


def attribute(kind: tuple, name: str) -> tuple | None:
    if kind[0] == "module":
        return lookup(kind[1], name)
    if kind[0] == "class":
        return class_attribute(kind[1], kind[2], name)
    if kind[0] == "external" and hasattr(kind[1], name):
        return ("external", getattr(kind[1], name))
    return None


def dotted_problem(name: str) -> str | None:
    parts = name.split(".")
    known = next((n for n in range(len(parts), 0, -1) if module_file(".".join(parts[:n]))), 0)
    if not known:
        return "no such module"
    kind: tuple | None = ("module", ".".join(parts[:known]))
    for n in range(known, len(parts)):
        if kind[0] == "value":
            return f"{'.'.join(parts[:n])} is neither a module nor a class"
        kind = attribute(kind, parts[n])
        if kind is None:
            return f"no {parts[n]} in {'.'.join(parts[:n])}"
    return None


def pytest_id_problem(reference: str, here: Path) -> str | None:
    """A pytest id, FILE::FUNCTION or FILE::CLASS::METHOD, FILE relative to the repo root, tests/
    or the folder of the file that names it."""
    file, *names = reference.split("::")
    paths = [base / file for base in (ROOT, ROOT / "tests", here.parent)]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return "no such file"
    scope = ast.parse(path.read_text()).body
    for name in names:
        node = next((n for n in scope if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef
                                                    | ast.ClassDef) and n.name == name), None)
        if node is None:
            return f"no {name} in {path.relative_to(ROOT)}"
        scope = node.body
    return None


def problem(kind: str, reference: str, here: Path) -> str | None:
    """Why the reference, found in the file `here`, is broken; None when it is not."""
    if kind == "dotted":
        return dotted_problem(reference)
    if kind == "name":
        return None if reference in FILE_NAMES else "no file of that name in the repo"
    if kind == "test":
        return pytest_id_problem(reference, here)
    bases = [here.parent] if kind == "link" else [ROOT, here.parent]
    for base in bases:
        path = (base / reference).resolve()
        if path.is_relative_to(ROOT) and in_repo(path):
            return None
    return "no such file"


def broken(name: str, lines: list[tuple[int, str]]) -> list[str]:
    here = ROOT / name
    found = []
    for number, kind, reference in references(lines, name.endswith(".md")):
        why = problem(kind, reference, here)
        if why:
            found.append(f"{name}:{number}: {reference} ({kind}: {why})")
    return found


# --- the tests ----------------------------------------------------------------------------------

def test_every_reference_exists():
    found = [line for name, lines in scanned_files() for line in broken(name, lines)]
    if found:
        pytest.fail(f"{len(found)} broken references:\n" + "\n".join(found), pytrace=False)


SYNTHETIC = """\
The job is in `jobs/train_manifest.py`, not in jobs/train_everything.py (nor `DESIGN.md`); see
[the notes](bench/NOTES.md) and [nothing](docs/nothing.md), singan.base.Pyramid.save and
singan.base.Pyramid.teleport, pipeline.storage.ImageStore and singan.recipe.Recipe, singan.train(
image) and singan.train_all(image), pipeline/tracking.ARTIFACTS and pipeline/tracking.ARTEFACTS,
`GOOD.md`, in the project's shared folder; `test_docs.py::test_real_names_resolve` and
`tests/test_docs.py::test_nothing`; `SinGAN/training.py` of the official code; `sample.py`.
Not references: runs/demo/outputs/x/samples/final.png, sr/sr_x4.png, {output}/{image_id}/x.png,
s3://bucket/outputs/manifest.parquet, ~/.cache/torch/hub/x.pth, docs/*.md, bench/results/...,
DIR/sr/sr_x4.png, jobs/NAME.py, --out manifests/photos.parquet, [a section](#the-batch-job),
[the paper](https://arxiv.org/abs/1905.01164), the entry-point group singan.model_sources, a file
jobs.json.
"""


def test_the_check_finds_made_up_references_and_only_those():
    lines = list(enumerate(SYNTHETIC.splitlines(), 1))
    found = broken("README.md", lines)
    assert found == [
        "README.md:1: jobs/train_everything.py (path: no such file)",
        "README.md:1: DESIGN.md (name: no file of that name in the repo)",
        "README.md:2: docs/nothing.md (link: no such file)",
        "README.md:3: singan.base.Pyramid.teleport (dotted: no teleport in singan.base.Pyramid)",
        "README.md:3: singan.recipe.Recipe (dotted: no recipe in singan)",
        "README.md:4: singan.train_all (dotted: no train_all in singan)",
        "README.md:4: pipeline.tracking.ARTEFACTS (dotted: no ARTEFACTS in pipeline.tracking)",
        "README.md:6: tests/test_docs.py::test_nothing (test: no test_nothing in tests/test_docs.py)",
        "README.md:6: sample.py (name: no file of that name in the repo)",
    ], found
    kinds = {kind for _, kind, _ in references(lines, markdown=True)}
    assert kinds == {"path", "link", "dotted", "name", "test"}


def test_docstrings_and_comments_are_read_and_code_is_not():
    source = '''"""The module: see singan/nothing.py."""
x = "singan/not_a_docstring.py"


def f():
    """f: singan.base.Nothing"""
    return 1  # a comment: pipeline/nothing.py
'''
    found = broken("singan/example.py", python_text(source))
    assert [line.split(" (")[0] for line in found] == [
        "singan/example.py:1: singan/nothing.py",
        "singan/example.py:6: singan.base.Nothing",
        "singan/example.py:7: pipeline/nothing.py",
    ]


@pytest.mark.parametrize("name", ["singan.recipes.singan.training", "singan.base.Pyramid.save",
                                  "pipeline.storage.ImageStore.load_model", "singan.train",
                                  "singan.recipes.RECIPES", "jobs.fleet.stream",
                                  "singan.SinGAN.parameters"])
def test_real_names_resolve(name):
    assert dotted_problem(name) is None


@pytest.mark.parametrize(("name", "why"), [
    ("singan.nothing.x", "no nothing in singan"),
    ("nothing_at_all.x", "no such module"),
    ("singan.train.train_scale", "singan.train is neither a module nor a class"),
    ("singan.recipes.singan.training.no_such_step", "no no_such_step in singan.recipes.singan.training"),
])
def test_made_up_names_say_why(name, why):
    assert dotted_problem(name) == why
