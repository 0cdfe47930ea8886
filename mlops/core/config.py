"""Pipeline configuration and data contract: typed models loaded from the example's YAML files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mlops.core.errors import ConfigError
from mlops.core.integrity import is_own_package
from mlops.core.metrics import CLASSIFIERS, ProblemType

#: The built-in model families (mlops.ml.training.FAMILIES: a classifier and/or a regressor each).
ModelFamily = Literal[
    "logistic_regression",
    "linear_regression",
    "random_forest",
    "hist_gradient_boosting",
    "gradient_boosting",
    "xgboost",
    "lightgbm",
]

#: How a config names user code: ``package.module:function``, imported where the model trains.
FACTORY_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

DataFormat = Literal["csv", "csv.gz", "parquet"]

#: The data formats by the data file's ending: the same contract applies to each.
DATA_SUFFIXES: dict[str, DataFormat] = {".csv": "csv", ".csv.gz": "csv.gz", ".parquet": "parquet"}


def data_format(path: str) -> DataFormat:
    """The format of a data file, by its name; any other ending is a ConfigError naming it."""
    for suffix, fmt in DATA_SUFFIXES.items():
        if path.lower().endswith(suffix):
            return fmt
    raise ConfigError(
        f"{path}: unknown data format; the file must end with {', '.join(DATA_SUFFIXES)}"
    )


def _factory_path(value: str | None) -> str | None:
    if value is not None and not FACTORY_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a `package.module:function` reference")
    return value


def factory_module(factory: str | None) -> str | None:
    """The module of a ``package.module:function`` reference."""
    return factory.partition(":")[0] if factory else None


def own_code_modules(model: ModelConfig, features: FeatureConfig) -> tuple[str, ...]:
    """The modules of the user's own model and feature factories; a library's callable named as
    a factory (``sklearn.ensemble:ExtraTreesClassifier``) is not the user's code."""
    modules = (model.factory_module, features.factory_module)
    return tuple(dict.fromkeys(m for m in modules if m and is_own_package(m.split(".")[0])))


