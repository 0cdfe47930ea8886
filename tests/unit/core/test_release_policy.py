"""The release policy's own checks: a user's query check and the analysis settings are refused,
naming the problem, when they could never judge anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mlops.core.errors import ConfigError
from mlops.core.policy import Policy, QueryCheck, ReleasePolicy, load_policy

QUERY = "sum(rate(mlops_queue_depth{{selector}}[{window}]{offset}))"


def test_a_query_check_with_a_limit_and_the_selector_is_accepted() -> None:
    check = QueryCheck(name="queue-depth", query=QUERY, max_ratio=1.5)
    assert check.max_ratio == 1.5 and check.max is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"query": QUERY}, "needs a limit: max, min, max_ratio or max_increase"),
        ({"query": "sum(rate(x[{window}]))", "max": 1}, "must hold {selector}"),
        ({"query": "sum(x{{selector}}[{windw}])", "max": 1}, "unknown placeholder(s) {windw}"),
        ({"query": QUERY, "min": 5, "max": 1}, "min 5 is above max 1: no value passes"),
        ({"query": QUERY, "max_ratio": 0}, "greater than 0"),
        ({"query": QUERY, "max": 1, "maximum": 2}, "Extra inputs are not permitted"),
    ],
)
def test_a_query_check_that_cannot_judge_is_refused(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QueryCheck(name="queue", **fields)  # type: ignore[arg-type]


def test_a_query_check_name_is_a_slug() -> None:
    with pytest.raises(ValidationError, match="name"):
        QueryCheck(name="Queue Depth", query=QUERY, max=1)


def test_label_matchers_in_braces_are_not_taken_for_placeholders() -> None:
    query = 'sum(x{{selector},code="500"}[{window}]) / sum(y{job="router"})'
    assert QueryCheck(name="q", query=query, max=1).query == query


def test_check_names_are_unique() -> None:
    check = {"name": "q", "query": QUERY, "max": 1}
    with pytest.raises(ValidationError, match="names must be unique"):
        ReleasePolicy.model_validate({"checks": [check, check]})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bake_seconds": 0}, "bake_seconds"),
        ({"on_inconclusive": "pass"}, "on_inconclusive"),
        ({"failure_limit": -1}, "failure_limit"),
        ({"max_extensions": -1}, "max_extensions"),
        ({"error_significance": 0}, "error_significance"),
        ({"error_significance": 1}, "error_significance"),
        ({"hold_timeout_seconds": 0}, "hold_timeout_seconds"),
        ({"analysis_interval_seconds": 0}, "analysis_interval_seconds"),
        ({"canary_steps": [50, 25, 100]}, "canary_steps must rise"),
        ({"canary_steps": [5, 50]}, "end at 100"),
    ],
)
def test_release_settings_that_cannot_work_are_refused(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ReleasePolicy.model_validate(fields)


def test_the_defaults_never_pass_a_step_silently() -> None:
    policy = ReleasePolicy()
    assert policy.on_inconclusive == "extend" and policy.max_extensions >= 1
    assert policy.failure_limit == 0 and policy.checks == ()


def test_a_bad_check_in_a_policy_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    example = Path(__file__).parents[3] / "examples" / "adult" / "policy.yaml"
    raw = yaml.safe_load(example.read_text())
    raw["release"]["checks"] = [{"name": "queue", "query": "sum(x)", "max": 1}]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"policy\.yaml: release\.checks\.0.*must hold"):
        load_policy(path)
    raw["release"]["checks"] = [{"name": "queue", "query": QUERY, "max_increase": 0.1}]
    path.write_text(yaml.safe_dump(raw))
    policy, _ = load_policy(path)
    assert isinstance(policy, Policy) and policy.release.checks[0].name == "queue"
