"""Code identity: a fingerprint of exactly the code that shapes a model, read from the source.

A model's ``mlops.code.sha256`` and the training run's fingerprint must change when the code
that turns a data version into a model changes (loading, contract, split, features, the model
families, evaluation, the user's own model and feature factories) and must not change when the release, the
router, the CLI, the flows or the tasks are edited: an unchanged re-run would otherwise register
a new version, and ``mlops reproduce`` would report different code.

So the walk starts from a fixed set of roots (``MODEL_CODE``), follows import statements (read
with ``ast``, nothing executed, lazy imports included) and stays inside ``mlops.ml``; a name
outside that scope is not followed, whatever imports it. Nothing above ``mlops.ml`` can be
reached this way, because the layering test keeps ``mlops.ml`` from importing upward.

``mlops.core.config`` is left out on purpose: the config's values that change the model are
hashed separately (``training_fingerprint``), after validation and with defaults filled in, so
the schema code's effect on a model is already in those values, while an edit to the parts of
the schema a model never reads (the release, the search) would change every fingerprint.
``mlops.core.metrics`` is in: it defines what evaluation computes, recorded on every version.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from mlops.core.config import PipelineConfig, own_code_modules
from mlops.core.lineage import run_fingerprint

#: The modules whose code shapes a model; their imports within ``SCOPE`` are followed.
MODEL_CODE: tuple[str, ...] = (
    "mlops.ml.data",
    "mlops.ml.contract",
    "mlops.ml.split",
    "mlops.ml.features",
    "mlops.ml.training",
    "mlops.ml.evaluation",
    "mlops.core.metrics",
)
#: Packages an import is followed into (a root is hashed wherever it lives).
SCOPE: tuple[str, ...] = ("mlops.ml",)


def _within(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _top_level_root(package: str) -> Path | None:
    # find_spec of a top-level name executes nothing; it also finds an editable install's
    # package, which is not on sys.path but behind an import hook.
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    if spec.origin and spec.origin.endswith(".py"):
        return Path(spec.origin).parent
    return None


def _source(module: str, search_path: tuple[Path, ...] | None) -> Path | None:
    """The source file of ``module`` under ``search_path`` (default: where Python finds it)."""
    roots = search_path
    if roots is None:
        found = _top_level_root(module.partition(".")[0])
        roots = (found,) if found is not None else ()
    relative = Path(*module.split("."))
    for root in roots:
        for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Every module named by the import statements of one source file (relative ones resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            # `from mlops.ml import features` names a module too
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def module_closure(
    roots: Iterable[str],
    scope: tuple[str, ...] = SCOPE,
    search_path: tuple[Path, ...] | None = None,
) -> dict[str, Path]:
    """The source files of ``roots`` and of the modules in ``scope`` they import, transitively.

    Returns:
        dotted module name -> source file, sorted by name; a root without a source is skipped.
    """
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _source(name, search_path)
        if path is None:
            continue
        seen[name] = path
        todo.extend(m for m in _imports(name, path) if m not in seen and _within(m, scope))
    return dict(sorted(seen.items()))


def _user_scope(modules: tuple[str, ...]) -> tuple[str, ...]:
    # A user's model module may import helpers beside it: follow imports within its package.
    return tuple(m.rpartition(".")[0] or m for m in modules)


@cache
def code_fingerprint(
    extra_modules: tuple[str, ...] = (),
    *,
    roots: tuple[str, ...] = MODEL_CODE,
    search_path: tuple[Path, ...] | None = None,
) -> str:
    """sha256 over the source of the model code (``roots``) and the ``mlops.ml`` code it reaches.

    Args:
        extra_modules: the user's own model modules (dotted names), hashed with what they
            import from their own package and from ``mlops.ml``.
        roots: where the walk starts; ``MODEL_CODE`` unless a cache key wants one module's code.
        search_path: folders to find the modules in (default: where Python would import them
            from); a copy of the tree can be fingerprinted this way without importing it.
    """
    scope = SCOPE + _user_scope(extra_modules)
    digest = hashlib.sha256()
    # Module names, not paths, go into the hash: the same code in another checkout is the same.
    for name, path in module_closure(roots + extra_modules, scope, search_path).items():
        digest.update(name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def training_fingerprint(
    cfg: PipelineConfig, data_md5: str, extra_modules: tuple[str, ...] = ()
) -> tuple[str, str]:
    """(fingerprint, code hash) of a training run: the data, the model code (with the user's
    own factories and what they import from their package) and the parts of the config that
    change the model. The model name and file paths do not count."""
    code = code_fingerprint(
        tuple(dict.fromkeys(extra_modules + own_code_modules(cfg.model, cfg.features)))
    )
    config = cfg.model_dump(
        mode="json", include={"target", "features", "split", "model", "contract_spec"}
    ) | {"na_values": list(cfg.data.na_values)}
    return run_fingerprint(data_md5, code, config), code
