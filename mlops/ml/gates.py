"""Validation gates: what a challenger must pass before it may replace the champion.

Each gate is a plain function returning a typed ``GateResult`` (with a human reason and the
figures behind it), wrapped by a task of the same name (``tasks.gates``); the promotion flow
collects them and decides. A gate judges what it is given: fetching a model is the task's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, mean_prediction, selection_rate, true_positive_rate

from mlops.core.lineage import PROBLEM_METADATA
from mlops.core.metrics import KNOWN_METRICS, PROBLEM_TYPES
from mlops.core.policy import ComparisonPolicy, DataPolicy, FairnessPolicy, Policy, Threshold
from mlops.ml.drift import drift_tests
from mlops.ml.problems import Model, Predictions, Problem


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: ``passed``, a one-line ``reason`` a person can act on, and the figures."""

    gate: str
    passed: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class GateFailed(Exception):
    """A challenger failed one or more gates; the message names each failure."""

    def __init__(self, results: list[GateResult]) -> None:
        self.results = results
        failed = [r for r in results if not r.passed]
        super().__init__("; ".join(f"{r.gate}: {r.reason}" for r in failed))


# metric thresholds ------------------------------------------------------------------------------
def _bound(threshold: Threshold) -> str:
    if threshold.min is not None and threshold.max is not None:
        return f"within [{threshold.min}, {threshold.max}]"
    return f">= {threshold.min}" if threshold.min is not None else f"<= {threshold.max}"


def check_metric_thresholds(metrics: dict[str, float], policy: Policy) -> GateResult:
    """Gate: every holdout metric the policy names meets its threshold; a metric undefined on
    the holdout (NaN: a ROC AUC of one class) meets none."""
    failures = []
    for name, threshold in policy.metrics.items():
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} was not measured")
        elif math.isnan(value):
            failures.append(
                f"{name} is undefined on the holdout (NaN), so it cannot be {_bound(threshold)}"
            )
        elif not threshold.passes(value):
            failures.append(f"{name} {value:.4f} is not {_bound(threshold)}")
    checked = {k: metrics.get(k) for k in policy.metrics}
    if failures:
        return GateResult("metric-thresholds", False, "; ".join(failures), checked)
    return GateResult(
        "metric-thresholds",
        True,
        ", ".join(f"{k} {v:.4f}" for k, v in checked.items() if v is not None),
        checked,
    )


# champion vs challenger -------------------------------------------------------------------------
def _paired_bootstrap(
    challenger: Model,
    champion: Model | None,
    X: pd.DataFrame,
    y: np.ndarray,
    problem: Problem,
    policy: ComparisonPolicy,
    champion_label: str,
) -> GateResult:
    """Paired bootstrap of the challenger's score minus the champion's on the same holdout rows
    (champion minus challenger for a metric where lower is better: above zero is better).

    The challenger passes unless the interval's upper end lies below ``-margin`` (it is worse
    beyond the margin at the confidence level). A difference whose interval holds zero is a tie.
    """
    if champion is None:
        return GateResult(
            "champion-vs-challenger", True, "no champion yet: nothing to beat",
            {"metric": policy.metric},
        )  # fmt: skip
    new, old = problem.predict(challenger, X), problem.predict(champion, X)
    return paired_comparison(new, old, y, problem, policy, champion_label, "champion-vs-challenger")


