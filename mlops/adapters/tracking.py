"""Experiment tracking: one MLflow run per training, with parameters, metrics, data and model."""

from __future__ import annotations

import tempfile
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.pipeline import Pipeline

from mlops.adapters.charts import close_figure, importance_figure
from mlops.core.explanations import baseline_of
from mlops.core.frames import missing_as_nan
from mlops.core.integrity import CODE_METADATA, SERIALIZATION_FORMAT
from mlops.core.lineage import EXPLANATION_METADATA, PROBLEM_METADATA
from mlops.core.outliers import OUTLIER_METADATA, OutlierDetector
from mlops.ml.explanations import Importance
from mlops.ml.problems import Problem
from mlops.ml.split import Split
from mlops.ml.training import trusted_types

DATA_ARTIFACTS = "data"

CONFIG_ARTIFACTS = "config"


def load_run_frame(tracking_uri: str, run_id: str, part: str) -> pd.DataFrame:
    """A frame a training run logged (``training`` or ``holdout``): features and the 0/1 target."""
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{DATA_ARTIFACTS}/{part}.parquet", tracking_uri=tracking_uri
    )
    return missing_as_nan(pd.read_parquet(path))  # Parquet gives None where training had NaN


@dataclass(frozen=True)
class TrainingRun:
    run_id: str
    experiment_id: str
    model_uri: str
    run_url: str


@contextmanager
def tracking_server(uri: str) -> Iterator[None]:
    """Send MLflow's fluent API to ``uri`` for the block, then restore the previous target."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _dataset(frame: pd.DataFrame, target: pd.Series, source: str, name: str, digest: str) -> Any:
    data = frame.assign(**{target.name: target.to_numpy()})
    dataset = mlflow.data.from_pandas(  # type: ignore[attr-defined]
        data, source=source, targets=str(target.name), name=name, digest=digest
    )
    # MLflow would infer the schema value by value over every row (2.3 s of the example's
    # training run for its two frames); the data contract fixes each column's type, so the first
    # rows say what all of them do.
    dataset.schema = infer_signature(data.head(SCHEMA_ROWS)).inputs
    return dataset


#: Rows a logged dataset's column types are read from.
SCHEMA_ROWS = 1000


def flatten(prefix: str, value: Any) -> dict[str, Any]:
    """Nested config as flat MLflow parameters (``model.params.max_iter``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: ",".join(str(v) for v in value)}
    return {prefix: value}


#: Where a regression's training target is cut for the server's histogram of predicted values:
#: its deciles and its maximum (ties merged, so up to ten bounds).
VALUE_QUANTILES = tuple(i / 10 for i in range(1, 11))


def problem_metadata(problem: Problem, y_train: pd.Series | None = None) -> dict[str, Any]:
    """What a server needs to answer for the model: the problem type, the target and its classes
    in label order (a classifier's label i is ``classes[i]``); for a regression given its training
    target ``y_train`` (as a logged model's metadata is), ``value_buckets``: the bounds of the
    histogram its predicted values are counted in (``VALUE_QUANTILES`` of the training target,
    increasing and finite), by which the canary compares champion and candidate."""
    meta: dict[str, Any] = {
        "type": problem.kind,
        "target": problem.column,
        "classes": list(problem.classes),
    }
    if not problem.is_classifier and y_train is not None:
        values = pd.to_numeric(y_train, errors="coerce").to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        bounds: list[float] = (
            [float(b) for b in np.unique(np.quantile(finite, VALUE_QUANTILES))]
            if len(finite)
            else []
        )
        meta["value_buckets"] = bounds
    return meta


