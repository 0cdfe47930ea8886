"""The replay gate: before a challenger is released, it answers the rows the champion answered in
production (the prediction log's recent windows), and on the labelled ones its answers are
compared with the champion's real answers (what callers got, as logged: not the champion
predicted again) by the paired bootstrap the champion comparison uses (``gates.paired_comparison``:
its metric, margin and confidence). A challenger that would have done worse on real traffic
fails the gate, so the release refuses it before any caller sees it.

Rows the challenger trained on are left out (retraining trains on production rows: judging it on
them would favour it, as ``gates.unseen_rows`` keeps the champion from its own training rows).
The gate also says how many answers would change, and in which groups of the policy's
sensitive columns. Without a champion, a log, or enough labelled rows it is reported, not
judged, and passes.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd

from mlops.core.metrics import REGISTRY
from mlops.core.policy import Policy
from mlops.ml.gates import GateResult, paired_comparison, unseen_rows
from mlops.ml.monitoring import logged_probabilities, read_answers, served_by
from mlops.ml.problems import Model, Predictions, Problem

GATE = "replay"
#: Groups named per sensitive column in the reason and the details (most changed answers first).
TOP_GROUPS = 5
#: A regression's answer counts as changed when it moves by more than this share of the labels'
#: standard deviation.
VALUE_CHANGE = 0.1


def check_replay(
    challenger: Model,
    rows: pd.DataFrame,
    champion: int | None,
    problem: Problem,
    features: list[str],
    policy: Policy,
    challenger_training: pd.DataFrame | None = None,
) -> GateResult:
    """Gate: ``challenger`` is not worse than champion v``champion``'s logged answers to the
    labelled production ``rows`` (the prediction log's, with their labels) beyond the comparison
    margin (module docstring)."""
    replay = policy.replay
    if not replay.enabled:
        return GateResult(GATE, True, "off (replay.enabled is false)")
    if champion is None:
        return GateResult(GATE, True, "no champion yet: no production answers to replay")
    served = served_by(rows, champion)
    labelled = served[served["label"].notna()] if "label" in served else served.iloc[0:0]
    span = f"in the last {replay.lookback_hours:g} h"
    counts: dict[str, Any] = {"answered": len(served), "labelled": len(labelled)}
    missing = [c for c in features if c not in labelled]
    if missing and len(labelled):
        return GateResult(
            GATE, True, f"not judged: the prediction log lacks feature column(s) {missing}", counts
        )
    if challenger_training is not None and len(labelled):
        unseen = unseen_rows(labelled[features], challenger_training[features])
        counts["trained_on"] = len(labelled) - len(unseen)
        labelled = labelled.loc[unseen.index]
    y, bad_label = read_answers(labelled["label"], problem) if len(labelled) else _none()
    old_values, bad_answer = read_answers(labelled["prediction"], problem) if len(labelled) else _none()  # fmt: skip
    keep = ~(bad_label | bad_answer)
    labelled, y, old_values = labelled[keep], y[keep], old_values[keep]
    counts["replayed"] = len(labelled)
    where = (
        f"champion v{champion}'s answers to {len(labelled)} labelled production rows {span} "
        f"(of {counts['answered']} it answered"
        + (f"; {counts['trained_on']} the challenger trained on left out" if counts.get("trained_on") else "")
        + ")"
    )  # fmt: skip
    if len(labelled) < replay.min_labelled_rows:
        return GateResult(
            GATE, True, f"not judged: {where}, fewer than {replay.min_labelled_rows}", counts
        )
    proba = logged_probabilities(labelled, problem)
    if (
        problem.is_classifier
        and proba is None
        and REGISTRY[policy.comparison.metric].reads == "proba"
    ):
        return GateResult(
            GATE, True,
            f"not judged: the log holds no class probabilities for {where}; "
            f"{policy.comparison.metric} reads them",
            counts,
        )  # fmt: skip
    old = Predictions(old_values.astype("int64") if problem.is_classifier else old_values, proba)
    new = problem.predict(challenger, labelled[features])
    verdict = paired_comparison(new, old, y, problem, policy.comparison, where, GATE)
    changed, groups = _changes(new, old, y, labelled, problem, policy.fairness.sensitive)
    said = f"{int(changed.sum())} of {len(changed)} answers would change ({changed.mean():.1%})"
    busiest = [
        f"{column}={g['group']} ({g['changed']} of {g['rows']})"
        for column, listed in groups.items()
        for g in listed[:1]
        if g["changed"]
    ]
    if busiest:
        said += ", most in " + ", ".join(busiest)
    details = verdict.details | counts | {"changed": int(changed.sum()), "groups": groups}
    return GateResult(GATE, verdict.passed, f"{verdict.reason}; {said}", details)


def _none() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0), np.zeros(0, dtype=bool)


def _changes(
    new: Predictions,
    old: Predictions,
    y: np.ndarray,
    rows: pd.DataFrame,
    problem: Problem,
    sensitive: tuple[str, ...],
) -> tuple[np.ndarray, dict[str, list[dict[str, Any]]]]:
    """Which answers the challenger would change, and per sensitive column the groups with the
    most changed answers."""
    if problem.is_classifier:
        changed = np.asarray(new.values) != np.asarray(old.values)
    else:
        spread = float(np.std(y)) or 1.0
        changed = np.abs(np.asarray(new.values) - np.asarray(old.values)) > VALUE_CHANGE * spread
    groups: dict[str, list[dict[str, Any]]] = {}
    for column in sensitive:
        if column not in rows:
            continue
        table = (
            pd.DataFrame({"group": rows[column].astype(str).to_numpy(), "changed": changed})
            .groupby("group")["changed"]
            .agg(["size", "sum"])
            .sort_values(["sum", "size"], ascending=False)
        )
        groups[column] = [
            {"group": str(g), "rows": int(r["size"]), "changed": int(r["sum"])}
            for g, r in cast(Any, table).head(TOP_GROUPS).iterrows()
        ]
    return changed, groups
