"""Feature-attribution drift: has each feature's influence on the champion's answers moved?

A feature's influence on a set of rows is its mean absolute attribution there
(``mlops.core.explanations``: Tree SHAP, exact linear attributions), as SageMaker Clarify and
Vertex AI monitor it. The window's rows and the champion's training rows are sampled (seeded) and
explained within a time budget; a feature's *shift* is the change of its influence as a share of
the model's total influence on the training rows (0.1: the feature gained or lost a tenth of what
drives the answers), so one limit reads alike for any model and output space.

It moves where the inputs move under the model even when no column's own distribution does: two
columns that went together in training and no longer do (a join gone wrong, a pipeline that
shuffles one column) leave every column's drift test quiet, while the model, which learnt from
them together, answers from other paths. A feature moves when its shift is beyond the policy's
limit *and* a Mann-Whitney U test of the rows' absolute attributions, corrected across the
features as the column drift tests are (``mlops.ml.drift.corrected``), says the change is not
the sample's noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlops.core.explanations import NotExplainable, baseline_of, explainer_for
from mlops.core.frames import canonical_order
from mlops.core.policy import MonitoringPolicy
from mlops.ml.drift import corrected
from mlops.ml.explanations import absolute_attributions
from mlops.ml.problems import Problem

#: Training rows the explainer checks its attributions add up on.
PROBE_ROWS = 20


@dataclass(frozen=True)
class Influence:
    """One feature's influence on the training rows and on the window's."""

    feature: str
    reference: float  # mean |attribution| on the training rows, in the explanation's space
    window: float
    shift: float  # (window - reference) / the model's total influence on the training rows
    p_value: float  # Mann-Whitney U of the rows' |attributions|, corrected across the features
    moved: bool


@dataclass(frozen=True)
class AttributionDrift:
    judged: bool
    detected: bool
    reason: str
    limit: float | None = None
    method: str = ""  # the explainer's: tree_shap or linear
    space: str = ""  # what an attribution is in: log_odds, probability, value...
    rows: int = 0  # window rows explained
    reference_rows: int = 0  # training rows explained
    influences: list[Influence] = field(default_factory=list)  # largest shift first

    @property
    def moved(self) -> list[str]:
        return sorted(i.feature for i in self.influences if i.moved)

    def line(self) -> str:
        """The verdict in one line, for reports."""
        if not self.judged:
            return f"not judged: {self.reason}"
        return ("DETECTED: " if self.detected else "none: ") + self.reason


def attribution_drift(
    model: Any,
    window: pd.DataFrame,
    reference: pd.DataFrame,
    features: list[str],
    problem: Problem,
    policy: MonitoringPolicy,
    seed: int = 0,
) -> AttributionDrift:
    """Each feature's influence on ``model``'s answers for the ``window``'s rows against on the
    ``reference`` (its training rows), under ``policy.attribution`` (module docstring)."""
    objective = policy.attribution
    if objective is None:
        return AttributionDrift(False, False, "not checked (monitoring.attribution is not set)")
    limit = objective.max_shift
    if len(window) < policy.min_rows:
        return AttributionDrift(
            False, False, f"{len(window)} rows: too small to judge (needs {policy.min_rows})",
            limit,
        )  # fmt: skip
    absent = [c for c in features if c not in window or c not in reference]
    if absent:
        return AttributionDrift(
            False, False, f"feature column(s) {absent} missing: the model cannot be explained",
            limit,
        )  # fmt: skip
    ref_rows = reference[features].sample(min(objective.rows, len(reference)), random_state=seed)
    # the same window's rows, however they arrived, give the same sample
    cur_rows = canonical_order(window[features]).sample(
        min(objective.rows, len(window)), random_state=seed
    )
    try:
        explainer = explainer_for(
            model, features, problem.kind, problem.classes, ref_rows.head(PROBE_ROWS),
            baseline_of(model, reference[features]),
        )  # fmt: skip
        ref = absolute_attributions(explainer, ref_rows, objective.budget_seconds)
        cur = absolute_attributions(explainer, cur_rows, objective.budget_seconds)
    except NotExplainable as exc:
        return AttributionDrift(False, False, f"the model has no explainer: {exc}", limit)
    except Exception as exc:  # a window's rows the model cannot transform: reported, not raised
        why = f"the window's rows could not be explained: {type(exc).__name__}: {exc!s:.300}"
        return AttributionDrift(False, False, why, limit)
    influences = _influences(explainer.features, ref, cur, policy, limit)
    detected = any(i.moved for i in influences)
    return AttributionDrift(
        True,
        detected,
        _reason(influences, limit, explainer.space, len(cur), len(ref), explainer.method),
        limit,
        explainer.method,
        explainer.space,
        len(cur),
        len(ref),
        influences,
    )


def _influences(
    features: tuple[str, ...],
    ref: np.ndarray,
    cur: np.ndarray,
    policy: MonitoringPolicy,
    limit: float | None,
) -> list[Influence]:
    from scipy.stats import mannwhitneyu

    before, now = ref.mean(axis=0), cur.mean(axis=0)
    total = float(before.sum())
    shifts = (now - before) / total if total > 0 else np.zeros(len(features))
    pvalues = []
    for j in range(len(features)):
        if np.ptp(ref[:, j]) == 0 and np.ptp(cur[:, j]) == 0 and ref[0, j] == cur[0, j]:
            pvalues.append(1.0)  # one constant on both sides: nothing to test, nothing moved
        else:
            pvalues.append(float(mannwhitneyu(ref[:, j], cur[:, j]).pvalue))
    adjusted = corrected(pvalues, policy.drift_correction)
    out = []
    for f, b, n, s, p in zip(features, before, now, shifts, adjusted, strict=True):
        moved = limit is not None and abs(s) > limit and p < policy.drift_alpha
        out.append(
            Influence(f, round(float(b), 6), round(float(n), 6), round(float(s), 6), p, moved)
        )
    return sorted(out, key=lambda i: (-abs(i.shift), i.feature))


def _reason(
    influences: list[Influence],
    limit: float | None,
    space: str,
    rows: int,
    reference_rows: int,
    method: str,
) -> str:
    top = influences[:3]
    described = ", ".join(
        f"{i.feature} {i.reference:.3g} -> {i.window:.3g} ({i.shift:+.3f}; p {i.p_value:.2g})"
        for i in top
    )
    moved = [i.feature for i in influences if i.moved]
    head = f"the influence of {', '.join(moved)} moved" if moved else "no feature's influence moved"
    bound = (
        f"limit {limit:.3f} of the total"
        if limit is not None
        else "reported only (monitoring.attribution.max_shift is not set)"
    )
    return (
        f"{head}; largest shifts: {described} (mean |{method} attribution| in {space}, on "
        f"{rows} window and {reference_rows} training rows); {bound}"
    )