def log_training_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    model: Pipeline,
    split: Split,
    metrics: dict[str, float],
    params: dict[str, Any],
    tags: dict[str, str],
    data_source: str,
    data_md5: str,
    config_files: dict[str, str],
    texts: dict[str, str] | None = None,
    own_code: tuple[str, ...] = (),
) -> TrainingRun:
    """Log one finished training to MLflow; a failure part-way marks the run FAILED, never FINISHED.

    ``texts`` are logged as text artifacts by their path (a managed training job's log).
    ``own_code``: the top-level packages of the user's own factories, whose types the model may
    ask skops to trust (recorded with it; see mlops.core.integrity)."""
    with tracking_server(tracking_uri), warnings.catch_warnings():
        # MLflow registers the local-file dataset source twice and calls a path ambiguous; and it
        # hints that integer columns cannot hold missing values, which the contract rules out.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        exp = mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=run_name, tags=tags) as run:
            mlflow.log_params(flatten("", params))
            mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
            for artifact, text in (texts or {}).items():
                mlflow.log_text(text, artifact)
            name = data_source.rsplit("/", 1)[-1]
            # MLflow keys a dataset by (name, digest): the digest is the DVC md5 of the file, and
            # the name tells the two parts of the split apart.
            log_input(
                _dataset(split.X_train, split.y_train, data_source, f"{name}:training", data_md5),
                "training",
            )
            log_input(
                _dataset(
                    split.X_holdout, split.y_holdout, data_source, f"{name}:holdout", data_md5
                ),
                "holdout",
            )
            for filename, text in config_files.items():
                mlflow.log_text(text, f"{CONFIG_ARTIFACTS}/{filename}")
            # The exact frames, for the gates (holdout) and for drift checks (training data as
            # the reference once this model serves).
            with tempfile.TemporaryDirectory() as tmp:
                for part, X, y in (
                    ("training", split.X_train, split.y_train),
                    ("holdout", split.X_holdout, split.y_holdout),
                ):
                    path = Path(tmp) / f"{part}.parquet"
                    X.assign(**{str(y.name): y.to_numpy()}).to_parquet(path)
                    mlflow.log_artifact(str(path), artifact_path=DATA_ARTIFACTS)
            info = mlflow.sklearn.log_model(
                model, name="model", params=None, **model_artifact(model, split, own_code)
            )
        run_url = f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
        return TrainingRun(
            run_id=run.info.run_id,
            experiment_id=exp.experiment_id,
            model_uri=info.model_uri,
            run_url=run_url,
        )


#: What MLflow's SQL store answers when a concurrent run inserted the same dataset first (SQLite,
#: PostgreSQL): it looks the dataset up, finds none, and its insert then meets the other's row
_DATASET_RACE = ("UNIQUE constraint failed: datasets", "duplicate key value violates unique")


def log_input(dataset: Any, context: str) -> None:
    """``mlflow.log_input``, once more when a concurrent run logged the same dataset (experiment,
    name, digest) between MLflow's look-up and its insert: the second try finds that row and
    links it. Seen with 25 training runs of one model at once (benchmarks/shared_stack_load.py):
    one run failed on it."""
    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as exc:
        if not any(marker in str(exc) for marker in _DATASET_RACE):
            raise
        mlflow.log_input(dataset, context=context)


