"""The model server image's requirements: the `serve` extra's names, and enough for what the
server's own code imports (the image installs them, then the mlops wheel with --no-deps)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import PROJECT

pytestmark = pytest.mark.unit

REQUIREMENTS = PROJECT / "infra" / "docker" / "requirements.txt"
SERVER_MODULES = ("mlops.serving.__main__", "mlops.serving.app", "mlops.serving.model")


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _image_requirements() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in REQUIREMENTS.read_text().splitlines())
    return [line for line in lines if line]


def _imports(path: Path) -> set[str]:
    """Dotted names a module imports, at any depth, except under ``if TYPE_CHECKING:``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _module_file(name: str) -> Path | None:
    base = PROJECT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module, not a module


def _server_code() -> dict[Path, set[str]]:
    """The library's files ``python -m mlops.serving`` runs (read, not imported), and the
    third-party top-level names each imports."""
    seen: dict[Path, set[str]] = {}
    todo = list(SERVER_MODULES)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for end in range(1, len(parts) + 1):  # a module's packages run their __init__ first
            path = _module_file(".".join(parts[:end]))
            if path is None or path in seen:
                continue
            names = _imports(path)
            seen[path] = {n.split(".")[0] for n in names} - {"mlops"}
            todo.extend(n for n in names if n.split(".")[0] == "mlops")
    return seen


def test_the_image_requirements_are_the_serve_extra() -> None:
    extras = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert _names(extras["serve"]) == _names(_image_requirements())


def test_every_package_the_servers_own_code_imports_is_an_image_requirement() -> None:
    """Each third-party package the server's own modules import must be named in
    requirements.txt itself (not only arrive as a dependency of another): nothing else installs
    it in the image, and a dependency's dependencies change without notice."""
    code = _server_code()
    assert PROJECT / "mlops" / "serving" / "app.py" in code, sorted(code)
    stdlib = set(sys.stdlib_module_names)
    providers = packages_distributions()
    listed = _names(_image_requirements())
    missing = {
        (name, path.relative_to(PROJECT).as_posix())
        for path, names in code.items()
        for name in names - stdlib
        if not {canonicalize_name(d) for d in providers.get(name, [name])} & listed
    }
    assert not missing, f"imported by the server but not in {REQUIREMENTS.name}: {sorted(missing)}"
