"""Model training: the configured estimator behind the feature pipeline.

The estimator is a built-in family (``FAMILIES``: the family's classifier for a binary or
multiclass target, its regressor for a regression) or the user's own code by reference:
``model.factory: "package.module:function"`` returns a scikit-learn compatible estimator or a
whole Pipeline, and ``features.factory`` returns the preprocessing in place of the default one.

Where the feature pipeline goes (``build_pipeline``): in front of an estimator; not in front of a
factory's Pipeline, which brings its own preprocessing and takes the raw feature columns, unless
``model.feature_pipeline`` says otherwise.

Every way user code can be wrong is a ConfigError naming the reference and the error, raised
before anything is logged or registered (``check_model_code`` runs first in the training flow):
it cannot be imported, its call fails, it returns something that is not an estimator of the
problem's kind, its fit fails, or its model could not be stored safely (``trusted_types``).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from mlops.core.config import FeatureConfig, ModelConfig, own_code_packages
from mlops.core.errors import ConfigError
from mlops.core.integrity import untrusted_types
from mlops.core.metrics import ProblemType
from mlops.ml.features import build_feature_pipeline
from mlops.ml.split import Split


@dataclass(frozen=True)
class Family:
    """A built-in model family: its scikit-learn estimators as ``module:Class`` (imported when
    used, so XGBoost and LightGBM load only for their own models); None where it has none."""

    name: str
    classifier: str | None
    regressor: str | None

    def estimator_class(self, problem: ProblemType) -> type:
        """The family's estimator class for ``problem``; a ConfigError when it has none."""
        ref = self.regressor if problem == "regression" else self.classifier
        if ref is None:
            fitting = [f.name for f in FAMILIES.values() if f.fits(problem)]
            raise ConfigError(
                f"model.family {self.name!r} has no {_kind(problem)} for a {problem} target; "
                f"families that fit: {', '.join(fitting)}"
            )
        module, _, name = ref.partition(":")
        cls: type = getattr(importlib.import_module(module), name)
        return cls

    def fits(self, problem: ProblemType) -> bool:
        return (self.regressor if problem == "regression" else self.classifier) is not None


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("logistic_regression", "sklearn.linear_model:LogisticRegression", None),
        Family("linear_regression", None, "sklearn.linear_model:Ridge"),
        Family(
            "random_forest",
            "sklearn.ensemble:RandomForestClassifier",
            "sklearn.ensemble:RandomForestRegressor",
        ),
        Family(
            "hist_gradient_boosting",
            "sklearn.ensemble:HistGradientBoostingClassifier",
            "sklearn.ensemble:HistGradientBoostingRegressor",
        ),
        Family(
            "gradient_boosting",
            "sklearn.ensemble:GradientBoostingClassifier",
            "sklearn.ensemble:GradientBoostingRegressor",
        ),
        Family("xgboost", "xgboost:XGBClassifier", "xgboost:XGBRegressor"),
        Family("lightgbm", "lightgbm:LGBMClassifier", "lightgbm:LGBMRegressor"),
    )
}


def _kind(problem: ProblemType) -> str:
    return "regressor" if problem == "regression" else "classifier"