def own_code_packages(model: ModelConfig, features: FeatureConfig) -> tuple[str, ...]:
    """The top-level packages of the user's own factories: the only packages whose types a
    model may ask skops to trust beyond the built-in families' (mlops.core.integrity)."""
    return tuple(dict.fromkeys(m.split(".")[0] for m in own_code_modules(model, features)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnContract(_Strict):
    """What one column must hold."""

    type: Literal["int", "float", "category", "string", "bool"]
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] | None = Field(
        None, description="Allowed categories (type category only)."
    )
    unknown_tolerance: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of rows allowed to hold a category outside `values` before the check fails.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> ColumnContract:
        if self.type == "category" and not self.values:
            raise ValueError("a category column needs its allowed `values`")
        if self.type != "category" and (self.values or self.unknown_tolerance):
            raise ValueError("`values` and `unknown_tolerance` apply to category columns only")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError("`min`/`max` apply to int and float columns only")
        return self


class DataContract(_Strict):
    """The data contract of a dataset: its columns, their types and ranges, and a row floor."""

    version: int = 1
    min_rows: int = Field(1, ge=1)
    strict: bool = Field(True, description="Refuse columns the contract does not name.")
    columns: dict[str, ColumnContract]


class DataConfig(_Strict):
    path: str = Field(
        description="DVC-tracked dataset, relative to the project root: a .csv, .csv.gz or "
        ".parquet file (the format is chosen by the ending; the same contract applies)."
    )
    seed: Path | None = Field(
        None,
        description="A shipped gzip copy of the data file that seeds an empty DVC remote on a "
        "fresh machine.",
    )
    na_values: tuple[str, ...] = Field(
        (), description="Values read as missing (CSV cells; text cells of a Parquet file)."
    )
    contract: Path

    @field_validator("path")
    @classmethod
    def _known_format(cls, value: str) -> str:
        try:
            data_format(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def format(self) -> DataFormat:
        return data_format(self.path)


class TargetConfig(_Strict):
    """The column a model predicts and what kind of problem that makes.

    ``problem`` may be left out: ``load_pipeline_config`` infers it from the target's contract
    (``infer_problem``) and says so in ``inferred``. ``classes`` are filled from the contract
    there too: a classifier predicts one of them, and its labels are their positions (binary:
    the negative class, then ``positive``).
    """

    column: str
    problem: ProblemType | None = None
    positive: str | None = Field(
        None, description="Binary only: the label value counted as the positive class."
    )
    classes: tuple[str, ...] = Field(
        (), description="Classifiers: the labels in order (from the data contract when empty)."
    )
    inferred: str | None = Field(None, description="How the problem type was inferred, if it was.")

    @property
    def kind(self) -> ProblemType:
        """The problem type (set by load_pipeline_config)."""
        if self.problem is None:
            raise ConfigError("load the pipeline config with load_pipeline_config()")
        return self.problem


class FeatureConfig(_Strict):
    """The feature columns, and how they become model inputs: the default preprocessing
    (mlops.ml.features), or the user's own ``factory``, called as
    ``factory(numeric=[...], categorical=[...], **params)`` and returning a scikit-learn
    transformer that takes the raw columns."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    factory: str | None = Field(
        None, description="`package.module:function` returning the preprocessing transformer."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of `factory`."
    )

    _factory = field_validator("factory")(_factory_path)

    @model_validator(mode="after")
    def _params_need_a_factory(self) -> FeatureConfig:
        if self.params and self.factory is None:
            raise ValueError("`params` apply to a features `factory` only")
        return self

    @property
    def factory_module(self) -> str | None:
        return factory_module(self.factory)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class SplitConfig(_Strict):
    test_size: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 42
    stratify: bool = True


class ModelConfig(_Strict):
    """The estimator: a built-in ``family`` (its classifier or its regressor, by the problem), or
    the user's own ``factory`` (``package.module:function``, called with ``params`` as keyword
    arguments), returning a scikit-learn compatible estimator or a whole Pipeline.

    ``feature_pipeline`` says whether the feature pipeline (``features``) goes in front of the
    model; unset, it does for an estimator, and not for a factory's Pipeline, which brings its own
    preprocessing and takes the raw feature columns.
    """

    family: ModelFamily | None = None
    factory: str | None = Field(
        None, description="`package.module:function` returning the estimator or Pipeline."
    )
    params: dict[str, Any] = Field(default_factory=dict)
    feature_pipeline: bool | None = Field(
        None, description="Put the feature pipeline in front (unset: unless a Pipeline)."
    )

    _factory = field_validator("factory")(_factory_path)

    @model_validator(mode="after")
    def _family_or_factory(self) -> ModelConfig:
        if (self.family is None) == (self.factory is None):
            raise ValueError("give either `family` (a built-in one) or `factory`, not both or none")
        return self

    @property
    def label(self) -> str:
        """What the model is, in a sentence or a name: the family or the factory reference."""
        return self.family or str(self.factory)

    @property
    def factory_module(self) -> str | None:
        return factory_module(self.factory)


class SearchConfig(_Strict):
    """A hyper-parameter search: every combination of the grid, scored by cross-validation on
    the training split (the holdout stays for the gates)."""

    grid: dict[str, list[Any]] = Field(min_length=1, description="parameter -> values to try")
    folds: int = Field(3, ge=2, le=10)
    metric: str | None = Field(
        None,
        description="A scikit-learn scorer name that fits the problem (SEARCH_METRICS); unset, "
        "the problem's default (DEFAULT_SEARCH_METRIC). Filled in by load_pipeline_config.",
    )

    @property
    def scorer(self) -> str:
        """The scorer the candidates are compared by (set by load_pipeline_config)."""
        if self.metric is None:
            raise ConfigError("load the pipeline config with load_pipeline_config()")
        return self.metric


#: The scikit-learn scorers a search may compare candidates by, per problem (greater is better).
SEARCH_METRICS: dict[ProblemType, tuple[str, ...]] = {
    "binary": ("roc_auc", "average_precision", "accuracy", "balanced_accuracy", "f1",
               "neg_log_loss", "neg_brier_score"),
    "multiclass": ("f1_macro", "f1_weighted", "accuracy", "balanced_accuracy", "neg_log_loss",
                   "roc_auc_ovr", "roc_auc_ovr_weighted"),
    "regression": ("neg_root_mean_squared_error", "neg_mean_absolute_error", "r2",
                   "neg_mean_absolute_percentage_error", "neg_mean_squared_error",
                   "neg_median_absolute_error"),
}  # fmt: skip

DEFAULT_SEARCH_METRIC: dict[ProblemType, str] = {
    "binary": "roc_auc",
    "multiclass": "f1_macro",
    "regression": "neg_root_mean_squared_error",
}


def resolve_search(search: SearchConfig, problem: ProblemType, where: str) -> SearchConfig:
    """The search with its metric: the problem's default, or the named one if it fits."""
    metric = search.metric or DEFAULT_SEARCH_METRIC[problem]
    if metric not in SEARCH_METRICS[problem]:
        raise ConfigError(
            f"{where}: search.metric {metric!r} does not fit a {problem} problem; "
            f"use one of {', '.join(SEARCH_METRICS[problem])}"
        )
    return search.model_copy(update={"metric": metric})


class PipelineConfig(_Strict):
    """Everything the training pipeline needs to know about one dataset and model."""

    name: str
    model_name: str = Field(description="Registered model name in MLflow.")
    experiment: str
    data: DataConfig
    target: TargetConfig
    features: FeatureConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig
    search: SearchConfig | None = None
    policy: Path

    # Filled in by load_pipeline_config, not by the YAML file.
    source: Path | None = None
    contract_spec: DataContract | None = None

    @model_validator(mode="after")
    def _features_distinct(self) -> PipelineConfig:
        both = set(self.features.numeric) & set(self.features.categorical)
        if both:
            raise ValueError(f"features listed as both numeric and categorical: {sorted(both)}")
        if self.target.column in self.features.columns:
            raise ValueError(f"the target {self.target.column!r} is also listed as a feature")
        return self

    @property
    def contract(self) -> DataContract:
        """The loaded data contract (set by load_pipeline_config)."""
        if self.contract_spec is None:
            raise ConfigError("load the pipeline config with load_pipeline_config()")
        return self.contract_spec


M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M]) -> M:
    """Read ``path`` as YAML into ``model``; any problem becomes a ConfigError naming the file and field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def load_pipeline_config(path: Path) -> PipelineConfig:
    """Load a pipeline config and its data contract; relative paths resolve against the config's folder."""
    path = path.resolve()
    cfg = load_yaml_model(path, PipelineConfig)
    here = path.parent
    contract_path = here / cfg.data.contract
    contract = load_yaml_model(contract_path, DataContract)
    data = cfg.data.model_copy(
        update={
            "contract": contract_path,
            "seed": here / cfg.data.seed if cfg.data.seed else None,
        }
    )
    cfg = cfg.model_copy(
        update={
            "data": data,
            "policy": here / cfg.policy,
            "source": path,
            "contract_spec": contract,
        }
    )
    needed = [*cfg.features.columns, cfg.target.column]
    missing = [c for c in needed if c not in contract.columns]
    if missing:
        raise ConfigError(f"{path}: columns {missing} are used but not declared in {contract_path}")
    target = resolve_target(cfg.target, contract.columns[cfg.target.column], f"{path}: target")
    search = resolve_search(cfg.search, target.kind, str(path)) if cfg.search else None
    return cfg.model_copy(update={"target": target, "search": search})