def paired_comparison(
    new: Predictions,
    old: Predictions,
    y: np.ndarray,
    problem: Problem,
    policy: ComparisonPolicy,
    champion_label: str,
    gate: str,
) -> GateResult:
    """The ``gate``'s verdict on the challenger's answers ``new`` against the champion's ``old``
    on the same rows (``_paired_bootstrap``; the replay gate passes the champion's logged
    answers)."""
    metric = policy.metric
    # The difference is signed so that above zero is always the challenger doing better: for
    # a metric where lower is better (rmse, log loss) it is champion minus challenger.
    lower_is_better = KNOWN_METRICS[metric] == "lower"
    sign = -1.0 if lower_is_better else 1.0
    try:
        scores = problem.score(metric, y, new), problem.score(metric, y, old)
    except ValueError as exc:
        return GateResult(
            gate,
            False,
            f"{metric} is undefined on the {len(y)} holdout rows compared ({exc})",
            {"metric": metric},
        )
    observed = sign * (scores[0] - scores[1])
    rng = np.random.default_rng(policy.seed)
    n = len(y)
    draws = [rng.integers(0, n, n) for _ in range(policy.bootstrap_samples)]
    diffs: list[float] = []
    if metric == "roc_auc" and new.proba is not None and old.proba is not None:
        paired = _resampled_auc(y, new.proba[:, 1], draws) - _resampled_auc(
            y, old.proba[:, 1], draws
        )
        diffs = [float(d) for d in sign * paired if not math.isnan(d)]  # NaN: one class drawn
    else:
        for idx in draws:
            a, b, truth = new.take(idx), old.take(idx), y[idx]
            try:
                diffs.append(
                    sign * (problem.score(metric, truth, a) - problem.score(metric, truth, b))
                )
            except ValueError:
                continue  # undefined on this resample (a ROC AUC of one class): not counted
    if not diffs:
        return GateResult(
            gate,
            False,
            f"{metric} is undefined on every one of {policy.bootstrap_samples} resamples",
            {"metric": metric},
        )
    alpha = (1 - policy.confidence) / 2
    lo, hi = (float(v) for v in np.quantile(diffs, [alpha, 1 - alpha]))
    details = {
        "metric": metric,
        "challenger": round(scores[0], 5),
        "champion": round(scores[1], 5),
        "difference": round(observed, 5),
        "interval": [round(lo, 5), round(hi, 5)],
        "confidence": policy.confidence,
        "margin": policy.margin,
        "samples": len(diffs),
    }
    which = " (champion minus challenger: lower is better)" if lower_is_better else ""
    span = (
        f"{metric} difference {observed:+.4f}{which} "
        f"({policy.confidence:.0%} interval {lo:+.4f} to {hi:+.4f})"
    )
    if hi < -policy.margin:
        return GateResult(
            gate,
            False,
            f"worse than {champion_label} beyond the margin {policy.margin}: {span}",
            details | {"verdict": "worse"},
        )
    verdict = "better" if lo > 0 else ("tie" if hi >= 0 else "within margin")
    return GateResult(
        "champion-vs-challenger",
        True,
        f"{verdict} against {champion_label}: {span}",
        details | {"verdict": verdict},
    )


def _resampled_auc(y: np.ndarray, score: np.ndarray, draws: list[np.ndarray]) -> np.ndarray:
    """The binary ROC AUC of each resample (the rows ``idx`` of ``y`` and ``score``, each row
    as often as drawn), NaN where the resample holds one class: the Mann-Whitney statistic with
    ties counted half, which is the area ``roc_auc_score`` computes (equal to its answer within
    1e-12, tests/unit/ml/test_gates.py), from one sort of the scores for all resamples instead of
    one sort per resample. By hand because neither scikit-learn nor scipy's bootstrap resamples a
    rank statistic without sorting again. 500 resamples of 9,769 rows (the example's holdout):
    0.11 s against 6.7 s of ``roc_auc_score`` calls (measured with a test run beside it), and
    the gate scores two models."""
    _, group = np.unique(score, return_inverse=True)  # tie groups, in ascending score
    groups = int(group.max()) + 1 if len(group) else 0
    codes = group * 2 + np.asarray(y, dtype="int64")
    out = np.full(len(draws), np.nan)
    for k, idx in enumerate(draws):
        counts = np.bincount(codes[idx], minlength=2 * groups).reshape(groups, 2)
        negatives, positives = counts[:, 0].astype("float64"), counts[:, 1].astype("float64")
        total_neg, total_pos = negatives.sum(), positives.sum()
        if total_neg and total_pos:
            below = np.cumsum(negatives) - negatives  # negatives scored lower than the group
            out[k] = (positives * (below + 0.5 * negatives)).sum() / (total_pos * total_neg)
    return out


def unseen_rows(holdout: pd.DataFrame, champion_training: pd.DataFrame | None) -> pd.DataFrame:
    """The holdout rows the champion never trained on. When the data changed between versions
    (new rows, production rows), some of the challenger's holdout was the champion's training
    data; judging both on it would favour the champion, which has seen the answers."""
    if champion_training is None:
        return holdout
    columns = [c for c in holdout.columns if c in champion_training.columns]
    seen = champion_training[columns].drop_duplicates().assign(_seen=True)
    marked = holdout.merge(seen, on=columns, how="left")
    keep = marked["_seen"].isna().to_numpy()
    return holdout[keep]


