"""The user's own model and feature code by reference (``package.module:function``): what a good
factory gives, and every way a bad one is named with its reference and its error before
anything is logged; which of its types a model may ask skops to trust."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from mlops.core.config import FeatureConfig, ModelConfig, own_code_modules, own_code_packages
from mlops.core.errors import ConfigError
from mlops.core.integrity import CODE_METADATA, ModelFormatError, check_model_format
from mlops.ml.problems import Problem
from mlops.ml.split import Split
from mlops.ml.training import build_pipeline, check_model_code, train_model, trusted_types

pytestmark = pytest.mark.unit

PACKAGE = "h4_unit_factories"  # a name no other test imports: sys.modules keeps it for the session

MODELS = '''
import operator

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from {package}.helpers import TREES

NOT_CALLABLE = 3


def forest(n_estimators=TREES):
    return RandomForestClassifier(n_estimators=n_estimators, random_state=0)


def regressor():
    return RandomForestRegressor(n_estimators=3, random_state=0)


class NoProba:
    def fit(self, X, y):
        return self

    def predict(self, X):
        return np.zeros(len(X))


def no_proba():
    return NoProba()


def not_an_estimator():
    return {{"fit": "no"}}


def broken():
    raise RuntimeError("no GPU here")


class Exploding(BaseEstimator, ClassifierMixin):
    def fit(self, X, y):
        raise ValueError("cannot fit on Tuesdays")

    def predict(self, X):
        return np.zeros(len(X))

    def predict_proba(self, X):
        return np.zeros((len(X), 2))


def exploding():
    return Exploding()


def whole(numeric=("x1", "x2")):
    """A Pipeline with its own preprocessing: it takes the raw columns."""
    columns = ColumnTransformer(
        [("num", "passthrough", list(numeric)), ("cat", OneHotEncoder(), ["colour"])]
    )
    return Pipeline([("prep", columns), ("model", LogisticRegression())])


def with_a_stdlib_function():
    return Pipeline(
        [("negate", FunctionTransformer(operator.neg)), ("model", LogisticRegression())]
    )


class Shrink(BaseEstimator, TransformerMixin):
    """A transformer of the user's own package: its type is the user's to trust."""

    def __init__(self, factor=1.0):
        self.factor = factor

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X, dtype=float) * self.factor


def features(numeric, categorical, factor=0.5):
    return ColumnTransformer(
        [
            ("num", Shrink(factor), list(numeric)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), list(categorical)),
        ]
    )


def not_a_transformer(numeric, categorical):
    return LogisticRegression()
'''


@pytest.fixture(scope="module", autouse=True)
def package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's package on the import path, as an installed one would be."""
    root = tmp_path_factory.mktemp("user-code")
    pkg = root / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("TREES = 5\n")
    (pkg / "models.py").write_text(textwrap.dedent(MODELS.format(package=PACKAGE)))
    (pkg / "needs_torch.py").write_text("import torch_that_is_not_installed\n")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(root))
    yield pkg
    mp.undo()


FEATURES = FeatureConfig(numeric=("x1", "x2"), categorical=("colour",))


def _model(function: str, **params: object) -> ModelConfig:
    return ModelConfig(factory=f"{PACKAGE}.models:{function}", params=params)


def _split(problem: str = "binary", rows: int = 80) -> Split:
    rng = np.random.default_rng(1)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=rows),
            "x2": rng.uniform(0, 5, size=rows),
            "colour": rng.choice(["red", "blue"], size=rows),
        }
    )
    if problem == "regression":
        y = pd.Series(X["x1"] * 2.0, name="y")
        spec = Problem("regression", (), "y")
    else:
        y = pd.Series((X["x1"] > 0).astype("int64"), name="y")
        spec = Problem("binary", ("no", "yes"), "y")
    return Split(X.iloc[:60], y.iloc[:60], X.iloc[60:], y.iloc[60:], spec)


