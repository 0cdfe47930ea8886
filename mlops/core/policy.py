"""The versioned policy: what a model must achieve before it may serve, and how it is released."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlops.core.config import load_yaml_model
from mlops.core.errors import ConfigError
from mlops.core.metrics import DEFAULT_METRIC, KNOWN_METRICS, ProblemType, check_metric


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs `min` or `max`")
        return self

    def passes(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


#: The fairness limits that judge each problem type, and their values where a policy leaves them
#: out. A classifier's limits are gaps between groups' rates (0 to 1); a regression's are gaps
#: between groups' means divided by the holdout target's standard deviation, so that one policy
#: reads the same on prices and on ages.
FAIRNESS_LIMITS: dict[ProblemType, dict[str, float]] = {
    "binary": {
        "max_demographic_parity_difference": 0.2,
        "max_equal_opportunity_difference": 0.2,
    },
    "multiclass": {"max_selection_rate_difference": 0.2, "max_error_rate_difference": 0.15},
    "regression": {"max_mean_error_difference": 0.25, "max_mean_prediction_difference": 0.5},
}


class FairnessPolicy(_Strict):
    """Group fairness on the holdout (fairlearn), over each ``sensitive`` column.

    Each problem type has its own limits (``FAIRNESS_LIMITS``): a limit left out (or null) takes
    the type's default; a limit of another type is refused (``limits``, ``Policy.for_problem``).
    """

    sensitive: tuple[str, ...] = ()
    max_demographic_parity_difference: float | None = Field(
        None, ge=0, le=1, description="Binary: largest gap in selection rate between groups."
    )
    max_equal_opportunity_difference: float | None = Field(
        None, ge=0, le=1, description="Binary: largest gap in true-positive rate between groups."
    )
    max_selection_rate_difference: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Multiclass: largest gap of any one class's selection rate between groups.",
    )
    max_error_rate_difference: float | None = Field(
        None, ge=0, le=1, description="Multiclass: largest gap in error rate (1 - accuracy)."
    )
    max_mean_error_difference: float | None = Field(
        None,
        ge=0,
        description="Regression: largest gap in mean error (prediction - truth) between groups, "
        "in standard deviations of the holdout target.",
    )
    max_mean_prediction_difference: float | None = Field(
        None,
        ge=0,
        description="Regression: largest gap in mean prediction between groups, in standard "
        "deviations of the holdout target.",
    )
    min_group_size: int = Field(
        100, ge=1, description="Groups smaller than this in the holdout are reported, not judged."
    )

    def misfits(self, problem: ProblemType) -> list[str]:
        """Why each limit this policy sets does not judge a ``problem`` (empty when all do)."""
        applies = FAIRNESS_LIMITS[problem]
        found = []
        for limits in FAIRNESS_LIMITS.values():
            for name in limits:
                if name not in applies and getattr(self, name) is not None:
                    kinds = [p for p, named in FAIRNESS_LIMITS.items() if name in named]
                    found.append(
                        f"fairness.{name}: does not apply to a {problem} problem (it applies to "
                        f"{', '.join(kinds)}); use {', '.join(applies)}"
                    )
        return found

    def limits(self, problem: ProblemType) -> dict[str, float]:
        """The limits that judge a ``problem``, by field: as set, else the type's defaults. A
        limit of another problem type is a ConfigError naming it."""
        misfits = self.misfits(problem)
        if misfits:
            raise ConfigError("; ".join(misfits))
        values = {name: getattr(self, name) for name in FAIRNESS_LIMITS[problem]}
        return {
            name: default if values[name] is None else float(values[name])
            for name, default in FAIRNESS_LIMITS[problem].items()
        }


class ComparisonPolicy(_Strict):
    """How a challenger is compared with the champion on the same holdout."""

    metric: str = Field(
        "roc_auc", description="Left out, the problem type's default (mlops.core.metrics)."
    )
    margin: float = Field(
        0.005, ge=0, description="How much worse than the champion a challenger may score."
    )
    bootstrap_samples: int = Field(500, ge=50)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0


class ReplayPolicy(_Strict):
    """The replay gate: the challenger scores the rows the champion answered in production
    (the prediction log) and is compared with the champion's real answers on the labelled ones,
    by the champion comparison's paired test, metric, margin and confidence."""

    enabled: bool = True
    lookback_hours: float = Field(
        168.0, gt=0, description="How far back the replayed rows of the prediction log reach."
    )
    min_labelled_rows: int = Field(
        200,
        ge=20,
        description="Labelled rows the champion answered (and the challenger never trained on) "
        "below which the replay is reported, not judged.",
    )
    max_rows: int = Field(50_000, ge=100, description="Most recent rows replayed.")