MIN_COMPARISON_ROWS = 200


def compare_with_champion(
    challenger: Model,
    champion: Model | None,
    holdout: pd.DataFrame,
    problem: Problem,
    policy: ComparisonPolicy,
    champion_label: str,
    champion_training: pd.DataFrame | None = None,
) -> GateResult:
    """Gate: the challenger is not worse than the champion beyond the margin (paired bootstrap),
    on the holdout rows the champion never trained on."""
    rows = unseen_rows(holdout, champion_training)
    if len(rows) < MIN_COMPARISON_ROWS:
        rows = holdout  # too few to judge by: say so
        champion_label += (
            f" on all {len(holdout)} holdout rows (fewer than {MIN_COMPARISON_ROWS} it never saw)"
        )
    elif champion_training is not None:
        champion_label += f" on the {len(rows)} of {len(holdout)} holdout rows it never trained on"
    X = rows.drop(columns=[problem.column])
    y = rows[problem.column].to_numpy()
    return _paired_bootstrap(challenger, champion, X, y, problem, policy, champion_label)


# fairness ---------------------------------------------------------------------------------------
def _error_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) != np.asarray(y_pred)))


def _mean_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float)))


def _mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_pred, dtype=float) - np.asarray(y_true, dtype=float))))


@dataclass(frozen=True)
class _Measure:
    """A figure computed per group (a MetricFrame column) and what a person calls it."""

    key: str
    label: str
    fn: Callable[..., float]


@dataclass(frozen=True)
class _Rule:
    """One fairness limit: its policy field, what its gap is called (``label`` in a failure,
    ``short`` in the passing summary) and the measures it spans: the gap is the largest spread
    of any of them between the judged groups."""

    field: str
    label: str
    short: str
    measures: tuple[str, ...]


def _fairness_rules(problem: Problem) -> tuple[list[_Measure], list[_Rule]]:
    """What is measured per group for ``problem`` and which policy limits judge it."""
    if problem.kind == "binary":
        return [
            _Measure("selection_rate", "selection rate", selection_rate),
            _Measure("true_positive_rate", "true positive rate", true_positive_rate),
        ], [
            _Rule(
                "max_demographic_parity_difference",
                "demographic parity difference",
                "DP",
                ("selection_rate",),
            ),
            _Rule(
                "max_equal_opportunity_difference",
                "equal opportunity difference",
                "EO",
                ("true_positive_rate",),
            ),
        ]
    if problem.kind == "multiclass":
        shares = [
            _Measure(
                f"selection_rate[{name}]",
                f"selection rate of {name!r}",
                partial(selection_rate, pos_label=i),
            )
            for i, name in enumerate(problem.classes)
        ]
        return [*shares, _Measure("error_rate", "error rate", _error_rate)], [
            _Rule(
                "max_selection_rate_difference",
                "selection rate difference",
                "selection rate gap",
                tuple(m.key for m in shares),
            ),
            _Rule(
                "max_error_rate_difference",
                "error rate difference",
                "error rate gap",
                ("error_rate",),
            ),
        ]
    return [
        _Measure("mean_error", "mean error", _mean_error),
        _Measure("mean_absolute_error", "mean absolute error", _mean_absolute_error),
        _Measure("mean_prediction", "mean prediction", mean_prediction),
    ], [
        _Rule(
            "max_mean_error_difference", "mean error difference", "mean error gap", ("mean_error",)
        ),
        _Rule(
            "max_mean_prediction_difference",
            "mean prediction difference",
            "mean prediction gap",
            ("mean_prediction",),
        ),
    ]


def _widest(rates: pd.DataFrame, measures: tuple[str, ...]) -> tuple[float, str] | None:
    """The largest spread (max - min over groups) of any of ``measures``, and which; None when
    fewer than two groups have a value for any of them."""
    spreads = [
        (float(column.max() - column.min()), m)
        for m in measures
        if len(column := rates[m].dropna()) >= 2
    ]
    return max(spreads) if spreads else None


