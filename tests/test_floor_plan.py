"""The floor plan: every import points down a floor, never across a forbidden line, never in a circle.

docs/architecture.md draws four floors::

    apps       birdsearch/cli.py (the console script), birdsearch/cli_args.py, birdsearch/api.py (the
               Python API), birdsearch/toy/ (the demo), service/ (the HTTP app), analyze/, and every
               workflow's subcommand module (indexer/cli.py, model/cli.py, model/distill/cli.py, ...)
    workflows  engine/ (the query engine), indexer/, model/distill/, model/evaluate/, birdsearch/client.py
    core       model/ (the rest: hub, teacher, student, audio, mel, encoder, names, tables, metrics, ...)
    ground     birdsearch/__init__.py, birdsearch/errors.py, birdsearch/paths.py, birdsearch/cpus.py

The rule: an import points down a floor or stays in its own group. Across groups of one floor only
the lines ``SIDEWAYS`` lists are allowed, and none of them both ways: the engine imports no app; the
apps do not import each other (each may use the shared argument definitions in ``cli_args``, the
console script loads the subcommands by name and plugs the toy world in); no two workflow packages
import each other.

This test reads every module's source with ``ast`` (imports inside functions and relative imports
included), maps folders to installed names with pyproject.toml's ``package-dir`` (``model/`` is
``birdsearch.model``), and fails on an import that points up a floor, crosses to a group of the
same floor that ``SIDEWAYS`` does not list, or closes a circle of modules. Imports under
``if TYPE_CHECKING:`` count for direction but not for circles: they never run. Modules named by
strings are the plug points and are not walked: the console script's ``COMMAND_MODULES``, the
package root's ``LAZY_EXPORTS`` (``birdsearch.Birdsearch``), the HTTP app's factory that uvicorn
starts by name, and the plug-ins of ``BIRDSEARCH_PLUGINS`` (see ``birdsearch.model.registry``).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = "birdsearch"

GROUND, CORE, WORKFLOWS, APPS = 0, 1, 2, 3
FLOOR_NAMES = {GROUND: "ground", CORE: "core", WORKFLOWS: "workflows", APPS: "apps"}

# (module or package, floor, group), most specific first; a module takes the first rule that
# names it or a package above it. A workflow's subcommand module (``<package>.cli``) is an app of
# the group "cli"; an app's own ``cli`` module belongs to the app.
RULES: tuple[tuple[str, int, str], ...] = (
    ("birdsearch.errors", GROUND, "ground"),
    ("birdsearch.paths", GROUND, "ground"),
    ("birdsearch.cpus", GROUND, "ground"),
    ("birdsearch.cli", APPS, "entry"),  # the console script: it loads the subcommands, nobody loads it
    ("birdsearch.cli_args", APPS, "args"),  # argument definitions the subcommands share
    ("birdsearch.api", APPS, "api"),
    ("birdsearch.toy", APPS, "toy"),
    ("birdsearch.service", APPS, "service"),
    ("birdsearch.analyze", APPS, "analyze"),
    ("birdsearch.client", WORKFLOWS, "client"),
    ("birdsearch.engine", WORKFLOWS, "engine"),
    ("birdsearch.indexer", WORKFLOWS, "indexer"),
    ("birdsearch.model.distill", WORKFLOWS, "model.distill"),
    ("birdsearch.model.evaluate", WORKFLOWS, "model.evaluate"),
    ("birdsearch.model", CORE, "model"),
)
SUBCOMMAND_MODULE = "cli"  # ``<core or workflow package>.cli`` is an app (group "cli") wherever it sits
APP_GROUPS = frozenset({"entry", "args", "api", "toy", "service", "analyze", "cli"})

# Imports between different groups of one floor that are allowed (group -> groups it may import).
# Everything not listed is forbidden: the indexer never uses the engine, the engine never uses
# training or evaluation code, distillation never uses evaluation, no app uses another app, a
# subcommand never reaches into the toy world, nobody imports the console script.
SIDEWAYS: Mapping[str, frozenset[str]] = {
    "engine": frozenset({"indexer"}),  # it serves the index versions the indexer publishes
    "client": frozenset({"engine"}),  # the HTTP client resolves species lists as the engine does
    "model.evaluate": frozenset({"indexer", "model.distill"}),  # reads indexes and distillation manifests
    "entry": frozenset({"toy", "args"}),  # registers the toy world's plug-in before parsing
    **{app: frozenset({"args"}) for app in APP_GROUPS - {"entry", "args"}},
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the longest known module the statement names)
    line: int
    runs: bool  # False under ``if TYPE_CHECKING:``


def package_dirs() -> dict[str, str]:
    """pyproject.toml's ``[tool.setuptools.package-dir]``: installed package -> folder."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Installed module name -> source file, for every module of every mapped folder."""
    modules: dict[str, Path] = {}
    for package, folder in package_dirs().items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def floor_of(module: str) -> tuple[int, str]:
    """(floor, group) of an installed module name."""
    if module == TOP:
        return GROUND, "ground"
    for prefix, floor, group in RULES:
        if module == prefix or module.startswith(prefix + "."):
            if floor in (CORE, WORKFLOWS) and module.rpartition(".")[2] == SUBCOMMAND_MODULE:
                return APPS, "cli"
            return floor, group
    # Any other module at the top of birdsearch/ is an app of its own.
    return APPS, module


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def resolve_target(name: str, modules: Iterable[str]) -> str | None:
    """The longest known module that ``name`` is or lies in; None outside the project."""
    known = set(modules)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def type_checking_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the statements under ``if TYPE_CHECKING:``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(module: str, source: str, is_pkg: bool, modules: Iterable[str]) -> list[Import]:
    """Every project import in a module's source, at any depth (functions, classes, branches)."""
    known = set(modules)
    tree = ast.parse(source)
    static = type_checking_lines(tree)
    package = module if is_pkg else module.rpartition(".")[0]
    found: dict[tuple[str, int], Import] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` imports mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for name in names:
            target = resolve_target(name, known)
            if target is not None and target != module:
                found.setdefault(
                    (target, node.lineno), Import(module, target, node.lineno, node.lineno not in static)
                )
    return list(found.values())


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> list[Import]:
    """All project imports of a module map {name: (source text, is package)}."""
    return [imp for name, (text, pkg) in sources.items() for imp in imports_of(name, text, pkg, sources)]


def read_sources(root: Path = ROOT) -> dict[str, tuple[str, bool]]:
    return {name: (path.read_text(), is_package(path)) for name, path in discover(root).items()}


def violation(imp: Import) -> str | None:
    """Why an import breaks the floor plan, or None."""
    (src_floor, src_group), (dst_floor, dst_group) = floor_of(imp.source), floor_of(imp.target)
    where = f"{imp.source} (line {imp.line}) imports {imp.target}"
    if dst_group == "entry":
        return f"{where}: nothing imports the console script; shared helpers belong in birdsearch.cli_args"
    if dst_floor > src_floor:
        return f"{where}: points up from {FLOOR_NAMES[src_floor]} to {FLOOR_NAMES[dst_floor]}"
    if dst_floor == src_floor and dst_group != src_group and dst_group not in SIDEWAYS.get(src_group, ()):
        return f"{where}: crosses from {src_group} to {dst_group} on the {FLOOR_NAMES[src_floor]} floor"
    return None


def cycles(imports: Iterable[Import]) -> list[tuple[list[str], list[str]]]:
    """Each circle of modules (a strongly connected component of the runtime import graph): one
    path around it, and all the modules caught in it."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.runs:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[list[str], list[str]]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph has a few hundred nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append((circle_path(graph, set(component)), sorted(component)))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def circle_path(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """One concrete circle through a strongly connected component: a -> b -> ... -> a."""
    start = min(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first, inside the component, back to the start
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [start]
                    while v != start:
                        path.append(v)
                        v = previous[v]
                    return [start, *reversed(path[1:]), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {sorted(component)}")


def check(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Every problem with a module map: wrong-way imports, then circles."""
    return problems_of(import_graph(sources))


def problems_of(imports: list[Import]) -> list[str]:
    problems = [v for v in map(violation, imports) if v]
    for path, members in cycles(imports):
        others = sorted(set(members) - set(path))
        problems.append(
            "import circle: "
            + " -> ".join(path)
            + (f" (also caught in it: {', '.join(others)})" if others else "")
        )
    return problems


# ---- the project ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> dict[str, tuple[str, bool]]:
    return read_sources()


@pytest.fixture(scope="module")
def project_imports(project) -> list[Import]:
    return import_graph(project)


def test_the_project_keeps_its_floor_plan(project_imports):
    problems = problems_of(project_imports)
    assert not problems, "\n".join(problems)


def test_every_mapped_folder_is_walked_and_every_module_has_a_floor(project):
    walked = {"birdsearch.cli", "birdsearch.model.hub", "birdsearch.indexer.store", "birdsearch.engine.detections",
              "birdsearch.service.app", "birdsearch.analyze.run", "birdsearch.api"}  # fmt: skip
    assert walked <= set(project)
    assert any(name.startswith("birdsearch.service.routes.") for name in project)
    floors = {
        "birdsearch.errors": (GROUND, "ground"),
        "birdsearch.model.hub": (CORE, "model"),
        "birdsearch.model.tables": (CORE, "model"),
        "birdsearch.model.registry": (CORE, "model"),
        "birdsearch.model.evaluate.gallery": (WORKFLOWS, "model.evaluate"),
        "birdsearch.engine.runtime": (WORKFLOWS, "engine"),
        "birdsearch.client": (WORKFLOWS, "client"),
        "birdsearch.model.cli": (APPS, "cli"),
        "birdsearch.model.distill.cli": (APPS, "cli"),
        "birdsearch.indexer.cli": (APPS, "cli"),
        "birdsearch.service.app": (APPS, "service"),
        "birdsearch.service.cli": (APPS, "service"),
        "birdsearch.analyze.cli": (APPS, "analyze"),
        "birdsearch.api": (APPS, "api"),
        "birdsearch.toy.cli": (APPS, "toy"),
        "birdsearch.cli_args": (APPS, "args"),
        "birdsearch.cli": (APPS, "entry"),
    }
    assert {module: floor_of(module) for module in floors} == floors


def test_pyproject_lists_every_package_of_the_mapped_folders():
    """The visible map is the whole map: a folder with an __init__.py that pyproject.toml does not list
    would be missing from the wheel, and a listed one without its folder would break the build."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        listed = tomllib.load(f)["tool"]["setuptools"]["packages"]
    found = {name for name, path in discover().items() if is_package(path)}
    assert sorted(listed) == sorted(found)


def test_the_engine_imports_no_app(project_imports):
    """The engine knows nothing of HTTP, of files of detections or of notebooks: every door is above it."""
    for imp in project_imports:
        if floor_of(imp.source)[1] == "engine":
            assert floor_of(imp.target)[0] < APPS, imp


def test_apps_do_not_import_each_other(project_imports):
    """The HTTP app, analyze, the Python API, the demo and the subcommands meet only in the engine below
    them; what they share of the command line is in cli_args, and the console script loads them by name."""
    for imp in project_imports:
        (source_floor, source), (target_floor, target) = floor_of(imp.source), floor_of(imp.target)
        if source_floor == target_floor == APPS and source != target:
            assert target == "args" or (source, target) == ("entry", "toy"), imp


def test_no_two_workflow_packages_import_each_other(project_imports):
    """Workflows stand beside each other: where one uses another, the other does not use it back."""
    lines = {
        (floor_of(imp.source)[1], floor_of(imp.target)[1])
        for imp in project_imports
        if floor_of(imp.source)[0] == floor_of(imp.target)[0] == WORKFLOWS
    }
    ties = sorted({tuple(sorted(line)) for line in lines if line[0] != line[1] and line[::-1] in lines})
    assert not ties, f"workflow packages importing each other: {ties}"
    allowed = {(group, other) for group, others in SIDEWAYS.items() for other in others}
    assert not {line for line in allowed if line[::-1] in allowed}, "SIDEWAYS allows a line both ways"


def test_nothing_below_the_apps_names_the_demo_or_the_console_script(project_imports):
    """The plan's firmest lines, spelled out: nothing under model/, indexer/ or engine/ (their subcommand
    modules included), and no other app, imports the toy world or the console script."""
    for imp in project_imports:
        if floor_of(imp.source)[1] not in ("toy", "entry"):
            assert not imp.target.startswith("birdsearch.toy"), imp
            assert imp.target != "birdsearch.cli", imp


# ---- the checker on planted faults ------------------------------------------------------------


def planted(**modules: str) -> dict[str, tuple[str, bool]]:
    """A synthetic module map: keyword names use '__' for dots; a name ending in '__init' is a package."""
    out = {}
    for key, text in modules.items():
        name = key.replace("__", ".")
        pkg = name.endswith(".init")
        out[name.removesuffix(".init")] = (text, pkg)
    return out


def test_an_upward_import_inside_a_function_is_caught():
    sources = planted(
        birdsearch__model__hub="def resolve():\n    from birdsearch.toy.models import toy_model_dir\n",
        birdsearch__toy__models="from birdsearch.model import hub\n",
        birdsearch__model__init="",
    )
    problems = check(sources)
    assert any(
        "birdsearch.model.hub (line 2) imports birdsearch.toy.models: points up" in p for p in problems
    )
    assert any(p.startswith("import circle: birdsearch.model.hub -> birdsearch.toy.models") for p in problems)


def test_the_old_fault_planted_back_into_the_real_core_is_caught(project, project_imports):
    """hub.py as it was: resolving a ``toy`` spec imported the toy world, which imports the core."""
    text, _ = project["birdsearch.model.hub"]
    text += "\n\ndef resolve_toy(kind, variant):\n    from birdsearch.toy.models import toy_model_dir\n"
    planted_imports = imports_of("birdsearch.model.hub", text, False, project)
    imports = [i for i in project_imports if i.source != "birdsearch.model.hub"] + planted_imports
    problems = problems_of(imports)
    assert any(p.endswith("imports birdsearch.toy.models: points up from core to apps") for p in problems)
    assert any(p.startswith("import circle: ") and "birdsearch.toy.models" in p for p in problems), problems


def test_relative_imports_resolve_to_installed_names():
    sources = planted(
        birdsearch__model__student="from . import hub\nfrom .evaluate import metrics\n",
        birdsearch__model__hub="",
        birdsearch__model__evaluate__init="from ..distill import trainer\n",
        birdsearch__model__evaluate__metrics="",
        birdsearch__model__distill__trainer="",
    )
    targets = {(i.source, i.target) for i in import_graph(sources)}
    assert ("birdsearch.model.student", "birdsearch.model.hub") in targets
    assert ("birdsearch.model.student", "birdsearch.model.evaluate.metrics") in targets
    assert ("birdsearch.model.evaluate", "birdsearch.model.distill.trainer") in targets
    assert check(sources) == [
        "birdsearch.model.student (line 2) imports birdsearch.model.evaluate.metrics: "
        "points up from core to workflows"
    ]


def test_forbidden_sideways_lines():
    sources = planted(
        birdsearch__indexer__pipeline="import birdsearch.engine.runtime\n",
        birdsearch__engine__runtime="from birdsearch.model.distill import trainer\n",
        birdsearch__engine__answer="from birdsearch.service.schemas import QueryForm\n",
        birdsearch__model__distill__trainer="from birdsearch.model.evaluate import run\n",
        birdsearch__model__evaluate__run="",
        birdsearch__model__evaluate__cli="from birdsearch.toy.world import ensure_world\n",
        birdsearch__toy__world="",
        birdsearch__indexer__cli="from birdsearch.cli import add_model_args\n",
        birdsearch__cli="",
        birdsearch__model__evaluate__gallery="from birdsearch.indexer.pipeline import x\n",
        birdsearch__analyze__remote="from birdsearch.service.client import query_file\n",
        birdsearch__service__schemas="",
        birdsearch__service__client="",
        birdsearch__api="from birdsearch.analyze.run import analyze\n",
        birdsearch__analyze__run="",
    )
    problems = "\n".join(check(sources))
    assert (
        "indexer.pipeline (line 1) imports birdsearch.engine.runtime: crosses from indexer to engine"
        in problems
    )
    assert "engine.runtime (line 1) imports birdsearch.model.distill.trainer: crosses" in problems
    assert (
        "engine.answer (line 1) imports birdsearch.service.schemas: points up from workflows to apps"
        in problems
    )
    assert "distill.trainer (line 1) imports birdsearch.model.evaluate.run: crosses" in problems
    assert "evaluate.cli (line 1) imports birdsearch.toy.world: crosses from cli to toy" in problems
    assert "indexer.cli (line 1) imports birdsearch.cli: nothing imports the console script" in problems
    assert (
        "analyze.remote (line 1) imports birdsearch.service.client: crosses from analyze to service"
        in problems
    )
    assert "birdsearch.api (line 1) imports birdsearch.analyze.run: crosses from api to analyze" in problems
    assert "gallery" not in problems  # evaluation may read the index


def test_a_circle_is_reported_as_a_path_and_type_checking_imports_do_not_close_it():
    sources = planted(
        birdsearch__model__a="from birdsearch.model import b\n",
        birdsearch__model__b="def f():\n    import birdsearch.model.c\n",
        birdsearch__model__c="import birdsearch.model.a\n",
        birdsearch__model__init="",
    )
    assert check(sources) == [
        "import circle: birdsearch.model.a -> birdsearch.model.b -> birdsearch.model.c -> birdsearch.model.a"
    ]
    sources["birdsearch.model.c"] = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import birdsearch.model.a\n",
        False,
    )
    assert check(sources) == []


def test_a_clean_map_passes():
    sources = planted(
        birdsearch__cli="import birdsearch.toy.plugin\nimport birdsearch.cli_args\n",
        birdsearch__cli_args="from birdsearch.model.hub import DEFAULT_TEACHER\n",
        birdsearch__toy__plugin="from birdsearch.model import hub\n",
        birdsearch__model__hub="from birdsearch.errors import ConfigError\n",
        birdsearch__errors="",
        birdsearch__model__init="",
    )
    assert check(sources) == []


# Folders whose __init__.py says what they are and under which name they install.
DOCUMENTED_PACKAGES = (
    "birdsearch",
    "birdsearch.toy",
    "birdsearch.model",
    "birdsearch.model.distill",
    "birdsearch.model.evaluate",
    "birdsearch.indexer",
    "birdsearch.engine",
    "birdsearch.service",
    "birdsearch.service.routes",
    "birdsearch.analyze",
)


@pytest.mark.parametrize("package", DOCUMENTED_PACKAGES)
def test_each_mapped_folder_says_what_it_is_and_its_installed_name(project, package):
    text, is_pkg = project[package]
    summary = (ast.get_docstring(ast.parse(text)) or "").splitlines()
    assert is_pkg and summary, f"{package}/__init__.py has no docstring"
    assert summary[0].endswith(f"installs as {package}."), summary[0]
