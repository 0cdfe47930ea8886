"""Training steps: fit, evaluate, track the run (MLflow), search, managed training."""

from __future__ import annotations

from mlops.adapters import sagemaker, tracking
from mlops.core.retries import only_connection_errors
from mlops.ml import evaluation, search, training
from tasks import step
from tasks.caching import PIPELINE_CACHE

train_model = step(
    training.train_model, name="train-model", cache_policy=PIPELINE_CACHE, persist_result=True
)
evaluate_model = step(evaluation.evaluate_model, name="evaluate-model")
score_candidate = step(search.score_candidate, name="score-candidate")
log_training_run = step(
    tracking.log_training_run,
    name="log-training-run",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=only_connection_errors,
)
log_monitoring_run = step(
    tracking.log_monitoring_run,
    name="log-monitoring-run",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=only_connection_errors,
)
log_search_runs = step(
    tracking.log_search_runs,
    name="log-search-runs",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=only_connection_errors,
)
train_on_sagemaker = step(sagemaker.train_on_sagemaker, name="train-on-sagemaker")
