"""Pipeline config, data contract and policy files: the example loads; bad files are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops.core.config import load_pipeline_config
from mlops.core.errors import ConfigError
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from tests.helpers import EXAMPLE

pytestmark = pytest.mark.unit


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def _pipeline(tmp_path: Path, **changes: object) -> Path:
    for name in ("contract.yaml", "policy.yaml"):
        (tmp_path / name).write_text((EXAMPLE / name).read_text())
    raw = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    raw.update(changes)
    return _write(tmp_path / "pipeline.yaml", raw)


def test_example_config_loads_with_its_contract_and_policy() -> None:
    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    assert cfg.target.column == "income" and cfg.target.positive == ">50K"
    assert set(cfg.features.columns) | {"income"} == set(cfg.contract.columns)
    assert cfg.policy == EXAMPLE / "policy.yaml"
    policy, digest = load_policy(cfg.policy, set(cfg.contract.columns))
    assert policy.version >= 1 and len(digest) == 12
    assert policy.check_metrics({"roc_auc": 0.95, "f1": 0.7, "brier": 0.08}) == {
        "roc_auc": True,
        "f1": True,
        "brier": True,
    }
    assert policy.check_metrics({"roc_auc": 0.80, "f1": 0.7, "brier": 0.2})["brier"] is False


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "pipeline.yaml", "name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"pipeline\.yaml: not valid YAML"):
        load_pipeline_config(bad)


def test_unknown_model_family_names_the_field(tmp_path: Path) -> None:
    path = _pipeline(tmp_path, model={"family": "deep_forest", "params": {}})
    with pytest.raises(ConfigError, match=r"model\.family"):
        load_pipeline_config(path)


def test_feature_missing_from_contract_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    raw["features"]["numeric"].append("shoe_size")
    path = _pipeline(tmp_path, features=raw["features"])
    with pytest.raises(ConfigError, match=r"shoe_size.*not declared"):
        load_pipeline_config(path)


def test_target_as_feature_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLE / "pipeline.yaml").read_text())
    raw["features"]["categorical"].append("income")
    with pytest.raises(ConfigError, match="target 'income' is also listed as a feature"):
        load_pipeline_config(_pipeline(tmp_path, features=raw["features"]))


def test_contract_category_without_values_is_refused(tmp_path: Path) -> None:
    path = _pipeline(tmp_path)
    contract = yaml.safe_load((tmp_path / "contract.yaml").read_text())
    contract["columns"]["sex"] = {"type": "category"}
    _write(tmp_path / "contract.yaml", contract)
    with pytest.raises(ConfigError, match=r"contract\.yaml: columns\.sex.*allowed `values`"):
        load_pipeline_config(path)


def test_policy_with_unknown_metric_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLE / "policy.yaml").read_text())
    raw["metrics"]["auroc"] = {"min": 0.9}
    with pytest.raises(ConfigError, match=r"unknown metrics \['auroc'\]"):
        load_policy(_write(tmp_path / "policy.yaml", raw))


def test_policy_comparing_on_an_unknown_metric_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLE / "policy.yaml").read_text())
    raw["comparison"]["metric"] = "gini"
    with pytest.raises(ConfigError, match=r"comparison\.metric 'gini' is unknown"):
        load_policy(_write(tmp_path / "policy.yaml", raw))


def test_policy_with_unknown_sensitive_column_is_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLE / "policy.yaml").read_text())
    raw["fairness"]["sensitive"] = ["sex", "religion"]
    with pytest.raises(
        ConfigError, match=r"fairness.sensitive names \['religion'\], which are not features"
    ):
        load_policy(_write(tmp_path / "policy.yaml", raw), {"sex", "race"})


def test_policy_threshold_needs_a_bound(tmp_path: Path) -> None:
    raw = yaml.safe_load((EXAMPLE / "policy.yaml").read_text())
    raw["metrics"]["f1"] = {}
    with pytest.raises(ConfigError, match=r"metrics\.f1.*needs `min` or `max`"):
        load_policy(_write(tmp_path / "policy.yaml", raw))


def test_settings_read_the_mlops_prefix_and_derive_urls(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLOPS_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("MLOPS_STATE_DIR", "state")
    monkeypatch.setenv("MLOPS_MLFLOW_PORT", "5123")
    monkeypatch.delenv("MLOPS_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLOPS_PREFECT_API_URL", raising=False)
    s = Settings()
    assert s.state_dir == tmp_path / "state"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5123"
    assert s.prefect_api_url == f"http://127.0.0.1:{s.prefect_port}/api"
    monkeypatch.setenv("MLOPS_MLFLOW_PORT", "not-a-port")
    with pytest.raises(ValueError, match="mlflow_port"):
        Settings()


# policies per problem type ----------------------------------------------------------------------
def _policy(tmp_path: Path, **changes: object) -> Path:
    return _write(tmp_path / "policy.yaml", {"version": 1, **changes})


def test_a_metric_that_does_not_fit_the_problem_is_refused_when_the_policy_loads(
    tmp_path: Path,
) -> None:
    path = _policy(tmp_path, metrics={"roc_auc": {"min": 0.8}, "rmse": {"max": 3}})
    with pytest.raises(ConfigError) as err:
        load_policy(path, problem="regression")
    assert str(err.value) == (
        f"{path}: metrics.roc_auc: 'roc_auc' does not apply to a regression problem (it applies "
        "to binary); use one of ['rmse', 'mae', 'r2', 'mape'] (the pipeline's target is regression)"
    )
    with pytest.raises(ConfigError, match=r"metrics\.rmse: 'rmse' does not apply to a binary"):
        load_policy(path, problem="binary")
    compare = _policy(tmp_path, metrics={}, comparison={"metric": "roc_auc"})
    with pytest.raises(ConfigError, match=r"comparison\.metric: 'roc_auc' does not apply to a mul"):
        load_policy(compare, problem="multiclass")


def test_left_out_comparison_metric_and_fairness_limits_take_the_problems_defaults(
    tmp_path: Path,
) -> None:
    path = _policy(tmp_path, metrics={"rmse": {"max": 3}}, fairness={"sensitive": ["sex"]})
    policy, _ = load_policy(path, {"sex"}, "regression")
    assert policy.comparison.metric == "rmse"
    assert policy.fairness.limits("regression") == {
        "max_mean_error_difference": 0.25,
        "max_mean_prediction_difference": 0.5,
    }
    assert policy.fairness.max_mean_error_difference == 0.25
    assert policy.fairness.max_demographic_parity_difference is None
    multi = _policy(tmp_path, metrics={}, fairness={"max_error_rate_difference": 0.05})
    policy, _ = load_policy(multi, problem="multiclass")
    assert policy.comparison.metric == "f1_macro"
    assert policy.fairness.limits("multiclass") == {
        "max_selection_rate_difference": 0.2,
        "max_error_rate_difference": 0.05,
    }


def test_the_example_policy_keeps_its_binary_limits() -> None:
    policy, _ = load_policy(EXAMPLE / "policy.yaml", problem="binary")
    assert policy.comparison.metric == "roc_auc"
    assert policy.fairness.limits("binary") == {
        "max_demographic_parity_difference": 0.2,
        "max_equal_opportunity_difference": 0.15,
    }


def test_a_fairness_limit_that_does_not_fit_the_problem_is_refused_naming_field_and_type(
    tmp_path: Path,
) -> None:
    path = _policy(tmp_path, metrics={}, fairness={"max_equal_opportunity_difference": 0.1})
    with pytest.raises(ConfigError) as err:
        load_policy(path, problem="regression")
    assert str(err.value) == (
        f"{path}: fairness.max_equal_opportunity_difference: does not apply to a regression "
        "problem (it applies to binary); use max_mean_error_difference, "
        "max_mean_prediction_difference (the pipeline's target is regression)"
    )
    mean_error = _policy(tmp_path, metrics={}, fairness={"max_mean_error_difference": 0.3})
    with pytest.raises(
        ConfigError,
        match=r"fairness\.max_mean_error_difference: does not apply to a binary problem "
        r"\(it applies to regression\)",
    ):
        load_policy(mean_error, problem="binary")
    # A classifier's limit is a difference of rates; a regression's is in target SDs, unbounded.
    with pytest.raises(ConfigError, match=r"fairness\.max_error_rate_difference"):
        load_policy(_policy(tmp_path, metrics={}, fairness={"max_error_rate_difference": 2}))
    wide = _policy(tmp_path, metrics={}, fairness={"max_mean_prediction_difference": 2})
    assert load_policy(wide, problem="regression")[0].fairness.max_mean_prediction_difference == 2


def test_a_sensitive_column_of_the_data_that_is_not_a_feature_is_refused_at_load(
    tmp_path: Path,
) -> None:
    """The fairness gate judges the holdout, which holds the features: a contract column that
    is not one (here `fnlwgt`, dropped from the features) passed the load and then failed the
    gate with a KeyError."""
    import shutil

    from mlops.core.context import RunContext

    for name in ("contract.yaml", "policy.yaml", "pipeline.yaml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    pipeline = yaml.safe_load((tmp_path / "pipeline.yaml").read_text())
    pipeline["features"]["numeric"].remove("fnlwgt")
    _write(tmp_path / "pipeline.yaml", pipeline)
    policy = yaml.safe_load((tmp_path / "policy.yaml").read_text())
    policy["fairness"]["sensitive"] = ["sex", "fnlwgt"]
    _write(tmp_path / "policy.yaml", policy)
    with pytest.raises(ConfigError, match=r"\['fnlwgt'\], which are not features"):
        RunContext.load(Settings(project_dir=tmp_path), "pipeline.yaml")