# a good factory ---------------------------------------------------------------------------------
def test_a_factorys_estimator_goes_behind_the_feature_pipeline() -> None:
    model = train_model(_split(), FEATURES, _model("forest", n_estimators=7))
    assert [name for name, _ in model.steps] == ["features", "model"]
    assert model.named_steps["model"].n_estimators == 7
    assert model.predict_proba(_split().X_holdout).shape == (20, 2)


def test_a_factorys_whole_pipeline_takes_the_raw_columns() -> None:
    model = train_model(_split(), FEATURES, _model("whole"))
    assert [name for name, _ in model.steps] == ["prep", "model"], "nothing put in front"


def test_a_feature_factory_replaces_the_default_preprocessing_and_its_types_are_trusted() -> None:
    features = FEATURES.model_copy(
        update={"factory": f"{PACKAGE}.models:features", "params": {"factor": 0.25}}
    )
    model = train_model(_split(), features, ModelConfig(family="logistic_regression"))
    shrink = model.named_steps["features"].named_transformers_["num"]
    assert type(shrink).__name__ == "Shrink" and shrink.factor == 0.25
    packages = own_code_packages(ModelConfig(family="logistic_regression"), features)
    assert packages == (PACKAGE,)
    assert f"{PACKAGE}.models.Shrink" in trusted_types(model, packages)


def test_a_library_callable_named_as_a_factory_is_not_own_code() -> None:
    config = ModelConfig(
        factory="sklearn.ensemble:ExtraTreesClassifier", params={"n_estimators": 3}
    )
    model = train_model(_split(), FEATURES, config)
    assert type(model.named_steps["model"]).__name__ == "ExtraTreesClassifier"
    assert own_code_modules(config, FEATURES) == () and own_code_packages(config, FEATURES) == ()
    assert own_code_modules(_model("forest"), FEATURES) == (f"{PACKAGE}.models",)


# a bad factory: each named with its reference and the error ---------------------------------
@pytest.mark.parametrize(
    ("reference", "message"),
    [
        (
            f"{PACKAGE}.nowhere:forest",
            rf"model\.factory '{PACKAGE}\.nowhere:forest': cannot import module "
            rf"'{PACKAGE}\.nowhere': ModuleNotFoundError",
        ),
        (
            f"{PACKAGE}.needs_torch:forest",
            rf"cannot import module '{PACKAGE}\.needs_torch': ModuleNotFoundError: "
            r"No module named 'torch_that_is_not_installed'",
        ),
        (
            f"{PACKAGE}.models:forrest",
            rf"model\.factory '{PACKAGE}\.models:forrest': module '{PACKAGE}\.models' has no "
            r"attribute 'forrest'",
        ),
        (f"{PACKAGE}.models:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not callable"),
        (
            f"{PACKAGE}.models:broken",
            rf"'{PACKAGE}\.models:broken': calling it with \(\) failed: RuntimeError: no GPU here",
        ),
        (
            f"{PACKAGE}.models:not_an_estimator",
            rf"'{PACKAGE}\.models:not_an_estimator' returned a builtins\.dict, which has no fit, "
            r"predict, predict_proba: not a scikit-learn compatible classifier",
        ),
        (
            f"{PACKAGE}.models:no_proba",
            r"returned a .*NoProba, which has no predict_proba: not a scikit-learn compatible "
            r"classifier for a binary target",
        ),
        (
            f"{PACKAGE}.models:regressor",
            r"returned a regressor \(RandomForestRegressor\), but the target is a binary problem",
        ),
    ],
)
def test_a_bad_model_factory_is_refused_before_any_data_is_read(
    reference: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_model_code(FEATURES, ModelConfig(factory=reference), "binary")


def test_a_factory_called_with_a_parameter_it_does_not_take_names_it() -> None:
    with pytest.raises(
        ConfigError,
        match=rf"'{PACKAGE}\.models:forest': calling it with \(depth=3\) failed: TypeError: .*depth",
    ):
        check_model_code(FEATURES, _model("forest", depth=3), "binary")


def test_a_classifier_for_a_regression_target_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"returned a classifier .* regression problem"):
        check_model_code(FEATURES, _model("forest"), "regression")


