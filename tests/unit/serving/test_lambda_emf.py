"""In AWS Lambda the server's class counts also go to stdout as CloudWatch embedded-metric-format
lines, the figures the release's CloudWatch provider reads (namespace mlops, Predictions)."""

from __future__ import annotations

import json

import pytest

from mlops.serving.app import Metrics
from mlops.serving.model import Answers, ServedProblem


def test_class_counts_are_emf_lines_in_lambda(capsys: pytest.CaptureFixture[str]) -> None:
    problem = ServedProblem("binary", "target", ("<=50K", ">50K"))
    Metrics("adult", "3", emf=True).observe(problem, Answers(["<=50K", ">50K", "<=50K"]))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(x["label"], x["Predictions"]) for x in lines} == {("<=50K", 2), (">50K", 1)}
    spec = lines[0]["_aws"]["CloudWatchMetrics"][0]
    assert spec["Namespace"] == "mlops" and spec["Dimensions"] == [["model", "version", "label"]]
    assert {(x["model"], x["version"]) for x in lines} == {("adult", "3")}


def test_outside_lambda_nothing_is_printed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    problem = ServedProblem("binary", "target", ("<=50K", ">50K"))
    Metrics("adult", "3").observe(problem, Answers(["<=50K"]))
    assert capsys.readouterr().out == ""
