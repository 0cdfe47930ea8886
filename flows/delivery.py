"""The delivery flow, data to production in one run: train and register a version, then hand it
to the gates (``promotion``) and, if asked, on to the release.

The one composition of the stages: ``training`` (with a hand-over), ``retraining`` and the
search all come through here with the run's context, so no flow passes another's parameters
through and no subflow reads the pipeline or the policy again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect import flow

from flows.model_version import TrainingRequest, train_model_version
from flows.promotion import promotion
from mlops.adapters.registry import RegisteredVersion
from mlops.core.context import RunContext
from mlops.ml.prediction_shift import ExpectedPredictions

HandOverTo = Literal["none", "promotion", "release"]


@dataclass(frozen=True)
class HandOver:
    """What follows registration.

    Attributes:
        to: nothing; ``promotion``: the gates, then the champion alias; ``release``: the gates,
            then the release flow puts a passing version into production by the policy's
            strategy and target.
        expected_predictions: what the release expects the candidate's predictions to look like
            (a retraining passes the class shares or value quantiles of recent production
            labels); None: like the champion's.
    """

    to: HandOverTo = "none"
    expected_predictions: ExpectedPredictions | None = None


@flow(name="delivery", persist_result=True)
def delivery(
    context: RunContext, request: TrainingRequest, hand_over: HandOver
) -> RegisteredVersion:
    """Train and register a version (``request``), then hand it over as ``hand_over`` says.

    Returns:
        The registered (or reused) version. A version the gates or the release reject fails
        this flow run with their reason; the champion is then untouched.
    """
    registered = train_model_version(context, request)
    if hand_over.to != "none":
        promotion(
            version=str(registered.version),
            context=context,
            trigger=f"training ({request.trigger})",
            go_live=hand_over.to == "release",
            expected_predictions=hand_over.expected_predictions,
        )
    return registered
