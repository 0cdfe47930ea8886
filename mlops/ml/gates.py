"""Validation gates: what a challenger must pass before it may replace the champion.

Each gate is a plain function returning a typed ``GateResult`` (with a human reason and the
figures behind it), wrapped by a task of the same name (``tasks.gates``); the promotion flow
collects them and decides. A gate judges what it is given: fetching a model is the task's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equal_opportunity_difference,
    selection_rate,
    true_positive_rate,
)

from mlops.core.metrics import KNOWN_METRICS
from mlops.core.policy import ComparisonPolicy, DataPolicy, FairnessPolicy, Policy
from mlops.ml.drift import drift_tests
from mlops.ml.problems import Model, Problem


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
def check_metric_thresholds(metrics: dict[str, float], policy: Policy) -> GateResult:
    """Gate: every holdout metric the policy names meets its threshold."""
    failures = []
    for name, threshold in policy.metrics.items():
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} was not measured")
        elif not threshold.passes(value):
            bound = f">= {threshold.min}" if threshold.min is not None else f"<= {threshold.max}"
            failures.append(f"{name} {value:.4f} is not {bound}")
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
    """Paired bootstrap of (challenger - champion) on the same holdout rows.

    The challenger passes unless the interval's upper end lies below ``-margin`` (it is worse
    beyond the margin at the confidence level). A difference whose interval holds zero is a tie.
    """
    metric = policy.metric
    if champion is None:
        return GateResult(
            "champion-vs-challenger", True, "no champion yet: nothing to beat", {"metric": metric}
        )
    new, old = problem.predict(challenger, X), problem.predict(champion, X)
    sign = 1.0 if KNOWN_METRICS[metric] == "higher" else -1.0

    def difference(idx: np.ndarray | None = None) -> float:
        a, b, truth = (new, old, y) if idx is None else (new.take(idx), old.take(idx), y[idx])
        return sign * (problem.score(metric, truth, a) - problem.score(metric, truth, b))

    observed = difference()
    rng = np.random.default_rng(policy.seed)
    diffs = []
    n = len(y)
    for _ in range(policy.bootstrap_samples):
        idx = rng.integers(0, n, n)
        try:
            diffs.append(difference(idx))
        except ValueError:
            continue  # undefined on this resample (a ROC AUC of one class): not counted
    alpha = (1 - policy.confidence) / 2
    lo, hi = (float(v) for v in np.quantile(diffs, [alpha, 1 - alpha]))
    details = {
        "metric": metric,
        "difference": round(observed, 5),
        "interval": [round(lo, 5), round(hi, 5)],
        "confidence": policy.confidence,
        "margin": policy.margin,
        "samples": len(diffs),
    }
    span = f"{metric} difference {observed:+.4f} ({policy.confidence:.0%} interval {lo:+.4f} to {hi:+.4f})"
    if hi < -policy.margin:
        return GateResult(
            "champion-vs-challenger",
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
def check_fairness(
    model: Model, holdout: pd.DataFrame, problem: Problem, policy: FairnessPolicy
) -> GateResult:
    """Gate: demographic parity and equal opportunity differences per sensitive column
    (fairlearn) stay within the policy's limits.

    Groups smaller than ``min_group_size`` are listed in the details but left out of the
    differences: their rates are too noisy to judge a model by.
    """
    frame = holdout.drop(columns=[problem.column])
    predictions = problem.predict(model, frame).values
    y = holdout[problem.column].to_numpy()
    failures: list[str] = []
    details: dict[str, Any] = {}
    for column in policy.sensitive:
        groups = frame[column].fillna("(missing)").astype(str)
        sizes = groups.value_counts()
        judged = sizes[sizes >= policy.min_group_size].index
        mask = groups.isin(judged).to_numpy()
        by_group = MetricFrame(
            metrics={"selection_rate": selection_rate, "true_positive_rate": true_positive_rate},
            y_true=y,
            y_pred=predictions,
            sensitive_features=groups,
        ).by_group
        details[column] = {
            "groups": {
                g: {"rows": int(sizes[g]), **{k: round(float(v), 4) for k, v in row.items()}}
                for g, row in by_group.iterrows()
            },
            "too_small": sorted(sizes[sizes < policy.min_group_size].index.tolist()),
        }
        if len(judged) < 2:
            details[column]["note"] = "fewer than two groups large enough to compare"
            continue
        dp = float(
            demographic_parity_difference(
                y[mask], predictions[mask], sensitive_features=groups[mask]
            )
        )
        eo = float(
            equal_opportunity_difference(
                y[mask], predictions[mask], sensitive_features=groups[mask]
            )
        )
        details[column] |= {
            "demographic_parity_difference": round(dp, 4),
            "equal_opportunity_difference": round(eo, 4),
        }
        rates = by_group.loc[list(judged)]
        for label, value, limit, rate in (
            (
                "demographic parity difference",
                dp,
                policy.max_demographic_parity_difference,
                "selection_rate",
            ),
            (
                "equal opportunity difference",
                eo,
                policy.max_equal_opportunity_difference,
                "true_positive_rate",
            ),
        ):
            if value > limit:
                hi, lo = rates[rate].idxmax(), rates[rate].idxmin()
                failures.append(
                    f"{label} on {column} is {value:.3f} > {limit} "
                    f"({rate.replace('_', ' ')} {hi} {rates[rate][hi]:.3f} vs {lo} {rates[rate][lo]:.3f})"
                )
    if failures:
        return GateResult("fairness", False, "; ".join(failures), details)
    summary = ", ".join(
        f"{c}: DP {d['demographic_parity_difference']:.3f}, EO {d['equal_opportunity_difference']:.3f}"
        for c, d in details.items()
        if "demographic_parity_difference" in d
    )
    return GateResult("fairness", True, summary or "no sensitive columns to judge", details)


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
def check_model_contract(model_folder: Path, holdout: pd.DataFrame) -> GateResult:
    """Gate: the model in ``model_folder`` (verified by the caller), loaded back through MLflow's
    pyfunc flavour, answers a batch of ``holdout`` matching its signature and refuses one that
    does not."""
    import mlflow.pyfunc  # slow to import, and only this gate needs it

    model = mlflow.pyfunc.load_model(str(model_folder))
    schema = model.metadata.get_input_schema()
    if schema is None:
        return GateResult("model-contract", False, "the model has no input signature")
    columns = schema.input_names()
    batch = holdout[columns].head(50)
    try:
        answers = np.asarray(model.predict(batch))
    except Exception as exc:  # any failure here is the finding
        return GateResult("model-contract", False, f"a batch matching the signature failed: {exc}")
    if len(answers) != len(batch) or not set(np.unique(answers)) <= {0, 1}:
        return GateResult(
            "model-contract", False, f"answers are not one 0/1 label per row: {answers[:5]!r}"
        )
    try:
        model.predict(batch.drop(columns=[columns[0]]))
    except Exception:
        return GateResult(
            "model-contract",
            True,
            f"answers {len(batch)} rows through pyfunc; refuses a batch without {columns[0]!r}",
            {"columns": columns},
        )
    return GateResult(
        "model-contract", False, f"accepted a batch without the required column {columns[0]!r}"
    )
