"""Training steps: fit, evaluate, track the run (MLflow), search, managed training."""

from __future__ import annotations

from mlops.adapters import sagemaker, tracking
from mlops.ml import evaluation, explanations, search, training
from tasks import on_connection_errors, step
from tasks.caching import PIPELINE_CACHE

train_model = step(
    training.train_model, name="train-model", cache_policy=PIPELINE_CACHE, persist_result=True
)
evaluate_model = step(evaluation.evaluate_model, name="evaluate-model")
explain_model = step(explanations.global_importance, name="explain-model")
score_candidate = step(search.score_candidate, name="score-candidate")
log_training_run = step(
    tracking.log_training_run,
    name="log-training-run",
    **on_connection_errors(2, 10),
)
log_importance = step(
    tracking.log_importance,
    name="log-importance",
    **on_connection_errors(2, 10),
)
log_monitoring_run = step(
    tracking.log_monitoring_run,
    name="log-monitoring-run",
    **on_connection_errors(2, 10),
)
log_search_runs = step(
    tracking.log_search_runs,
    name="log-search-runs",
    **on_connection_errors(2, 2),
)
train_on_sagemaker = step(sagemaker.train_on_sagemaker, name="train-on-sagemaker")