def infer_problem(column: ColumnContract) -> tuple[ProblemType, str]:
    """The problem type a target column's contract suggests, and why: a category of two values is
    binary, of more multiclass; a bool binary; an int or float regression."""
    if column.type == "bool":
        return "binary", "the target is a bool column"
    if column.type == "category":
        n = len(column.values or ())
        kind: ProblemType = "binary" if n == 2 else "multiclass"
        return kind, f"the target is a category column of {n} values"
    if column.type in ("int", "float"):
        article = "an" if column.type == "int" else "a"
        return "regression", f"the target is {article} {column.type} column"
    raise ConfigError(
        "a string target without categories: declare target.problem, or make the column a "
        "category with its values in the contract"
    )


def resolve_target(target: TargetConfig, column: ColumnContract, where: str) -> TargetConfig:
    """The target with its problem type (declared or inferred) and, for a classifier, its classes
    in label order; anything that does not fit is a ConfigError naming ``where``."""
    update: dict[str, Any] = {}
    problem = target.problem
    if problem is None:
        problem, why = infer_problem(column)
        update["inferred"] = f"{problem} (inferred: {why}; declare target.problem to choose)"
    update["problem"] = problem
    if problem == "regression":
        if column.type not in ("int", "float"):
            raise ConfigError(f"{where}: a regression target must be an int or float column, "
                              f"not {column.type}")  # fmt: skip
        if target.positive is not None or target.classes:
            raise ConfigError(f"{where}: `positive` and `classes` apply to classifiers only")
        return target.model_copy(update=update)
    assert problem in CLASSIFIERS
    classes = tuple(target.classes) or _contract_classes(column)
    if not classes:
        raise ConfigError(
            f"{where}: a {problem} target needs its classes: list them in target.classes or make "
            "the column a category with its values in the contract"
        )
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{where}: classes {list(classes)} repeat a value")
    if problem == "binary":
        if len(classes) != 2:
            raise ConfigError(f"{where}: a binary target has two classes, not {list(classes)}")
        positive = target.positive
        if positive is None:
            positive = classes[-1]
            note = f"{classes[-1]!r} taken as the positive class (set target.positive to choose)"
            update["inferred"] = "; ".join(filter(None, [update.get("inferred"), note]))
        if positive not in classes:
            raise ConfigError(f"{where}: positive {positive!r} is not one of {list(classes)}")
        classes = (next(c for c in classes if c != positive), positive)
        update["positive"] = positive
    else:
        if target.positive is not None:
            raise ConfigError(f"{where}: `positive` applies to a binary target only")
        if len(classes) < 3:
            raise ConfigError(
                f"{where}: a multiclass target needs three classes or more, not {list(classes)}"
            )
    update["classes"] = classes
    return target.model_copy(update=update)


def _contract_classes(column: ColumnContract) -> tuple[str, ...]:
    if column.type == "bool":
        return ("False", "True")
    return tuple(column.values or ())


def config_snapshot(cfg: PipelineConfig) -> dict[str, str]:
    """The pipeline config, data contract and policy as three files that load on their own.

    Logged with every training run (``config/``) so that a version can be retrained exactly
    from what it was trained with, wherever the original files lived.
    """
    if cfg.source is None:
        raise ConfigError("load the pipeline config with load_pipeline_config()")
    raw = yaml.safe_load(cfg.source.read_text(encoding="utf-8"))
    raw["data"]["contract"] = "contract.yaml"
    raw["data"].pop("seed", None)
    raw["policy"] = "policy.yaml"
    raw["model"] = cfg.model.model_dump(mode="json")  # as trained: a search may have set params
    return {
        "pipeline.yaml": yaml.safe_dump(raw, sort_keys=False),
        "contract.yaml": Path(cfg.data.contract).read_text(encoding="utf-8"),
        "policy.yaml": Path(cfg.policy).read_text(encoding="utf-8"),
    }