def check_fairness(
    model: Model, holdout: pd.DataFrame, problem: Problem, policy: FairnessPolicy
) -> GateResult:
    """Gate: per sensitive column, the gaps between groups (fairlearn ``MetricFrame``) stay
    within the policy's limits for the problem type (``FairnessPolicy.limits``):

    - binary: selection rate (demographic parity) and true-positive rate (equal opportunity);
    - multiclass: each class's selection rate (the widest gap of any class) and the error rate;
    - regression: mean error (prediction - truth) and mean prediction, each gap divided by the
      holdout target's standard deviation (population, ddof 0); the mean absolute error is
      reported beside them.

    Groups smaller than ``min_group_size`` are listed in the details but left out of the
    differences: their rates are too noisy to judge a model by.
    """
    limits = policy.limits(problem.kind)
    measures, rules = _fairness_rules(problem)
    frame = holdout.drop(columns=[problem.column])
    predictions = problem.predict(model, frame).values
    y = holdout[problem.column].to_numpy()
    scale, unit, short_unit = 1.0, "", ""
    if not problem.is_classifier:
        scale, unit, short_unit = float(np.std(y.astype(float))), " target SDs", " SD"
        if not np.isfinite(scale) or scale == 0:
            return GateResult(
                "fairness",
                False,
                f"the holdout target {problem.column!r} does not vary: gaps relative to its "
                "spread are undefined",
            )
    labels = {m.key: m.label for m in measures}
    failures: list[str] = []
    summaries: list[str] = []
    details: dict[str, Any] = {}
    for column in policy.sensitive:
        groups = frame[column].fillna("(missing)").astype(str)
        sizes = groups.value_counts()
        judged = sizes[sizes >= policy.min_group_size].index
        by_group = MetricFrame(
            metrics={m.key: m.fn for m in measures},
            y_true=y,
            y_pred=predictions,
            sensitive_features=groups,
        ).by_group
        column_details: dict[str, Any] = {
            "groups": {
                g: {"rows": int(sizes[g]), **{k: round(float(v), 4) for k, v in row.items()}}
                for g, row in by_group.iterrows()
            },
            "too_small": sorted(sizes[sizes < policy.min_group_size].index.tolist()),
        }
        if unit:
            column_details["target_std"] = round(scale, 4)
        details[column] = column_details
        if len(judged) < 2:
            column_details["note"] = "fewer than two groups large enough to compare"
            continue
        rates = by_group.loc[list(judged)]
        gaps = []
        for rule in rules:
            widest = _widest(rates, rule.measures)
            name = rule.field.removeprefix("max_")
            if widest is None:
                column_details[name] = None
                gaps.append(f"{rule.short} undefined")
                continue
            gap, measure = widest[0] / scale, widest[1]
            column_details[name] = round(gap, 4)
            gaps.append(f"{rule.short} {gap:.3f}{short_unit}")
            limit = limits[rule.field]
            if gap > limit:
                hi, lo = rates[measure].idxmax(), rates[measure].idxmin()
                failures.append(
                    f"{rule.label} on {column} is {gap:.3f}{unit} > {limit} "
                    f"({labels[measure]} {hi} {rates[measure][hi]:.3f} vs {lo} "
                    f"{rates[measure][lo]:.3f})"
                )
        summaries.append(f"{column}: {', '.join(gaps)}")
    if failures:
        return GateResult("fairness", False, "; ".join(failures), details)
    return GateResult(
        "fairness", True, "; ".join(summaries) or "no sensitive columns to judge", details
    )


# training data ----------------------------------------------------------------------------------
def check_training_data(
    training: pd.DataFrame, reference: pd.DataFrame | None, policy: DataPolicy
) -> GateResult:
    """Gate: missing values per column and drift against the champion's training data (Evidently)."""
    sample = training.sample(min(len(training), policy.sample_rows), random_state=0)
    if reference is not None:
        reference = reference.sample(min(len(reference), policy.sample_rows), random_state=0)
    reading = drift_tests(sample, reference)
    failures: list[str] = []
    details: dict[str, Any] = {}
    missing, drift_share, drifted = reading.missing_share, reading.share, reading.drifted
    details["missing_share"] = {k: round(v, 4) for k, v in missing.items() if v}
    too_missing = {k: v for k, v in missing.items() if v > policy.max_missing_share}
    if too_missing:
        failures.append(
            "missing values above "
            f"{policy.max_missing_share:.0%}: "
            + ", ".join(f"{k} {v:.1%}" for k, v in sorted(too_missing.items()))
        )
    if drift_share is not None:
        details |= {"drift_share": round(drift_share, 4), "drifted_columns": drifted}
        if drift_share > policy.max_drift_share:
            failures.append(
                f"{drift_share:.0%} of columns drifted against the champion's training data "
                f"(limit {policy.max_drift_share:.0%}): {', '.join(drifted)}"
            )
    if failures:
        return GateResult("training-data", False, "; ".join(failures), details)
    reason = f"missing values within {policy.max_missing_share:.0%} per column"
    reason += (
        f"; drift share {drift_share:.0%} against the champion's training data"
        if drift_share is not None
        else "; no champion: no drift reference"
    )
    return GateResult("training-data", True, reason, details)