def model_artifact(model: Pipeline, split: Split, own_code: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a trained model is saved with (``mlflow.sklearn.log_model`` or ``save_model``): its
    signature and input example from the holdout, pinned requirements, the skops format with
    exactly the types it needs trusted, and its problem (and own code) metadata. Call it where
    MLflow's integer-column hint is silenced (the contract rules out missing values)."""
    # Columns keep the contract's types: MLflow refuses to cast int64 to double at predict time,
    # so a double column would refuse integer input.
    sample = split.X_holdout.head(200)
    trusted = trusted_types(model, own_code)  # refuses a type nobody decided to trust
    own = sorted({t.split(".", 1)[0] for t in trusted} & set(own_code))
    baseline = baseline_of(model, split.X_train)
    outliers = OutlierDetector.fit(split.X_train)
    return {
        "signature": infer_signature(sample, model.predict(sample)),
        "input_example": sample.head(5),
        "pip_requirements": _pip_requirements(trusted),
        # explicit: MLflow's default turns to cloudpickle on some tracking URIs, and every
        # loader refuses any format but this one (mlops.core.integrity)
        "serialization_format": SERIALIZATION_FORMAT,
        # exactly what this model needs, each a built-in family's or from own code
        "skops_trusted_types": trusted,
        "metadata": {PROBLEM_METADATA: problem_metadata(split.problem, split.y_train)}
        | ({CODE_METADATA: {"packages": own}} if own else {})
        | ({EXPLANATION_METADATA: {"baseline": baseline}} if baseline else {})
        | {OUTLIER_METADATA: outliers.to_metadata()},
    }


def _pip_requirements(trusted: list[str]) -> list[str]:
    """scikit-learn's pinned requirement, and the distribution of each other library whose
    types the model holds (xgboost-cpu, lightgbm), pinned to the version it was trained with."""
    from importlib.metadata import packages_distributions, version

    packages = {t.split(".", 1)[0] for t in trusted} - {"sklearn", "numpy", "collections"}
    found = packages_distributions() if packages else {}  # 1.5 s: every installed distribution
    extra = {dist for package in packages for dist in found.get(package, [])}
    pinned = [f"{dist}=={version(dist)}" for dist in sorted(extra)]
    return [*mlflow.sklearn.get_default_pip_requirements(), *pinned]


# A monitoring window's run: its tags, and the metrics present only where a verdict was judged.
MONITORED_MODEL_TAG = "mlops.model"
MONITORED_VERSION_TAG = "mlops.model.version"
DRIFT_DETECTED_TAG = "mlops.drift.detected"
PERFORMANCE_DEGRADED_TAG = "mlops.performance.degraded"
SKEW_SHARE_METRIC = "skew_share"  # against the training data: present where the window was judged
DRIFT_SHARE_METRIC = "drift_share"  # against the production rows before the window
ATTRIBUTION_SHIFT_METRIC = "attribution_max_shift"
OUTLIER_RATE_METRIC = "outlier_rate"
LIVE_METRIC_PREFIX = "live_"


def monitoring_experiment(experiment: str) -> str:
    """The MLflow experiment of a pipeline's monitoring windows, one run each."""
    return f"{experiment}-monitoring"


@dataclass(frozen=True)
class MonitoringWindow:
    """What the last monitoring run of a model recorded: None where a verdict was not judged."""

    version: str
    ended: str  # the run's name: window-<end time>
    drift: bool | None
    degraded: bool | None


def last_monitoring_window(
    tracking_uri: str, experiment: str, model: str
) -> MonitoringWindow | None:
    """The latest monitoring run of ``model`` in the pipeline's monitoring experiment, or None."""
    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(monitoring_experiment(experiment))
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{MONITORED_MODEL_TAG}` = '{model}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    tags, metrics = runs[0].data.tags, runs[0].data.metrics
    live = any(k.startswith(LIVE_METRIC_PREFIX) for k in metrics)
    return MonitoringWindow(
        tags.get(MONITORED_VERSION_TAG, "?"),
        str(runs[0].info.run_name or "").removeprefix("window-"),
        tags.get(DRIFT_DETECTED_TAG) == "True" if SKEW_SHARE_METRIC in metrics else None,
        tags.get(PERFORMANCE_DEGRADED_TAG) == "True" if live else None,
    )


def artifact_url(tracking_uri: str, run_id: str, path: str) -> str:
    """Where a browser reads a run's artifact from the tracking server (the route MLflow's UI
    shows images by), to embed or link it from Prefect's artifacts."""
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    return f"{tracking_uri.rstrip('/')}/get-artifact?{query}"


#: Where a training run keeps its version's global feature importance (JSON, and its chart).
IMPORTANCE_ARTIFACT = "explanations/importance.json"
IMPORTANCE_PLOT = "explanations/importance.png"


def log_importance(tracking_uri: str, run_id: str, importance: Importance) -> None:
    """The version's feature importance into its training run: the figures, and their chart."""
    with tracking_server(tracking_uri):
        client = mlflow.MlflowClient()
        client.log_dict(run_id, importance.to_dict(), IMPORTANCE_ARTIFACT)
        figure = importance_figure(importance)
        try:
            client.log_figure(run_id, figure, IMPORTANCE_PLOT)
        finally:
            close_figure(figure)


def load_importance(tracking_uri: str, run_id: str) -> Importance | None:
    """The feature importance a training run holds; None for a run logged without one."""
    with tracking_server(tracking_uri):
        try:
            data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{IMPORTANCE_ARTIFACT}")
        except (MlflowException, OSError):
            return None
    return Importance.from_dict(data)


#: Where a monitoring run keeps the chart of each drifted column (``drift/<column>.png``).
DRIFT_CHARTS = "drift"


@dataclass(frozen=True)
class LoggedWindow:
    """A monitoring window's MLflow run: its URL, and each drifted column's chart's URL."""

    url: str
    charts: dict[str, str]


def log_monitoring_run(
    tracking_uri: str,
    experiment: str,
    outcome: dict[str, Any],
    report: str | None,
    charts: dict[str, Any] | None = None,
) -> LoggedWindow:
    """One MLflow run per monitoring window: its figures as metrics (a history to chart), the
    verdicts as JSON, the Evidently report as an HTML artifact and ``charts`` (column ->
    matplotlib figure, closed once written) as PNGs."""
    skew, drift, perf = outcome["skew"], outcome["drift"], outcome["performance"]
    metrics = {"window_rows": float(outcome["rows"])}
    for verdict, metric in ((skew, SKEW_SHARE_METRIC), (drift, DRIFT_SHARE_METRIC)):
        if verdict["judged"] and verdict["share"] is not None:
            metrics[metric] = float(verdict["share"])
    shifts = [abs(i["shift"]) for i in outcome["attribution"]["influences"]]
    if outcome["attribution"]["judged"] and shifts:
        metrics[ATTRIBUTION_SHIFT_METRIC] = max(shifts)
    if outcome["outliers"]["judged"] and outcome["outliers"]["rate"] is not None:
        metrics[OUTLIER_RATE_METRIC] = float(outcome["outliers"]["rate"])
    detected = any(v["judged"] and v["detected"] for v in (skew, drift, outcome["attribution"]))
    if perf["live"] is not None:
        metrics[f"{LIVE_METRIC_PREFIX}{perf['metric']}"] = float(perf["live"])
    with tracking_server(tracking_uri):
        exp = mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"window-{outcome['until'][:19]}") as run:
            mlflow.set_tags(
                {
                    MONITORED_MODEL_TAG: outcome["model"],
                    MONITORED_VERSION_TAG: str(outcome["version"]),
                    DRIFT_DETECTED_TAG: str(detected),
                    PERFORMANCE_DEGRADED_TAG: str(perf["degraded"]),
                }
            )
            mlflow.log_metrics(metrics)
            mlflow.log_dict(outcome, "monitoring.json")
            if report:
                mlflow.log_artifact(report)
            urls = {}
            for column, figure in (charts or {}).items():
                path = f"{DRIFT_CHARTS}/{column}.png"
                try:
                    mlflow.log_figure(figure, path)
                finally:
                    close_figure(figure)
                urls[column] = artifact_url(tracking_uri, run.info.run_id, path)
    url = f"{tracking_uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
    return LoggedWindow(url, urls)


def log_search_runs(
    tracking_uri: str, experiment: str, scores: list[Any], best: Any, metric: str, runner: str
) -> str:
    """A parent MLflow run for a hyper-parameter search with one nested run per candidate (its
    parameters, cross-validated score and spread). Returns the parent run's id."""
    with tracking_server(tracking_uri):
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=f"search-{len(scores)}-candidates") as parent:
            mlflow.set_tags({"mlops.search.runner": runner, "mlops.search.metric": metric})
            mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
            mlflow.log_metric(f"best_cv_{metric}", best.mean)
            for s in scores:
                with mlflow.start_run(run_name=_candidate_name(s.params), nested=True):
                    mlflow.log_params(s.params)
                    mlflow.log_metrics({f"cv_{metric}": s.mean, f"cv_{metric}_std": s.std,
                                        "fit_seconds": s.seconds})  # fmt: skip
    return str(parent.info.run_id)


def _candidate_name(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(params.items()))[:250]
