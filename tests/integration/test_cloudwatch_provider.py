"""The CloudWatch provider against moto's server over HTTP, an EMULATION of CloudWatch (no AWS
account is reachable here). moto runs no functions: the tests play Lambda's service publishing
its AWS/Lambda metrics per executed version (and the model server's prediction counts) with
put_metric_data, then read them back through the provider. moto computes no percentiles, so the
latency histogram here is the Maximum alone; real CloudWatch adds p50, p90 and p99."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from mlops.release.providers.base import ProviderError
from mlops.release.providers.cloudwatch import CloudWatchProvider, LambdaSlot, period

pytestmark = pytest.mark.integration

REGION = "us-east-1"
STABLE = LambdaSlot("adult", "live", "1", "adult", 1)
CANDIDATE = LambdaSlot("adult", "live", "2", "adult", 2)
NO_PERCENTILES = ()  # moto computes no extended statistics (it answers p99 with a 500)


@pytest.fixture
def cloudwatch(aws: str) -> Iterator[Any]:
    import boto3

    httpx.post(f"{aws}/moto-api/reset")
    yield boto3.client("cloudwatch", region_name=REGION, endpoint_url=aws)


def _publish(cw: Any, slot: LambdaSlot, invocations: float, errors: float, ms: list[float]) -> None:
    """What Lambda's service would publish for invocations of ``slot`` (an emulation)."""
    now = datetime.now(UTC)
    cw.put_metric_data(
        Namespace="AWS/Lambda",
        MetricData=[
            {
                "MetricName": "Invocations",
                "Dimensions": slot.dimensions,
                "Value": invocations,
                "Timestamp": now,
            },
            {
                "MetricName": "Errors",
                "Dimensions": slot.dimensions,
                "Value": errors,
                "Timestamp": now,
            },
            *(
                {
                    "MetricName": "Duration",
                    "Dimensions": slot.dimensions,
                    "Value": v,
                    "Unit": "Milliseconds",
                    "Timestamp": now,
                }
                for v in ms
            ),
        ],
    )


def _predictions(cw: Any, slot: LambdaSlot, counts: dict[str, float]) -> None:
    cw.put_metric_data(
        Namespace="mlops",
        MetricData=[
            {
                "MetricName": "Predictions",
                "Dimensions": [*slot.model_dimensions, {"Name": "label", "Value": label}],
                "Value": n,
                "Timestamp": datetime.now(UTC),
            }
            for label, n in counts.items()
        ],
    )


def test_measure_reads_each_versions_figures_and_names_the_queries(cloudwatch: Any) -> None:
    _publish(cloudwatch, STABLE, 40, 1, [20.0, 30.0, 50.0])
    _publish(cloudwatch, CANDIDATE, 10, 3, [80.0, 120.0])
    _predictions(cloudwatch, CANDIDATE, {"<=50K": 7, ">50K": 3})
    provider = CloudWatchProvider(cloudwatch, {"blue": STABLE, "green": CANDIDATE}, NO_PERCENTILES)

    stable, candidate = provider.measure("blue", 60), provider.measure("green", 60)

    assert (stable.sample.requests, stable.sample.errors) == (40, 1)
    assert (candidate.sample.requests, candidate.sample.errors) == (10, 3)
    # every invocation at or below the maximum Duration, in seconds
    assert candidate.sample.latency_buckets[0.12] == 2
    assert max(stable.sample.latency_buckets) == 0.05
    assert candidate.sample.labels == {"<=50K": 7, ">50K": 3}
    assert stable.sample.labels == {} and not stable.empty
    errors = json.loads(candidate.queries["errors"])
    stat = errors["MetricDataQueries"][0]["MetricStat"]
    assert stat["Metric"]["MetricName"] == "Errors"
    assert {"Name": "ExecutedVersion", "Value": "2"} in stat["Metric"]["Dimensions"]
    assert stat["Stat"] == "Sum" and "StartTime" in errors


def test_no_figures_is_empty_and_a_window_in_the_past_sees_none_of_now(cloudwatch: Any) -> None:
    provider = CloudWatchProvider(cloudwatch, {"blue": STABLE}, NO_PERCENTILES)
    assert provider.measure("blue", 30).empty
    _publish(cloudwatch, STABLE, 5, 0, [10.0])
    assert not provider.measure("blue", 30).empty
    assert provider.measure("blue", 30, ago=600).empty


def test_a_users_query_is_a_metric_data_query_with_the_slots_dimensions(cloudwatch: Any) -> None:
    _publish(cloudwatch, CANDIDATE, 10, 3, [80.0])
    provider = CloudWatchProvider(cloudwatch, {"green": CANDIDATE, "blue": STABLE}, NO_PERCENTILES)
    query = json.dumps(
        [
            {
                "Id": "e",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/Lambda",
                        "MetricName": "Errors",
                        "Dimensions": "{selector}",
                    },
                    "Stat": "Sum",
                },
                "ReturnData": False,
            },
            {
                "Id": "i",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/Lambda",
                        "MetricName": "Invocations",
                        "Dimensions": "{selector}",
                    },
                    "Stat": "Sum",
                },
            },
        ]
    )
    answer = provider.ask(query, "green", 60)
    assert answer.value == 10
    assert '"ExecutedVersion","Value":"2"' in answer.query
    assert provider.ask(query, "blue", 60).value is None
    with pytest.raises(ProviderError, match="not JSON"):
        provider.ask("sum(errors)", "green", 60)
    with pytest.raises(ProviderError, match="slot 'red'"):
        provider.measure("red", 60)


def test_an_unreachable_cloudwatch_is_a_provider_error_naming_the_call() -> None:
    import boto3

    client = boto3.client(
        "cloudwatch",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(ProviderError, match="CloudWatch ListMetrics failed"):
        CloudWatchProvider(client, {"blue": STABLE}).measure("blue", 60)


def test_period_is_one_cloudwatch_accepts() -> None:
    assert [period(s) for s in (0.5, 4, 9, 20, 31, 61)] == [1, 5, 10, 30, 60, 120]


def test_the_policy_takes_a_metric_data_query_as_a_check() -> None:
    from mlops.core.policy import QueryCheck

    query = (
        '[{"Id": "t", "MetricStat": {"Metric": {"Namespace": "AWS/Lambda", '
        '"MetricName": "Throttles", "Dimensions": "{selector}"}, "Stat": "Sum"}}]'
    )
    assert QueryCheck(name="throttles", query=query, max=0).query == query


def test_latency_buckets_from_percentiles_hold_each_percentiles_share() -> None:
    found = {"count": [100.0], "max": [300.0], "p50": [20.0], "p90": [40.0], "p99": [100.0]}
    buckets = CloudWatchProvider._latency(found, (0.5, 0.9, 0.99))
    assert buckets == {0.02: 50.0, 0.04: 90.0, 0.1: 99.0, 0.3: 100.0}
    assert CloudWatchProvider._latency({"count": [], "max": []}, ()) == {}