class DataPolicy(_Strict):
    """What the training data must look like (checked with Evidently)."""

    max_missing_share: float = Field(0.1, ge=0, le=1, description="Per column.")
    max_drift_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of columns drifted against the champion's training data.",
    )
    sample_rows: int = Field(5000, ge=100, description="Rows per side for the drift check.")


#: The phases of a release a hook may run at (``HookPolicy``).
HOOK_PHASES = ("before-first-step", "before-traffic-increase", "before-promotion", "after-rollback")


#: What a user check's query may hold in braces, filled in per side by the metrics provider.
QUERY_PLACEHOLDERS = frozenset({"selector", "window", "offset"})


class QueryCheck(_Strict):
    """A check the user writes: a query of the target's metrics provider, asked of the candidate
    and of the stable version over the same window, and a limit.

    In the query, ``{selector}`` becomes the label matchers of the side asked (Prometheus: e.g.
    ``model="adult-income",version="3"``; CloudWatch: the dimensions), ``{window}`` the window
    (``30s``) and ``{offset}`` how long ago it ended (`` offset 30s``, or nothing; write it after
    the range: ``rate(x{{selector}}[{window}]{offset})``). Limits: ``max`` / ``min`` on the candidate's value; ``max_ratio`` /
    ``max_increase`` on the candidate against the stable version (a canary-versus-stable
    comparison, not an absolute threshold). An empty answer is inconclusive, never a pass."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    query: str = Field(min_length=1)
    max: float | None = None
    min: float | None = None
    max_ratio: float | None = Field(None, gt=0)
    max_increase: float | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> QueryCheck:
        if all(v is None for v in (self.max, self.min, self.max_ratio, self.max_increase)):
            raise ValueError(
                f"check {self.name!r} needs a limit: max, min, max_ratio or max_increase"
            )
        if "{selector}" not in self.query:
            raise ValueError(
                f"check {self.name!r}: the query must hold {{selector}}, where the side's label "
                "matchers go (else both sides ask the same thing)"
            )
        unknown = sorted(set(re.findall(r"\{([A-Za-z_]\w*)\}", self.query)) - QUERY_PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"check {self.name!r}: unknown placeholder(s) "
                + ", ".join(f"{{{u}}}" for u in unknown)
                + " in the query: it may hold {selector}, {window} and {offset}"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"check {self.name!r}: min {self.min:g} is above max {self.max:g}: no value passes"
            )
        return self


class HookPolicy(_Strict):
    """A gate between release steps: a person's confirmation (``manual``: the flow run pauses
    with a form in the Prefect UI) or an HTTP ``webhook`` (POSTed the release's state as JSON; a
    2xx answer lets the step go on, anything else refuses it). At ``after-rollback`` a hook is
    told, and cannot refuse."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    phase: Literal[
        "before-first-step", "before-traffic-increase", "before-promotion", "after-rollback"
    ]
    kind: Literal["manual", "webhook"]
    url: str | None = Field(None, description="webhook: where to POST.")
    timeout_seconds: float = Field(
        600, gt=0, description="manual: how long to wait for an answer; webhook: for a response."
    )

    @model_validator(mode="after")
    def _url(self) -> HookPolicy:
        if self.kind == "webhook" and not self.url:
            raise ValueError(f"hook {self.name!r}: a webhook needs `url`")
        if self.kind == "manual" and self.url:
            raise ValueError(f"hook {self.name!r}: a manual hook takes no `url`")
        if self.kind == "manual" and self.phase == "after-rollback":
            raise ValueError(
                f"hook {self.name!r}: after-rollback hooks are told, not asked; a manual hook "
                "there has nothing to answer (use a webhook)"
            )
        return self


