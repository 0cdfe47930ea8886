"""The layering rule, read from the source: imports point down the layers and never loop.

``mlops`` is one library in layers, ``core < ml < adapters < serving < stack < release < cli``;
each module imports only its own layer and those to its left. ``tasks/`` and ``flows/`` sit on
top and are never imported by ``mlops``; ``tasks/`` never imports ``flows/``. An upward import
is how a model's code fingerprint once came to cover the router, so every import statement counts
here: module level, inside functions, under ``TYPE_CHECKING``, and relative ones.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

LAYERS = ("core", "ml", "adapters", "serving", "stack", "release", "cli")
#: What the model server may use of the library: it runs in a slim image on its own.
SERVING_MAY_IMPORT = ("mlops.core", "mlops.adapters.prediction_log", "mlops.serving")
PROJECT = ("mlops", "tasks", "flows")


@dataclass(frozen=True)
class Import:
    """One imported module, where it is imported, and the statement that imports it."""

    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (a name imported from a module counts as it)
    path: str  # the importing file, relative to the root
    line: int
    text: str

    def where(self) -> str:
        return f"{self.path}:{self.line}: `{self.text}`"


@dataclass(frozen=True)
class Graph:
    modules: dict[str, str]  # dotted module -> file relative to the root
    imports: tuple[Import, ...]


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _statement(node: ast.Import | ast.ImportFrom) -> str:
    return " ".join(ast.unparse(node).split())


def read_graph(root: Path, packages: tuple[str, ...] = PROJECT) -> Graph:
    """Every import statement of every module under ``root``'s ``packages``, resolved."""
    files = sorted(
        p for pkg in packages if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")
    )
    modules = {_module_name(p.relative_to(root)): p.relative_to(root).as_posix() for p in files}
    imports: list[Import] = []
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    imports.append(Import(module, alias.name, path, node.lineno, _statement(node)))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    # Relative to the importing module's package (a package is its own).
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    origin = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                for alias in node.names:
                    # `from pkg import sub` imports the module pkg.sub when there is one.
                    candidate = f"{origin}.{alias.name}"
                    target = candidate if candidate in modules else origin
                    imports.append(Import(module, target, path, node.lineno, _statement(node)))
    # One entry per (statement, target): `from x import a, b` names module x once.
    return Graph(modules, tuple(dict.fromkeys(imports)))


def _layer(module: str) -> int | None:
    """The layer's index of a module of ``mlops`` (the bare package counts as core)."""
    parts = module.split(".")
    if parts == ["mlops"]:
        return 0
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def layer_problems(graph: Graph) -> list[str]:
    """Imports that point up the layers, out of ``mlops`` into the project, or past serving's fence."""
    problems = [
        f"{path}:1: module {module} is in no layer (move it under mlops/<{'|'.join(LAYERS)}>/)"
        for module, path in graph.modules.items()
        if _is_within(module, "mlops") and _layer(module) is None
    ]
    for imp in graph.imports:
        top = imp.target.split(".")[0]
        if _is_within(imp.source, "mlops"):
            if top in ("tasks", "flows"):
                problems.append(
                    f"{imp.where()}: the library never imports the project layer ({top}/)"
                )
                continue
            if top != "mlops":
                continue
            mine, theirs = _layer(imp.source), _layer(imp.target)
            if mine is None:
                continue  # reported once above, for the module itself
            if imp.target not in graph.modules:
                problems.append(f"{imp.where()}: {imp.target} is no module of mlops (moved?)")
            elif theirs is None:
                problems.append(f"{imp.where()}: {imp.target} is in no layer")
            elif theirs > mine:
                problems.append(
                    f"{imp.where()}: {LAYERS[mine]} may not import {LAYERS[theirs]} "
                    f"(layers: {' < '.join(LAYERS)})"
                )
            if _is_within(imp.source, "mlops.serving") and not any(
                _is_within(imp.target, allowed) for allowed in SERVING_MAY_IMPORT
            ):
                problems.append(
                    f"{imp.where()}: mlops.serving imports from mlops only "
                    f"{', '.join(SERVING_MAY_IMPORT[:2])}"
                )
        elif _is_within(imp.source, "tasks") and top == "flows":
            problems.append(f"{imp.where()}: tasks/ never imports flows/")
    return problems