# integration ------------------------------------------------------------------------------------
def _wrong_answers(answers: np.ndarray, rows: int, kind: str, classes: list[Any]) -> str | None:
    """Why ``answers`` are not what a ``kind`` model owes for ``rows`` rows, or None."""
    if answers.ndim == 2 and answers.shape[1] == 1:
        answers = answers[:, 0]
    sample = repr(answers[:5])
    if answers.ndim != 1 or len(answers) != rows:
        return f"answers are not one value per row ({rows} rows, answers of shape {answers.shape})"
    numeric = np.issubdtype(answers.dtype, np.number) or answers.dtype == np.bool_
    values = answers.astype(float) if numeric else np.array([np.nan])
    note = ""
    if kind == "regression":
        ok, owed = bool(np.isfinite(values).all()), "one finite number"
    elif kind == "binary":
        ok, owed = bool(np.isin(values, (0, 1)).all()), "one 0/1 label"
    else:
        ok = bool(np.isin(values, np.arange(len(classes))).all())
        owed, note = f"one class index in 0..{len(classes) - 1}", f" (classes {classes})"
    return None if ok else f"answers are not {owed} per row{note}: {sample}"


def check_model_contract(
    model_folder: Path, holdout: pd.DataFrame, problem: Problem | None = None
) -> GateResult:
    """Gate: the model in ``model_folder`` (verified by the caller), loaded back through MLflow's
    pyfunc flavour, answers a batch of ``holdout`` matching its signature as its problem type
    asks, and refuses one that does not.

    The type is the model's own MLmodel metadata (``PROBLEM_METADATA``), which the server
    answers by: binary labels in {0, 1}; multiclass integer labels in ``range(len(classes))``;
    regression one finite number per row. Given the pipeline's ``problem``, the metadata must
    agree with it.
    """
    import mlflow.pyfunc  # slow to import, and only this gate needs it

    model = mlflow.pyfunc.load_model(str(model_folder))
    schema = model.metadata.get_input_schema()
    if schema is None:
        return GateResult("model-contract", False, "the model has no input signature")
    declared = (model.metadata.metadata or {}).get(PROBLEM_METADATA)
    if not isinstance(declared, dict) or declared.get("type") not in PROBLEM_TYPES:
        return GateResult(
            "model-contract",
            False,
            f"the model's MLmodel metadata does not say its problem type "
            f"({PROBLEM_METADATA}: {declared!r})",
        )
    kind, classes = str(declared["type"]), list(declared.get("classes") or [])
    if kind != "regression" and len(classes) < 2:
        return GateResult(
            "model-contract", False, f"the {kind} model's metadata lists no classes: {declared!r}"
        )
    if problem is not None and (kind, classes) != (problem.kind, list(problem.classes)):
        return GateResult(
            "model-contract",
            False,
            f"the model says it is {kind} with classes {classes}; the pipeline's target "
            f"{problem.column!r} is {problem.kind} with classes {list(problem.classes)}",
        )
    columns = schema.input_names()
    batch = holdout[columns].head(50)
    try:
        answers = np.asarray(model.predict(batch))
    except Exception as exc:  # any failure here is the finding
        return GateResult("model-contract", False, f"a batch matching the signature failed: {exc}")
    wrong = _wrong_answers(answers, len(batch), kind, classes)
    if wrong:
        return GateResult("model-contract", False, wrong, {"problem": kind})
    try:
        model.predict(batch.drop(columns=[columns[0]]))
    except Exception:
        return GateResult(
            "model-contract",
            True,
            f"answers {len(batch)} rows through pyfunc as a {kind} model; refuses a batch "
            f"without {columns[0]!r}",
            {"columns": columns, "problem": kind, "classes": classes},
        )
    return GateResult(
        "model-contract", False, f"accepted a batch without the required column {columns[0]!r}"
    )