class ReleasePolicy(_Strict):
    """How a validated version goes live, and what makes it roll back by itself.

    Each step is judged by analysis (``mlops.release.analysis``): every ``analysis_interval_seconds``
    the built-in checks (error rate, latency, predictions) and the user's ``checks`` compare the
    candidate with the stable version over the step so far. A check passes, fails, or is
    inconclusive (too few requests, an empty query); ``failure_limit`` failed analyses are
    tolerated, the next rolls back; a step that ends inconclusive does ``on_inconclusive``."""

    strategy: Literal["blue-green", "canary", "shadow"] = "canary"
    target: Literal["local", "kserve", "seldon", "gitops", "lambda"] = Field(
        "local",
        description="Where it runs (targets/): the local router, KServe, Seldon Core 2, GitOps, "
        "Lambda.",
    )
    canary_steps: tuple[int, ...] = (5, 25, 50, 100)
    bake_seconds: float = Field(
        60,
        gt=0,
        description="Per canary step; the shadow and blue-green watch (a watch of no time has "
        "no evidence: every release beside a stable version would end inconclusive).",
    )
    analysis_interval_seconds: float = Field(1.0, gt=0, le=30)
    end_on_evidence: bool = Field(
        False,
        description="A step (and the bake) passes at the first analysis in which every check "
        "passes, each on at least min_requests candidate requests, instead of at bake_seconds, "
        "which stays the deadline of a step still inconclusive. The tests judge the same "
        "evidence either way; what a fixed bake adds is time, which faults that grow slowly (a "
        "leak, a cache going cold) need: production policies leave this off.",
    )
    ready_timeout_seconds: float = Field(120, gt=0)
    warmup_requests: int = Field(
        100, ge=0, description="Single-row requests sent to the candidate before it takes traffic."
    )
    min_requests: int = Field(
        100,
        ge=0,
        description="Candidate requests a step needs before latency and predictions are compared "
        "(a p99 of fewer than 100 requests is their maximum, which is noise).",
    )
    max_error_rate_increase: float = Field(
        0.01, ge=0, le=1, description="Candidate 5xx share over the champion's."
    )
    max_p99_latency_ratio: float = Field(2.0, ge=1)
    latency_slack_ms: float = Field(
        25, ge=0, description="p99 differences below this are never a breach (noise)."
    )
    max_prediction_shift: float = Field(
        0.15,
        ge=0,
        le=1,
        description="How far the candidate's predictions may lie from the champion's (or from "
        "those expected): the largest difference of one class's share (classifiers; of two "
        "classes, the change of the positive share), the Kolmogorov-Smirnov distance of the "
        "predicted values' histograms (regression). mlops.release.canary.judge.",
    )

    failure_limit: int = Field(
        0, ge=0, description="Failed analyses tolerated in a step; the next one rolls back."
    )
    on_inconclusive: Literal["extend", "hold", "rollback"] = Field(
        "extend",
        description="What a step (or the bake) that ends without enough evidence does: extend "
        "it by bake_seconds (up to max_extensions times, then roll back), hold (pause for a "
        "person's answer in the Prefect UI, up to hold_timeout_seconds, then roll back), or roll "
        "back. Never a silent pass.",
    )
    max_extensions: int = Field(3, ge=0)
    hold_timeout_seconds: float = Field(3600, gt=0)
    error_significance: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="How unlikely the candidate's errors must be, were its error rate the "
        "stable version's plus max_error_rate_increase, to fail it (one-sided binomial test): "
        "three errors in three requests fail a step, one in a hundred does not.",
    )
    bake_after_promotion_seconds: float = Field(
        0,
        ge=0,
        description="After promotion the previous version stays ready this long while the "
        "checks go on against its figures from the last step; a breach rolls back to it.",
    )
    checks: tuple[QueryCheck, ...] = ()
    hooks: tuple[HookPolicy, ...] = ()

    @field_validator("checks", "hooks")
    @classmethod
    def _unique_names(
        cls, items: tuple[QueryCheck, ...] | tuple[HookPolicy, ...]
    ) -> tuple[QueryCheck, ...] | tuple[HookPolicy, ...]:
        names = [i.name for i in items]
        if len(names) != len(set(names)):
            raise ValueError(f"names must be unique: {names}")
        return items

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, steps: tuple[int, ...]) -> tuple[int, ...]:
        if not steps or list(steps) != sorted(set(steps)) or steps[-1] != 100 or steps[0] <= 0:
            raise ValueError("canary_steps must rise strictly from above 0 and end at 100")
        return steps


