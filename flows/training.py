"""The training flow: versioned data -> contract -> split -> features + model -> holdout -> MLflow
-> registry (the steps are in ``flows.model_version``); with a hand-over, through ``delivery``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.delivery import HandOver, HandOverTo, delivery
from flows.model_version import Compute, TrainingRequest, train_model_version
from mlops.adapters.registry import RegisteredVersion
from mlops.core.context import RunContext
from mlops.core.settings import Settings
from mlops.ml.prediction_shift import ExpectedPredictions


@flow(name="training", persist_result=True)
def training(
    pipeline: str | None = None,
    data_rev: str | None = None,
    trigger: str = "manual",
    hand_over: HandOverTo = "none",
    production_data: str | None = None,
    expected_predictions: ExpectedPredictions | None = None,
    model_params: dict[str, Any] | None = None,
    compute: Compute = "local",
) -> RegisteredVersion:
    """Train, evaluate, track and register a model from one exact version of the data.

    Args:
        pipeline: pipeline config file, relative to the project (default: the settings' example).
        data_rev: git revision whose DVC-tracked data to train on (default: the workspace).
        trigger: who or what started this run, recorded on the model version.
        hand_over: what follows registration: nothing; the `promotion` flow (gates, then the
            champion alias); or `release`: the gates, then the release flow puts a passing
            version into production by the policy's strategy and target. Either runs the
            `delivery` flow (training, then the hand-over) as a subflow of this run.
        production_data: a Parquet file of labelled production rows (tasks.monitoring's
            collect_production_data) to train on beside the data version; its md5 joins the
            version's lineage.
        expected_predictions: handed to the release (see there): the class shares or value
            quantiles its candidate's predictions are expected to follow.
        model_params: hyper-parameters over the config's (a search's best candidate); they
            join the version's fingerprint and its config snapshot.
        compute: where the fit runs: in this flow run, or as an AWS SageMaker training job from
            the project's image (mlops/adapters/sagemaker.py; its logs join the MLflow run).

    Returns:
        The registered model version, or the earlier one an identical run already registered.
        A version the gates or the release reject fails this flow run with their reason.
    """
    context = RunContext.load(Settings(), pipeline).with_model_params(model_params)
    request = TrainingRequest(data_rev, trigger, production_data, compute)
    if hand_over == "none":
        return train_model_version(context, request)
    return delivery(context, request, HandOver(hand_over, expected_predictions))