def _is_prefect(module: str) -> bool:
    top = module.split(".")[0]
    return top == "prefect" or top.startswith("prefect_")


def prefect_problems(graph: Graph) -> list[str]:
    """Prefect imports in ``mlops.ml``, or in the library modules ``mlops.ml`` imports.

    The pure logic must run (and be fingerprinted) without the orchestrator, so a Prefect import
    reached through core counts as much as one written in ml.
    """
    edges: dict[str, list[Import]] = {}
    for imp in graph.imports:
        if imp.target in graph.modules and _is_within(imp.target, "mlops"):
            edges.setdefault(imp.source, []).append(imp)
    # Breadth first from every ml module at once: the shortest chain to each module reached.
    via: dict[str, Import | None] = {m: None for m in graph.modules if _is_within(m, "mlops.ml")}
    queue = deque(via)
    while queue:
        module = queue.popleft()
        for imp in edges.get(module, ()):
            if imp.target not in via:
                via[imp.target] = imp
                queue.append(imp.target)
    problems = []
    for imp in graph.imports:
        if imp.source in via and _is_prefect(imp.target):
            chain, step = [], via[imp.source]
            while step is not None:
                chain.append(step.where())
                step = via[step.source]
            reached = f" (reached from mlops.ml: {' -> '.join(reversed(chain))})" if chain else ""
            problems.append(f"{imp.where()}: mlops.ml imports no Prefect{reached}")
    return problems


def find_cycles(graph: Graph) -> list[list[Import]]:
    """One cycle (as the imports that close it) per strongly connected group of modules (Tarjan)."""
    edges: dict[str, list[Import]] = {m: [] for m in graph.modules}
    for imp in graph.imports:
        if imp.target in graph.modules and imp.target != imp.source:
            edges[imp.source].append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imp in edges[module]:
            if imp.target not in index:
                connect(imp.target)
                low[module] = min(low[module], low[imp.target])
            elif imp.target in on_stack:
                low[module] = min(low[module], index[imp.target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph.modules) + 100))
    try:
        for module in sorted(graph.modules):
            if module not in index:
                connect(module)
    finally:
        sys.setrecursionlimit(limit)

    cycles = []
    for group in groups:
        members = set(group)
        start = min(group)
        # Shortest way round from `start` back to itself, staying inside the group.
        via: dict[str, Import] = {}
        queue = deque([start])
        closing: Import | None = None
        while queue and closing is None:
            module = queue.popleft()
            for imp in edges[module]:
                if imp.target == start:
                    closing = imp
                    break
                if imp.target in members and imp.target not in via:
                    via[imp.target] = imp
                    queue.append(imp.target)
        assert closing is not None  # a strongly connected group always leads back
        cycle = [closing]
        while cycle[-1].source != start:
            cycle.append(via[cycle[-1].source])
        cycles.append(list(reversed(cycle)))
    return cycles


def cycle_problems(graph: Graph) -> list[str]:
    """Each import cycle as its path of modules, then the statement behind each step."""
    problems = []
    for cycle in find_cycles(graph):
        path = " -> ".join([cycle[0].source, *(imp.target for imp in cycle)])
        steps = "".join(f"\n    {imp.where()}" for imp in cycle)
        problems.append(f"import cycle {path}:{steps}")
    return problems


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return read_graph(ROOT)


def test_imports_point_down_the_layers(graph: Graph) -> None:
    problems = layer_problems(graph)
    assert not problems, _report(problems)


def test_ml_runs_without_prefect(graph: Graph) -> None:
    problems = prefect_problems(graph)
    assert not problems, _report(problems)


def test_no_import_cycles(graph: Graph) -> None:
    problems = cycle_problems(graph)
    assert not problems, _report(problems)


def test_the_checker_reads_every_kind_of_import(graph: Graph) -> None:
    # A checker that read nothing would pass everything: the real tree has imports of each kind.
    assert len(graph.modules) > 50
    assert any(
        imp.source == "mlops.cli" and _is_within(imp.target, "mlops") for imp in graph.imports
    )
    assert any(
        imp.source.startswith("flows.") and imp.target.startswith("tasks") for imp in graph.imports
    )