class SkewObjective(_Strict):
    """Training-serving skew: a window's features against the champion's training data."""

    max_share: float = Field(
        0.1, ge=0, le=1, description="Share of columns skewed above which drift is detected."
    )


class DriftObjective(_Strict):
    """Drift: a window's features against the production rows logged before it (the recent
    windows), as Vertex AI's model monitoring separates it from skew."""

    max_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Share of columns drifted against the recent production rows above which "
        "drift is detected. None: reported only, and skew decides.",
    )
    lookback_hours: float = Field(
        24.0,
        gt=0,
        description="How far before the window the recent production rows reach (the most "
        "recent reference_rows of them are judged against; fewer than min_rows: not judged).",
    )


class AttributionObjective(_Strict):
    """Feature-attribution drift: each feature's influence on the champion's answers in a window
    (its mean absolute attribution, ``mlops.core.explanations``) against on its training data.
    It moves where the joint distribution of the inputs moves under the model even when every
    column's own distribution stays."""

    max_shift: float | None = Field(
        None,
        gt=0,
        description="How far one feature's influence may move, as a share of the model's total "
        "influence on the training data, before drift is detected (0.1: by a tenth of it). "
        "None: reported only.",
    )
    rows: int = Field(
        300, ge=50, le=5000, description="Rows explained on each side (sampled, seeded)."
    )
    budget_seconds: float = Field(
        5.0,
        gt=0,
        description="Time each side's explaining may take; the rows explained by then are judged "
        "(Tree SHAP of a deep random forest costs ~0.1 s a row).",
    )


class MonitoringPolicy(_Strict):
    """What production data may do before the model is retrained (checked on each window)."""

    min_rows: int = Field(
        1000,
        ge=50,
        description="A window with fewer predicted rows is reported as too small to judge and "
        "keeps accumulating (on 300-row samples of unshifted Adult data Evidently already flags "
        "one to three columns; on 1000 rows none).",
    )
    max_rows: int = Field(50_000, ge=100, description="Most recent rows of a window judged.")
    reference_rows: int = Field(
        20_000,
        ge=1000,
        description="Rows of the training data (skew) or of the recent production (drift) a "
        "window is judged against.",
    )
    skew: SkewObjective = Field(default_factory=SkewObjective)
    drift: DriftObjective = Field(default_factory=DriftObjective)
    attribution: AttributionObjective | None = Field(
        None, description="Feature-attribution drift; None: not checked (it explains rows)."
    )
    drift_decision: Literal["evidently", "corrected"] = Field(
        "corrected",
        description="How a column's drift is decided: Evidently's test alone, or Evidently's "
        "test confirmed by a two-sample significance test corrected across the columns "
        "(mlops.ml.drift.DriftRule), whose false alarms do not grow with the window's size.",
    )
    drift_correction: Literal["benjamini-hochberg", "bonferroni"] = Field(
        "benjamini-hochberg",
        description="The correction for testing every column at once (drift_decision: corrected).",
    )
    drift_alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="The corrected significance level (drift_decision: corrected).",
    )
    min_labelled_rows: int = Field(
        200, ge=10, description="Labelled rows a window needs before live performance is judged."
    )
    performance_metric: str = Field(
        "roc_auc", description="Left out, the problem type's default (mlops.core.metrics)."
    )
    max_metric_drop: float = Field(
        0.05,
        ge=0,
        description="Live metric worse than the champion's holdout figure by more (in the "
        "metric's own units: rmse and mae are in the target's, so no upper bound).",
    )
    max_prediction_shift: float | None = Field(
        None,
        ge=0,
        le=1,
        description="How far the serving model's predictions in a window may move from its own on "
        "the holdout before drift is detected: the total variation distance of the predicted "
        "class shares (classifiers), the Kolmogorov-Smirnov distance of the predicted values "
        "(regression). None: the shift is reported, and only the feature drift share decides.",
    )

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: object) -> object:
        if isinstance(data, dict) and "max_drift_share" in data:
            raise ValueError(
                "`max_drift_share` is now `skew: {max_share: ...}` (the window against the "
                "training data); `drift: {max_share: ...}` judges it against the recent "
                "production rows"
            )
        return data


