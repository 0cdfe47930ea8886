"""Hyper-parameter search: the candidates of a grid, each scored by cross-validation on the
training split (stratified folds for classifiers), compared by the search's scorer (a
scikit-learn scorer name that fits the problem, ``SearchConfig.scorer``). Each candidate is one
Prefect task, so a task runner fans them out (Dask through prefect-dask in flows/search.py)."""

from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

from mlops.core.config import FeatureConfig, ModelConfig, SearchConfig
from mlops.core.metrics import ProblemType
from mlops.ml.split import Split
from mlops.ml.training import build_estimator, build_pipeline


@dataclass(frozen=True)
class CandidateScore:
    params: dict[str, Any]
    mean: float
    std: float
    seconds: float


def candidates(base: ModelConfig, search: SearchConfig, problem: ProblemType) -> list[ModelConfig]:
    """Every combination of the grid over the base config's params, each checked against the
    estimator for ``problem`` before anything is fitted (an unknown parameter, or a factory that
    refuses one, is named here, not in a worker)."""
    names = list(search.grid)
    configs = [
        base.model_copy(update={"params": base.params | dict(zip(names, values, strict=True))})
        for values in itertools.product(*(search.grid[n] for n in names))
    ]
    for config in configs:
        build_estimator(config, problem)
    return configs


def score_candidate(
    split: Split,
    features: FeatureConfig,
    config: ModelConfig,
    search: SearchConfig,
    threads: int | None = None,
) -> CandidateScore:
    """One candidate of the search, scored by cross-validation on the training split (seeded
    folds: every runner scores a candidate alike). ``threads`` caps the estimator's OpenMP
    threads, so that parallel candidates do not fight over the cores."""
    from threadpoolctl import threadpool_limits

    model = build_pipeline(features, config, split.problem.kind)
    splitter = StratifiedKFold if split.problem.stratify else KFold
    folds = splitter(search.folds, shuffle=True, random_state=0)
    started = time.perf_counter()
    with threadpool_limits(threads) if threads else nullcontext():
        scores = cross_val_score(
            model, split.X_train, split.y_train, cv=folds, scoring=search.scorer
        )
    return CandidateScore(
        dict(config.params),
        float(scores.mean()),
        float(scores.std()),
        time.perf_counter() - started,
    )