def test_every_release_target_is_registered_and_resolves() -> None:
    # The registry names targets by string, which the import graph above cannot see: check here
    # that each reference resolves and that the policy offers exactly the registered targets.
    import importlib
    from typing import get_args

    from mlops.core.policy import ReleasePolicy
    from mlops.release.targets import TARGETS

    assert set(TARGETS) == set(get_args(ReleasePolicy.model_fields["target"].annotation))
    for reference in TARGETS.values():
        module, _, name = reference.partition(":")
        assert isinstance(getattr(importlib.import_module(module), name), type), reference


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checker_reports_upward_imports_and_cycles(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "mlops/__init__.py": "",
            "mlops/core/__init__.py": "",
            "mlops/core/config.py": "import os\n\n\ndef load():\n    from mlops.release import router\n",
            "mlops/ml/__init__.py": "",
            "mlops/ml/data.py": "from mlops.core import config\n",
            "mlops/ml/gates.py": "from ..core.lazy import x\n",
            "mlops/core/lazy.py": "def f():\n    from prefect import flow\n",
            "mlops/release/__init__.py": "",
            "mlops/release/router.py": "from .targets import make_target\n",
            "mlops/release/targets/__init__.py": "from . import local\n",
            "mlops/release/targets/local.py": "from mlops.release.router import Traffic\n",
            "mlops/serving/__init__.py": "",
            "mlops/serving/app.py": "from mlops.adapters.registry import Registry\n",
            "mlops/adapters/__init__.py": "",
            "mlops/adapters/registry.py": "import tasks.data\n",
            "tasks/__init__.py": "",
            "tasks/data.py": "from flows.training import training\n",
            "flows/__init__.py": "",
            "flows/training.py": "from tasks.data import x\n",
        },
    )
    graph = read_graph(tmp_path)

    layers = layer_problems(graph)
    assert (
        "mlops/core/config.py:5: `from mlops.release import router`: core may not import release"
        in "\n".join(layers)
    )
    assert any(p.startswith("mlops/serving/app.py:1: ") and "only mlops.core" in p for p in layers)
    assert any(p.startswith("mlops/adapters/registry.py:1: `import tasks.data`") for p in layers)
    assert any(p.startswith("tasks/data.py:1: ") and "never imports flows/" in p for p in layers)
    assert len(layers) == 4, _report(layers)

    prefect = prefect_problems(graph)
    assert len(prefect) == 1, _report(prefect)
    assert prefect[0].startswith("mlops/core/lazy.py:2: `from prefect import flow`")
    assert "mlops/ml/gates.py:1: `from ..core.lazy import x`" in prefect[0]

    cycles = cycle_problems(graph)
    assert len(cycles) == 2, _report(cycles)
    release, project = sorted(cycles, key=lambda c: not c.startswith("import cycle mlops"))
    assert release.startswith(
        "import cycle mlops.release.router -> mlops.release.targets -> "
        "mlops.release.targets.local -> mlops.release.router:"
    )
    assert "mlops/release/targets/__init__.py:1: `from . import local`" in release
    assert project.startswith("import cycle flows.training -> tasks.data -> flows.training:")


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "mlops/__init__.py": "",
            "mlops/core/__init__.py": "",
            "mlops/core/config.py": "import yaml\n",
            "mlops/ml/__init__.py": "from mlops.core.config import load\n",
            "mlops/adapters/__init__.py": "",
            "mlops/adapters/prediction_log.py": "from ..core.config import load\n",
            "mlops/serving/__init__.py": "",
            "mlops/serving/app.py": "from mlops.adapters.prediction_log import Log\nfrom . import model\n",
            "mlops/serving/model.py": "from mlops.core import config\n",
            "tasks/__init__.py": "from prefect import task\nimport mlops.ml\n",
            "flows/__init__.py": "from tasks import x\n",
        },
    )
    graph = read_graph(tmp_path)
    assert layer_problems(graph) == prefect_problems(graph) == cycle_problems(graph) == []


def _checkout_copy(destination: Path) -> None:
    """The files a fresh clone would hold (tracked and new, not ignored), copied over."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout: {error}")
    for name in listed.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():  # tracked but deleted in the work tree: skip
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def test_pip_install_installs_one_top_level_package(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources, which
    # must not land in (or be read back from) the shared checkout. Built with build isolation,
    # as `pip install .` does: the environment's own setuptools may predate [build-system].
    source, wheels = tmp_path / "src", tmp_path / "wheels"
    _checkout_copy(source)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("mlops-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"mlops"}
    assert "mlops = mlops.cli:main" in scripts
