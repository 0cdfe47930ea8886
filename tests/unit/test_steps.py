"""Split, features, training and evaluation on small frames; cache keys and code identity."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops.core.config import ModelConfig, load_pipeline_config
from mlops.core.errors import ConfigError
from mlops.core.lineage import run_fingerprint
from mlops.ml.caching import stable_hash
from mlops.ml.contract import check_contract
from mlops.ml.fingerprint import MODEL_CODE, code_fingerprint, module_closure
from mlops.ml.problems import Predictions, Problem, problem_for
from mlops.ml.training import build_estimator
from tasks.data import split_dataset
from tasks.training import evaluate_model, train_model
from tests.helpers import EXAMPLE, adult_frame

pytestmark = pytest.mark.unit

CFG = load_pipeline_config(EXAMPLE / "pipeline.yaml")
SMALL = ModelConfig(family="hist_gradient_boosting", params={"max_iter": 20, "random_state": 0})


@pytest.fixture(scope="module")
def frame(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    path = tmp_path_factory.mktemp("d") / "a.csv"
    adult_frame(3000).to_csv(path, index=False)
    raw = pd.read_csv(path, na_values=["?"])
    return check_contract(raw, CFG.contract, "a.csv", path.parent / "r")


def test_split_is_deterministic_stratified_and_disjoint(frame: pd.DataFrame) -> None:
    a = split_dataset.fn(frame, CFG.features.columns, problem_for(CFG.target), CFG.split)
    b = split_dataset.fn(frame, CFG.features.columns, problem_for(CFG.target), CFG.split)
    pd.testing.assert_frame_equal(a.X_holdout, b.X_holdout)
    assert set(a.X_train.index).isdisjoint(a.X_holdout.index)
    assert len(a.X_holdout) == round(len(frame) * CFG.split.test_size)
    assert "income" not in a.X_train.columns
    assert abs(a.y_train.mean() - a.y_holdout.mean()) < 0.01, "stratified on the label"
    other = split_dataset.fn(
        frame,
        CFG.features.columns,
        problem_for(CFG.target),
        CFG.split.model_copy(update={"seed": 7}),
    )
    assert not other.X_holdout.index.equals(a.X_holdout.index)


def test_trained_model_beats_chance_and_tolerates_unseen_categories(frame: pd.DataFrame) -> None:
    split = split_dataset.fn(frame, CFG.features.columns, problem_for(CFG.target), CFG.split)
    model = train_model.fn(split, CFG.features, SMALL)
    metrics = evaluate_model.fn(model, split)
    assert metrics["roc_auc"] > 0.8
    assert 0 <= metrics["brier"] < 0.25
    odd = split.X_holdout.head(3).assign(occupation="Astronaut", workclass=np.nan)
    assert model.predict_proba(odd).shape == (3, 2)


def test_unknown_hyper_parameter_names_the_estimator() -> None:
    with pytest.raises(
        ConfigError, match=r"\['max_depthh'\] are not parameters of HistGradientBoostingClassifier"
    ):
        build_estimator(
            ModelConfig(family="hist_gradient_boosting", params={"max_depthh": 3}), "binary"
        )


def test_score_matches_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    proba = np.column_stack([1 - p, p])
    s = Problem("binary", ("no", "yes")).score_all(y, Predictions((p >= 0.5).astype(int), proba))
    assert s["roc_auc"] == pytest.approx(0.75)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)


def test_stable_hash_survives_a_round_trip_and_sees_changes(frame: pd.DataFrame) -> None:
    split = split_dataset.fn(frame, CFG.features.columns, problem_for(CFG.target), CFG.split)
    model = train_model.fn(split, CFG.features, SMALL)
    for obj in (frame, split, model, CFG.contract):
        assert stable_hash(pickle.loads(pickle.dumps(obj))) == stable_hash(obj)
    changed = frame.copy()
    changed.loc[changed.index[0], "age"] += 1
    assert stable_hash(changed) != stable_hash(frame)
    refit = train_model.fn(
        split, CFG.features, SMALL.model_copy(update={"params": {"max_iter": 21}})
    )
    assert stable_hash(refit) != stable_hash(model)


def test_code_fingerprint_follows_imports_and_ignores_unrelated_modules() -> None:
    step = module_closure(("mlops.ml.training",))
    assert {"mlops.ml.training", "mlops.ml.features", "mlops.ml.split"} <= set(step)
    model = module_closure(MODEL_CODE)
    assert {p.name for p in model.values()} >= {"contract.py", "data.py", "evaluation.py"}
    # the config's values are hashed instead; nothing above mlops.ml is ever reached
    assert not any(m.startswith(("mlops.core.config", "mlops.release", "mlops.cli")) for m in model)
    assert not any(m.startswith(("tasks", "flows", "mlops.stack")) for m in model)
    assert len(code_fingerprint()) == 64
    assert code_fingerprint(roots=("mlops.ml.training",)) != code_fingerprint(
        roots=("mlops.ml.split",)
    )


def test_run_fingerprint_changes_with_data_code_or_config() -> None:
    base = run_fingerprint("a" * 32, "code", {"model": {"max_iter": 10}})
    assert base == run_fingerprint("a" * 32, "code", {"model": {"max_iter": 10}})
    assert base != run_fingerprint("b" * 32, "code", {"model": {"max_iter": 10}})
    assert base != run_fingerprint("a" * 32, "code2", {"model": {"max_iter": 10}})
    assert base != run_fingerprint("a" * 32, "code", {"model": {"max_iter": 11}})


def test_the_train_steps_cache_key_follows_the_users_factory_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached fit is not reused after the user's factory was edited (same inputs, new code)."""
    from types import SimpleNamespace

    from mlops.ml import training
    from tasks.caching import PipelineCode

    pkg = tmp_path / "h4_cache_user"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("def build():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = SimpleNamespace(task=SimpleNamespace(fn=training.train_model))

    def key(config: ModelConfig) -> str | None:
        code_fingerprint.cache_clear()
        inputs = {"split": None, "features": CFG.features, "config": config}
        return PipelineCode().compute_key(task, inputs, {})  # type: ignore[arg-type]

    own = ModelConfig(factory="h4_cache_user.models:build")
    before, family = key(own), key(SMALL)
    assert before != family
    (pkg / "models.py").write_text("def build():\n    return 1\n")
    assert key(own) != before
    assert key(SMALL) == family