# user code ------------------------------------------------------------------------------------
def import_factory(reference: str, field: str) -> Callable[..., Any]:
    """The callable a ``package.module:function`` reference names; ``field`` (``model.factory``)
    names it in the error when the module or the attribute is missing or fails to import."""
    module_name, _, attribute = reference.partition(":")
    where = f"{field} {reference!r}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module can fail to import in any way
        raise ConfigError(
            f"{where}: cannot import module {module_name!r}: {type(exc).__name__}: {exc} "
            "(is the package installed or on PYTHONPATH where the model trains and serves?)"
        ) from None
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(
            f"{where}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    if not callable(factory):
        raise ConfigError(f"{where}: {attribute!r} is a {type(factory).__name__}, not callable")
    return factory


def _call(reference: str, field: str, **kwargs: Any) -> Any:
    factory = import_factory(reference, field)
    try:
        return factory(**kwargs)
    except Exception as exc:
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(
            f"{field} {reference!r}: calling it with ({args}) failed: {type(exc).__name__}: {exc}"
        ) from None


def _estimator_type(obj: Any) -> str | None:
    """scikit-learn's estimator type of ``obj`` ("classifier", "regressor"), None if it has none."""
    from sklearn.utils import get_tags

    try:
        return get_tags(obj).estimator_type
    except Exception:  # an object that only quacks like an estimator has no tags
        return None


def check_estimator(obj: Any, problem: ProblemType, what: str) -> None:
    """Refuse ``obj`` unless it is an estimator for ``problem``: fit and predict, predict_proba
    for a classifier, and not scikit-learn's other kind (a regressor for a classifier's target)."""
    kind = _estimator_type(obj)
    if kind in ("classifier", "regressor") and kind != _kind(problem):
        raise ConfigError(
            f"{what} returned a {kind} ({type(obj).__qualname__}), but the target is a {problem} "
            f"problem: it needs a {_kind(problem)}"
        )
    needed = ["fit", "predict", *(["predict_proba"] if problem != "regression" else [])]
    missing = [m for m in needed if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(
            f"{what} returned a {type(obj).__module__}.{type(obj).__qualname__}, which has no "
            f"{', '.join(missing)}: not a scikit-learn compatible {_kind(problem)} for a "
            f"{problem} target"
        )


# building -------------------------------------------------------------------------------------
def build_estimator(config: ModelConfig, problem: ProblemType) -> Any:
    """The configured estimator for ``problem``, unfitted: the family's class with its
    hyper-parameters (an unknown one is refused, unless the class hands extra ones to its
    library), or what the factory returns (checked)."""
    if config.factory is not None:
        estimator = _call(config.factory, "model.factory", **config.params)
        check_estimator(estimator, problem, f"model.factory {config.factory!r}")
        return estimator
    assert config.family is not None  # ModelConfig holds one of the two
    cls = FAMILIES[config.family].estimator_class(problem)
    valid = cls().get_params()
    unknown = sorted(set(config.params) - set(valid))
    if unknown and not _passes_on_extra_params(cls):
        raise ConfigError(
            f"model.params: {unknown} are not parameters of {cls.__name__} "
            f"(valid: {', '.join(sorted(valid))})"
        )
    return cls(**dict(config.params))


def _passes_on_extra_params(cls: type) -> bool:
    """Whether ``cls`` takes parameters beyond its named ones (``**kwargs``): XGBoost's and
    LightGBM's estimators hand those to their boosters, which warn about a name they do not know."""
    init = inspect.signature(cls)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in init.parameters.values())


def build_features(features: FeatureConfig) -> Any:
    """The preprocessing, unfitted: the default feature pipeline, or the factory's transformer."""
    if features.factory is None:
        return build_feature_pipeline(features)
    transformer = _call(
        features.factory,
        "features.factory",
        numeric=list(features.numeric),
        categorical=list(features.categorical),
        **features.params,
    )
    missing = [m for m in ("fit", "transform") if not callable(getattr(transformer, m, None))]
    if missing:
        raise ConfigError(
            f"features.factory {features.factory!r} returned a {type(transformer).__qualname__}, "
            f"which has no {', '.join(missing)}: not a scikit-learn transformer"
        )
    return transformer


def build_pipeline(features: FeatureConfig, config: ModelConfig, problem: ProblemType) -> Pipeline:
    """The unfitted model: the feature pipeline, then the estimator; or a factory's whole
    Pipeline by itself, on the raw columns (see the module docstring)."""
    estimator = build_estimator(config, problem)
    whole = isinstance(estimator, Pipeline)
    in_front = config.feature_pipeline if config.feature_pipeline is not None else not whole
    if not in_front:
        if features.factory is not None:
            why = (
                f"model.factory {config.factory!r} returns a whole Pipeline, which takes the raw "
                "columns"
                if whole
                else "model.feature_pipeline is false"
            )
            raise ConfigError(
                f"features.factory {features.factory!r} is configured, but {why}: set "
                "model.feature_pipeline: true to put the features in front, or drop "
                "features.factory"
            )
        return estimator if whole else Pipeline([("model", estimator)])
    return Pipeline([("features", build_features(features)), ("model", estimator)])


def check_model_code(features: FeatureConfig, config: ModelConfig, problem: ProblemType) -> None:
    """Build the unfitted model once, so a factory that cannot be imported or returns the wrong
    thing, or a family that does not fit the problem, fails before any data is read."""
    build_pipeline(features, config, problem)


# fitting --------------------------------------------------------------------------------------
def fitting_threads(sample_seconds: float = 0.2) -> int:
    """OpenMP and BLAS threads for a fit: the cores idle when it starts (three quarters idle
    counts), at least one. OpenMP's threads meet at a barrier many times a tree, so a thread
    whose core another process holds stalls the others: the example's fit took 6.4 s on two
    threads beside one busy core and 2.9 s on one (2.0 s on two on an idle machine). The
    example's histogram gradient boosting fits the same model on any number of threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    total = psutil.cpu_count() or 1
    busy = psutil.cpu_percent(interval=sample_seconds) / 100 * total
    return max(1, min(cores or 1, math.floor(total - busy + 0.25)))


def train_model(split: Split, features: FeatureConfig, config: ModelConfig) -> Pipeline:
    """Fit the feature pipeline and the estimator on the training set (for the split's problem),
    on the cores that are idle (`fitting_threads`).

    With user code, a failing fit is a ConfigError naming the factories, and so is a fitted model
    that skops could not store safely; both before anything is logged.
    """
    with threadpool_limits(fitting_threads()):
        return _fit(split, features, config)


def _fit(split: Split, features: FeatureConfig, config: ModelConfig) -> Pipeline:
    model = build_pipeline(features, config, split.problem.kind)
    factories = [
        f"{field} {ref!r}"
        for field, ref in (
            ("model.factory", config.factory),
            ("features.factory", features.factory),
        )
        if ref is not None
    ]
    if not factories:
        return model.fit(split.X_train, split.y_train)
    try:
        model.fit(split.X_train, split.y_train)
    except Exception as exc:
        raise ConfigError(
            f"{' with '.join(factories)}: fitting failed: {type(exc).__name__}: {exc}"
        ) from None
    trusted_types(model, own_code_packages(config, features), " with ".join(factories))
    return model


def trusted_types(model: Any, packages: tuple[str, ...], what: str = "the model") -> list[str]:
    """The types skops must be told to trust to load ``model`` (what MLflow records with it).

    Every one must be a built-in family's (``mlops.core.integrity``) or come from one of the
    user's own ``packages``; anything else, or a model skops cannot write at all, is a
    ConfigError naming ``what``.
    """
    import skops.io

    try:
        needed = sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))
    except Exception as exc:
        raise ConfigError(
            f"{what}: the fitted model cannot be saved with skops ({type(exc).__name__}: {exc}); "
            "define your classes and functions at the top level of a module of your package"
        ) from None
    refused = untrusted_types(needed, packages)
    if refused:
        own = ", ".join(packages) or "none"
        raise ConfigError(
            f"{what}: the fitted model holds types the project does not trust to load: "
            f"{', '.join(refused)}. Trusted are the built-in families' types and those of your "
            f"own code's packages (here: {own})"
        )
    return needed
