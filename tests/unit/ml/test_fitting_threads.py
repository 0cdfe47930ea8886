"""A fit takes the cores that are idle when it starts, and the model does not depend on how many:
the shipped histogram gradient boosting fits the same model on one thread as on two."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psutil
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from mlops.core.config import FeatureConfig, ModelConfig
from mlops.ml import training
from mlops.ml.problems import Problem
from mlops.ml.split import Split

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("busy_percent", "threads"),
    [(0.0, 4), (20.0, 3), (40.0, 2), (60.0, 1), (100.0, 1)],
)
def test_the_idle_cores_are_the_fits_threads(
    monkeypatch: pytest.MonkeyPatch, busy_percent: float, threads: int
) -> None:
    # four cores: 20 % busy is 0.8 of a core (3.2 idle: three), 40 % is 1.6 (2.4 idle: two, as
    # a core counts when three quarters of it are idle), and never fewer than one
    monkeypatch.setattr(psutil, "cpu_count", lambda: 4)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: busy_percent)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert training.fitting_threads() == threads


def test_no_more_threads_than_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "cpu_count", lambda: 8)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 0.0)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1})
    assert training.fitting_threads() == 2


def test_the_fit_runs_on_those_threads_and_the_model_does_not_depend_on_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(
        {"a": rng.normal(size=3000), "b": rng.normal(size=3000), "c": rng.choice(list("xyz"), 3000)}
    )
    y = pd.Series(((X["a"] + X["b"] + (X["c"] == "x")) > 0.5).astype(int), name="t")
    problem = Problem("binary", ("no", "yes"), "t")
    split = Split(X.iloc[:2500], y.iloc[:2500], X.iloc[2500:], y.iloc[2500:], problem)
    features = FeatureConfig(numeric=("a", "b"), categorical=("c",))
    config = ModelConfig(family="hist_gradient_boosting", params={"random_state": 0})
    seen: list[int] = []
    fit = training._fit

    def watched(*args: object) -> object:
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp")
        return fit(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(training, "_fit", watched)
    monkeypatch.setattr(training, "fitting_threads", lambda: 1)
    one = training.train_model(split, features, config).predict_proba(split.X_holdout)
    assert seen and set(seen) == {1}
    with threadpool_limits(2, user_api="openmp"):
        two = training._fit(split, features, config).predict_proba(split.X_holdout)
    assert np.array_equal(one, two)