def test_a_fit_that_fails_is_named_with_the_factory() -> None:
    with pytest.raises(
        ConfigError,
        match=rf"model\.factory '{PACKAGE}\.models:exploding': fitting failed: "
        r"ValueError: cannot fit on Tuesdays",
    ):
        train_model(_split(), FEATURES, _model("exploding"))


def test_a_feature_factory_that_returns_no_transformer_is_refused() -> None:
    features = FEATURES.model_copy(update={"factory": f"{PACKAGE}.models:not_a_transformer"})
    with pytest.raises(
        ConfigError, match=r"features\.factory .* LogisticRegression, which has no transform"
    ):
        check_model_code(features, ModelConfig(family="random_forest"), "binary")


def test_a_feature_factory_beside_a_whole_pipeline_needs_to_be_asked_for() -> None:
    features = FEATURES.model_copy(update={"factory": f"{PACKAGE}.models:features"})
    with pytest.raises(ConfigError, match=r"returns a whole Pipeline.*model\.feature_pipeline"):
        check_model_code(features, _model("whole"), "binary")
    asked = _model("forest").model_copy(update={"feature_pipeline": True})
    assert [n for n, _ in build_pipeline(features, asked, "binary").steps] == ["features", "model"]


def test_a_model_holding_a_type_nobody_trusts_is_refused_before_it_is_logged() -> None:
    with pytest.raises(
        ConfigError,
        match=r"with_a_stdlib_function': the fitted model holds types the project does not "
        r"trust to load: _operator\.neg",
    ):
        split = _split()
        numeric = Split(
            split.X_train[["x1", "x2"]],
            split.y_train,
            split.X_holdout,
            split.y_holdout,
            split.problem,
        )
        train_model(numeric, FeatureConfig(numeric=("x1", "x2")), _model("with_a_stdlib_function"))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"family": "xgboost", "factory": "a.b:c"}, "either `family`"),
        ({}, "either `family`"),
        ({"factory": "just_a_module"}, "not a `package.module:function` reference"),
        ({"factory": "a.b:c()"}, "not a `package.module:function` reference"),
    ],
)
def test_a_model_section_must_name_one_family_or_one_factory(
    model: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(model)


def test_feature_params_without_a_factory_are_refused() -> None:
    with pytest.raises(ValidationError, match="`params` apply to a features `factory` only"):
        FeatureConfig(numeric=("x",), params={"factor": 2})


# trusting a model's own types when it loads ---------------------------------------------------
def _folder(tmp_path: Path, trusted: list[str], packages: list[str] | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.skops").write_bytes(b"\0")
    conf: dict[str, object] = {
        "flavors": {
            "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
            "sklearn": {
                "pickled_model": "model.skops",
                "serialization_format": "skops",
                "code": None,
                "skops_trusted_types": trusted,
            },
        }
    }
    if packages is not None:
        conf["metadata"] = {CODE_METADATA: {"packages": packages}}
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    return folder


def test_a_type_of_the_models_own_package_is_trusted_when_the_model_records_it(
    tmp_path: Path,
) -> None:
    types = ["numpy.dtype", "acme.features.Shrink"]
    check_model_format(_folder(tmp_path, types, ["acme"]), "m v1")


@pytest.mark.parametrize(
    ("types", "packages", "named"),
    [
        (["acme.features.Shrink"], None, r"trust acme\.features\.Shrink"),
        (["acme.features.Shrink"], ["other"], r"trust acme\.features\.Shrink"),
        (["builtins.eval"], ["builtins"], r"'builtins' as its own code"),
        (["os.system"], ["os"], r"'os' as its own code.*trust os\.system"),
        (["numpy.load"], ["numpy"], r"'numpy' as its own code.*trust numpy\.load"),
        (["sklearn.utils.Bunch"], ["sklearn"], r"'sklearn' as its own code"),
    ],
)
def test_a_model_cannot_widen_the_trust_beyond_its_own_package(
    tmp_path: Path, types: list[str], packages: list[str] | None, named: str
) -> None:
    with pytest.raises(ModelFormatError, match=rf"m v2: refusing to load it: .*{named}"):
        check_model_format(_folder(tmp_path, types, packages), "m v2")
