"""CloudWatch as the release's metrics provider (the Lambda target): ``GetMetricData``.

A slot is one published Lambda version behind the alias callers invoke: its figures are
``AWS/Lambda``'s Invocations, Errors and Duration with the dimensions FunctionName, Resource
(``function:alias``) and ExecutedVersion, summed over the window ``[now - ago - seconds,
now - ago]``. What the model predicted is the metric ``Predictions`` of the namespace ``mlops``
with the dimensions model, version and label (one series per predicted class), where the model
server publishes it; without it the prediction check is inconclusive, never a silent pass.

Latency: CloudWatch keeps statistics, not buckets. The latency histogram the analysis reads is
built from what CloudWatch does know, each point true by definition: p50, p90 and p99 of Duration
(at or below the p-th percentile lie p % of the invocations) and the Maximum (all of them), over
SampleCount invocations. Percentiles CloudWatch does not answer are left out; the Maximum alone
still bounds every invocation.

A user's query (``QueryCheck.query``) is a JSON list of MetricDataQuery objects (or one object),
as ``aws cloudwatch get-metric-data --metric-data-queries`` takes them. ``"{selector}"``, quoted,
stands for the slot's dimension list, ``{window}`` for the period in seconds and ``{offset}`` for
nothing (the window's end is already ``ago`` before now); a
``MetricStat`` without a ``Period`` gets the window's. The answer is the sum of the values of the
query whose ``ReturnData`` is not false (the last one when several are), so metric math is an
``Expression`` entry over ``MetricStat`` entries with ``"ReturnData": false``. Example::

    [{"Id": "t", "MetricStat": {"Metric": {"Namespace": "AWS/Lambda",
      "MetricName": "Throttles", "Dimensions": "{selector}"}, "Stat": "Sum"}}]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mlops.release.analysis import Answer, Measured
from mlops.release.providers.base import ProviderError
from mlops.release.targets.base import SlotSample

PREDICTIONS_NAMESPACE = "mlops"
PREDICTIONS_METRIC = "Predictions"
PERCENTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True)
class LambdaSlot:
    """What selects one slot's series: the function, the alias callers invoke, the published
    Lambda version running the slot, and the model version it serves."""

    function: str
    alias: str
    lambda_version: str
    model: str
    model_version: int

    @property
    def dimensions(self) -> list[dict[str, str]]:
        return [
            {"Name": "FunctionName", "Value": self.function},
            {"Name": "Resource", "Value": f"{self.function}:{self.alias}"},
            {"Name": "ExecutedVersion", "Value": self.lambda_version},
        ]

    @property
    def model_dimensions(self) -> list[dict[str, str]]:
        return [
            {"Name": "model", "Value": self.model},
            {"Name": "version", "Value": str(self.model_version)},
        ]


def period(seconds: float) -> int:
    """A CloudWatch period covering ``seconds`` (1, 5, 10, 30 or a multiple of 60)."""
    for allowed in (1, 5, 10, 30):
        if seconds <= allowed:
            return allowed
    return 60 * math.ceil(seconds / 60)


def _stat(
    qid: str, namespace: str, name: str, dims: list[dict[str, str]], stat: str, p: int
) -> dict[str, Any]:
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": dims},
            "Period": p,
            "Stat": stat,
        },
    }


class CloudWatchProvider:
    name = "cloudwatch"

    def __init__(
        self,
        client: Any,
        slots: dict[str, LambdaSlot],
        percentiles: tuple[float, ...] = PERCENTILES,
    ) -> None:
        self.client = client  # a boto3 CloudWatch client
        self.slots = slots
        # moto, the emulation the tests run against, computes no percentiles (it fails on them)
        self.percentiles = percentiles

    def _slot(self, slot: str) -> LambdaSlot:
        if slot not in self.slots:
            raise ProviderError(f"no Lambda version is known for slot {slot!r}")
        return self.slots[slot]

    @staticmethod
    def _span(seconds: float, ago: float) -> tuple[datetime, datetime]:
        # whole seconds, the end rounded up: CloudWatch truncates both to the second, which
        # would leave out the figures of the current second
        end = datetime.now(UTC) - timedelta(seconds=ago)
        end = end.replace(microsecond=0) + timedelta(seconds=1 if end.microsecond else 0)
        return end - timedelta(seconds=math.ceil(seconds)), end

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise ProviderError(f"CloudWatch {what} failed: {exc}") from None

    def data(
        self, queries: list[dict[str, Any]], start: datetime, end: datetime
    ) -> dict[str, list[float]]:
        """Each query's values over ``[start, end]`` (id -> values; [] when no data)."""
        found: dict[str, list[float]] = {q["Id"]: [] for q in queries}
        kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
        while True:
            answer = self._call("GetMetricData", self.client.get_metric_data, **kwargs)
            for result in answer.get("MetricDataResults", []):
                values = [float(v) for v in result.get("Values", []) if v is not None]
                found.setdefault(result["Id"], []).extend(v for v in values if math.isfinite(v))
            if not answer.get("NextToken"):
                return found
            kwargs["NextToken"] = answer["NextToken"]

    def _labels(self, s: LambdaSlot) -> list[str]:
        labels: set[str] = set()
        kwargs: dict[str, Any] = {
            "Namespace": PREDICTIONS_NAMESPACE,
            "MetricName": PREDICTIONS_METRIC,
            "Dimensions": s.model_dimensions,
        }
        while True:
            answer = self._call("ListMetrics", self.client.list_metrics, **kwargs)
            for metric in answer.get("Metrics", []):
                dims = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
                if "label" in dims:
                    labels.add(dims["label"])
            if not answer.get("NextToken"):
                return sorted(labels)
            kwargs["NextToken"] = answer["NextToken"]

    def measure(self, slot: str, seconds: float, ago: float = 0.0) -> Measured:
        s = self._slot(slot)
        start, end = self._span(seconds, ago)
        p = period(seconds)
        dims = s.dimensions
        figures: dict[str, list[dict[str, Any]]] = {
            "requests": [_stat("requests", "AWS/Lambda", "Invocations", dims, "Sum", p)],
            "errors": [_stat("errors", "AWS/Lambda", "Errors", dims, "Sum", p)],
            "latency": [
                _stat("count", "AWS/Lambda", "Duration", dims, "SampleCount", p),
                _stat("max", "AWS/Lambda", "Duration", dims, "Maximum", p),
                *(
                    _stat(f"p{round(q * 100)}", "AWS/Lambda", "Duration", dims, f"p{q * 100:g}", p)
                    for q in self.percentiles
                ),
            ],
        }
        labels = self._labels(s)
        figures["labels"] = [
            _stat(
                f"label{i}",
                PREDICTIONS_NAMESPACE,
                PREDICTIONS_METRIC,
                [*s.model_dimensions, {"Name": "label", "Value": label}],
                "Sum",
                p,
            )
            for i, label in enumerate(labels)
        ]
        queries = [q for group in figures.values() for q in group]
        found = self.data(queries, start, end)
        requests, errors = found["requests"], found["errors"]
        latency = self._latency(found, self.percentiles)
        counts = {
            label: sum(found[f"label{i}"]) for i, label in enumerate(labels) if found[f"label{i}"]
        }
        window = {"StartTime": start.isoformat(), "EndTime": end.isoformat()}
        resolved = {
            figure: json.dumps({"MetricDataQueries": group, **window}, separators=(",", ":"))
            for figure, group in figures.items()
            if group
        }
        sample = SlotSample(sum(requests), sum(errors), latency, counts, {})
        return Measured(sample, resolved, empty=not requests and not latency and not counts)

    @staticmethod
    def _latency(
        found: dict[str, list[float]], percentiles: tuple[float, ...]
    ) -> dict[float, float]:
        """Cumulative buckets (seconds -> invocations at or below) from Duration's statistics
        (milliseconds). Several periods: the count adds up, the maximum and percentiles are the
        worst period's (an upper bound of the window's)."""
        n = sum(found["count"])
        if not n or not found["max"]:
            return {}
        buckets: dict[float, float] = {}
        for q in percentiles:
            if values := found[f"p{round(q * 100)}"]:
                le = max(values) / 1000
                buckets[le] = max(buckets.get(le, 0.0), q * n)
        buckets[max(found["max"]) / 1000] = n
        running = 0.0  # cumulative counts never fall as the bound rises
        for le in sorted(buckets):
            running = buckets[le] = max(running, buckets[le])
        return buckets

    def ask(self, query: str, slot: str, seconds: float, ago: float = 0.0) -> Answer:
        s = self._slot(slot)
        p = period(seconds)
        # {offset} is PromQL's: the window's end already stands ``ago`` before now here
        resolved = (
            query.replace('"{selector}"', json.dumps(s.dimensions))
            .replace("{window}", str(p))
            .replace("{offset}", "")
        )
        try:
            parsed = json.loads(resolved)
        except json.JSONDecodeError as exc:
            raise ProviderError(
                f"the CloudWatch query {query!r} is not JSON ({exc}): a check's query is a list "
                'of MetricDataQuery objects, with "{selector}" for the slot\'s dimensions'
            ) from None
        queries = parsed if isinstance(parsed, list) else [parsed]
        if not queries or not all(isinstance(q, dict) and "Id" in q for q in queries):
            raise ProviderError(
                f"the CloudWatch query {query!r} must be MetricDataQuery objects, each with an Id"
            )
        for q in queries:
            q.get("MetricStat", {}).setdefault("Period", p)
        returned = [q for q in queries if q.get("ReturnData", True)]
        if not returned:
            raise ProviderError(f"the CloudWatch query {query!r} returns no data (ReturnData)")
        start, end = self._span(seconds, ago)
        values = self.data(queries, start, end)[returned[-1]["Id"]]
        text = json.dumps(
            {
                "MetricDataQueries": queries,
                "StartTime": start.isoformat(),
                "EndTime": end.isoformat(),
            },
            separators=(",", ":"),
        )
        return Answer(sum(values) if values else None, text)
