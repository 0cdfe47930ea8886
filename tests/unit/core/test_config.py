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
    with pytest.raises(ConfigError, match=r"unknown columns \['religion'\]"):
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
