"""The code fingerprint covers exactly the code that shapes a model (issue 14).

Each test fingerprints a copy of the source tree, edits the copy and fingerprints it again: an
edit to the release, the router, the CLI, the flows or the tasks must leave every model's
``mlops.code.sha256`` as it was (an unchanged re-run would register a new version otherwise),
while an edit to the model code must change it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlops.ml.fingerprint import MODEL_CODE, code_fingerprint, module_closure

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the library and the project layer, to edit."""
    for package in ("mlops", "tasks", "flows"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def fingerprint(tree: Path, extra_modules: tuple[str, ...] = ()) -> str:
    code_fingerprint.cache_clear()  # it is cached per process; the copy changes under it
    return code_fingerprint(extra_modules, search_path=(tree,))


def touch(path: Path, line: str = "# an edit") -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_the_fingerprint_does_not_depend_on_where_the_checkout_is(tree: Path) -> None:
    code_fingerprint.cache_clear()
    assert fingerprint(tree) == code_fingerprint()


@pytest.mark.parametrize(
    "edited",
    [
        "mlops/release/router.py",
        "mlops/release/canary.py",
        "mlops/cli/__init__.py",
        "mlops/stack/local.py",
        "mlops/core/config.py",  # its values are hashed, not its code (mlops.ml.fingerprint)
        "tasks/training.py",
        "flows/training.py",
        "flows/release.py",
    ],
)
def test_an_edit_outside_the_model_code_changes_no_fingerprint(tree: Path, edited: str) -> None:
    before = fingerprint(tree)
    touch(tree / edited)
    assert fingerprint(tree) == before


def test_the_release_the_router_and_the_cli_together_change_no_fingerprint(tree: Path) -> None:
    before = fingerprint(tree)
    for edited in (
        "mlops/release/router.py",
        "mlops/cli/__init__.py",
        "mlops/release/canary.py",
        "flows/release.py",
    ):
        touch(tree / edited)
    assert fingerprint(tree) == before


@pytest.mark.parametrize("edited", ["mlops/ml/features.py", "mlops/ml/training.py"])
def test_an_edit_to_the_model_code_changes_the_fingerprint(tree: Path, edited: str) -> None:
    before = fingerprint(tree)
    touch(tree / edited)
    assert fingerprint(tree) != before


def test_an_import_out_of_the_ml_layer_is_not_followed(tree: Path) -> None:
    # Even a lazy import of the router from the model code does not pull the router in.
    touch(tree / "mlops/ml/training.py", "def _router():\n    from mlops.release import router")
    before = fingerprint(tree)
    touch(tree / "mlops/release/router.py")
    assert fingerprint(tree) == before


def test_the_users_model_code_joins_the_fingerprint_with_what_it_imports(tree: Path) -> None:
    user = tree / "acme" / "models"
    user.mkdir(parents=True)
    (tree / "acme" / "__init__.py").write_text("")
    (user / "__init__.py").write_text("")
    (user / "helpers.py").write_text("SCALE = 2\n")
    (user / "forest.py").write_text(
        "from acme.models.helpers import SCALE\nfrom mlops.release import router\n"
    )
    library_only = fingerprint(tree)
    with_user = fingerprint(tree, ("acme.models.forest",))
    assert with_user != library_only
    touch(user / "helpers.py")
    assert fingerprint(tree, ("acme.models.forest",)) != with_user
    assert fingerprint(tree) == library_only
    changed = fingerprint(tree, ("acme.models.forest",))
    touch(tree / "mlops/release/router.py")
    assert fingerprint(tree, ("acme.models.forest",)) == changed


def test_the_model_code_reaches_only_the_ml_layer_and_its_roots() -> None:
    modules = module_closure(MODEL_CODE)
    assert set(MODEL_CODE) <= set(modules)
    assert all(m.startswith("mlops.ml.") or m in MODEL_CODE for m in modules), sorted(modules)


def _user_package(root: Path, name: str) -> Path:
    """A user's package with a model factory, a feature factory, a helper both import and a
    module neither imports."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("TREES = 5\n")
    (pkg / "unrelated.py").write_text("X = 1\n")
    (pkg / "models.py").write_text(
        f"from {name}.helpers import TREES\n\n\ndef build():\n    return TREES\n"
    )
    (pkg / "features.py").write_text(
        f"from {name} import helpers\n\n\ndef build(numeric, categorical):\n    return helpers\n"
    )
    return pkg


def test_the_configs_own_factories_join_the_training_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Editing the factory (or what it imports from its package) retrains; editing a module it
    does not import, or naming a library's callable as the factory, changes no code hash."""
    from mlops.core.config import ModelConfig, load_pipeline_config
    from mlops.ml.fingerprint import training_fingerprint
    from tests.helpers import EXAMPLE

    pkg = _user_package(tmp_path, "h4_fingerprint_user")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    own_model = cfg.model_copy(update={"model": ModelConfig(factory=f"{pkg.name}.models:build")})
    own_features = cfg.model_copy(
        update={
            "features": cfg.features.model_copy(update={"factory": f"{pkg.name}.features:build"})
        }
    )
    library = cfg.model_copy(
        update={"model": ModelConfig(factory="sklearn.ensemble:ExtraTreesClassifier")}
    )

    def code(c: object) -> str:
        code_fingerprint.cache_clear()
        return training_fingerprint(c, "a" * 32)[1]  # type: ignore[arg-type]

    library_only = code(cfg)
    assert code(library) == library_only
    model_code, feature_code = code(own_model), code(own_features)
    assert len({library_only, model_code, feature_code}) == 3

    touch(pkg / "unrelated.py")
    assert (code(own_model), code(own_features)) == (model_code, feature_code)
    touch(pkg / "models.py")
    assert code(own_model) != model_code
    assert code(own_features) == feature_code
    edited = code(own_model)
    touch(pkg / "helpers.py")  # both import it
    assert code(own_model) != edited and code(own_features) != feature_code
    assert code(cfg) == library_only