class Policy(_Strict):
    """A versioned policy file; its ``version`` is recorded on every model it judged."""

    version: int = Field(ge=1)
    metrics: dict[str, Threshold]
    comparison: ComparisonPolicy = ComparisonPolicy()
    replay: ReplayPolicy = ReplayPolicy()
    fairness: FairnessPolicy = FairnessPolicy()
    data: DataPolicy = DataPolicy()
    release: ReleasePolicy = ReleasePolicy()
    monitoring: MonitoringPolicy = MonitoringPolicy()
    require_approval: bool = False
    approval_timeout_seconds: int = Field(3600, ge=1)

    @model_validator(mode="after")
    def _known_metrics(self) -> Policy:
        unknown = sorted(set(self.metrics) - set(KNOWN_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(KNOWN_METRICS)}")
        if self.monitoring.performance_metric not in KNOWN_METRICS:
            raise ValueError(
                f"monitoring.performance_metric {self.monitoring.performance_metric!r} is unknown; "
                f"known: {sorted(KNOWN_METRICS)}"
            )
        if self.comparison.metric not in KNOWN_METRICS:
            raise ValueError(
                f"comparison.metric {self.comparison.metric!r} is unknown; known: {sorted(KNOWN_METRICS)}"
            )
        return self

    def for_problem(self, problem: ProblemType) -> Policy:
        """This policy for a ``problem``: the metrics and fairness limits it leaves out become
        the problem's defaults, and every metric and limit it names must apply to the problem (a
        ConfigError lists each that does not)."""
        default = DEFAULT_METRIC[problem]
        comparison, monitoring = self.comparison, self.monitoring
        if "metric" not in comparison.model_fields_set:
            comparison = comparison.model_copy(update={"metric": default})
        if "performance_metric" not in monitoring.model_fields_set:
            monitoring = monitoring.model_copy(update={"performance_metric": default})
        problems = [
            check_metric(name, problem, where)
            for name, where in (
                *((n, f"metrics.{n}") for n in self.metrics),
                (comparison.metric, "comparison.metric"),
                (monitoring.performance_metric, "monitoring.performance_metric"),
            )
        ]
        found = [p for p in problems if p] + self.fairness.misfits(problem)
        if found:
            raise ConfigError("; ".join(found))
        fairness = self.fairness.model_copy(update=self.fairness.limits(problem))
        return self.model_copy(
            update={"comparison": comparison, "monitoring": monitoring, "fairness": fairness}
        )

    def check_metrics(self, metrics: dict[str, float]) -> dict[str, bool]:
        """Which thresholds the given holdout metrics pass, by metric name."""
        return {name: t.passes(metrics[name]) for name, t in self.metrics.items()}


def load_policy(
    path: Path, columns: set[str] | None = None, problem: ProblemType | None = None
) -> tuple[Policy, str]:
    """Load a policy and its content digest; refuse sensitive columns the dataset does not have
    and, given the ``problem``, metrics that do not apply to it (``Policy.for_problem``)."""
    policy = load_yaml_model(path, Policy)
    if problem is not None:
        try:
            policy = policy.for_problem(problem)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc} (the pipeline's target is {problem})") from None
    if columns is not None:
        missing = sorted(set(policy.fairness.sensitive) - columns)
        if missing:
            raise ConfigError(
                f"{path}: fairness.sensitive names {missing}, which are not features of the "
                "pipeline (the fairness gate judges the holdout, which holds the features)"
            )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return policy, digest
