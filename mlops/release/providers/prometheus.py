"""Prometheus as the release's metrics provider: PromQL over the HTTP API (``/api/v1/query``).

A target says which series measure a slot (``SlotSeries``): the local target its router's
(Traefik's per-service counters, as callers saw the slot, 502s of a dead slot included) and its
servers'; KServe and GitOps the model servers' own (``mlops_requests_total`` and friends, whose
``model`` and ``version`` labels tell the revisions apart). Every figure is how much its counters
grew over the window (``growth``), and the resolved queries in a decision can be pasted into
Prometheus as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx

from mlops.release.analysis import Answer, Measured
from mlops.release.providers.base import ProviderError
from mlops.release.targets.base import SlotSample


@dataclass(frozen=True)
class SlotSeries:
    """The series selectors that measure one slot (metric name with label matchers)."""

    requests: str  # a counter of answered requests
    errors: str  # a counter of 5xx answers
    latency: str  # a histogram's _bucket series (summed by le)
    labels: str | None  # mlops_predictions_total of the slot's server (summed by label)
    values: str | None  # mlops_prediction_value_bucket of the slot's server (summed by le)
    matchers: str  # what ``{selector}`` becomes in a user's query


def server_series(matchers: str) -> SlotSeries:
    """A slot measured by its model server's own metrics, selected by ``matchers`` (e.g.
    ``model="adult-income",version="3"``): predictions and their answers, not feedback."""
    routes = f'{matchers},route!="/feedback"'
    return SlotSeries(
        requests=f"mlops_requests_total{{{routes}}}",
        errors=f'mlops_requests_total{{{routes},status=~"5.."}}',
        latency=f"mlops_request_seconds_bucket{{{routes}}}",
        labels=f"mlops_predictions_total{{{matchers}}}",
        values=f"mlops_prediction_value_bucket{{{matchers}}}",
        matchers=matchers,
    )


def seldon_series(name: str) -> SlotSeries:
    """A slot measured by Seldon Core 2's agent: the series of its Model ``name``. MLServer
    exports no prediction metrics, so there are none of predicted classes or values."""
    matchers = f'model="{name}"'
    return SlotSeries(
        requests=f"seldon_model_infer_total{{{matchers}}}",
        errors=f'seldon_model_infer_total{{{matchers},code=~"5.."}}',
        latency=f"seldon_model_infer_api_seconds_bucket{{{matchers}}}",
        labels=None,
        values=None,
        matchers=matchers,
    )


def window(seconds: float) -> str:
    """A PromQL range of at least ``seconds`` (whole seconds, never under 2 s)."""
    return f"{max(2, math.ceil(seconds))}s"


def growth(series: str, by: str, seconds: float, ago: float = 0.0) -> str:
    """PromQL for how much counters ``series`` (summed, ``by`` a label) grew over the ``seconds``
    that ended ``ago`` seconds before now: the sum at the end less the sum at the start, a
    series that did not exist at the start counting 0 there (a slot's first requests).

    Exact, where ``increase()`` is not: increase extrapolates the first and last samples to the
    window's edges, which over a canary step of a few scrapes overcounts by up to a third
    (measured 1.01 to 1.3 times the true count at 1 s scrapes) and so inflates the sample size
    the binomial tests are given."""
    total = f"sum by ({by}) " if by else "sum"
    start = f"{total}({series} offset {round(ago) + max(1, math.ceil(seconds))}s)"
    end = f"{total}({series}{offset(ago)})"
    missing = f"{end} * 0" if by else "vector(0)"
    return f"{end} - ({start} or {missing})"


def offset(ago: float) -> str:
    """A PromQL offset modifier of ``ago`` seconds (none under a second)."""
    return f" offset {round(ago)}s" if ago >= 1 else ""


class PrometheusProvider:
    name = "prometheus"

    def __init__(self, url: str, series: dict[str, SlotSeries], timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.series = series  # slot -> its series
        self.timeout = timeout

    def _series(self, slot: str) -> SlotSeries:
        if slot not in self.series:
            raise ProviderError(f"no metrics series are known for slot {slot!r}")
        return self.series[slot]

    def instant(self, query: str) -> list[dict[str, Any]]:
        """The vector ``query`` evaluates to now (``[]`` when empty)."""
        try:
            answer = httpx.get(
                f"{self.url}/api/v1/query", params={"query": query}, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise ProviderError(
                f"Prometheus at {self.url} cannot be reached ({exc}); is it running? "
                "(`mlops up` starts it; `mlops status` shows it)"
            ) from None
        body = _json(answer)
        if answer.status_code != 200 or body.get("status") != "success":
            raise ProviderError(
                f"Prometheus refused {query!r}: {answer.status_code} "
                f"{body.get('errorType', '')} {body.get('error', answer.text[:200])}"
            )
        data = body.get("data", {})
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data.get("result", [])
        return result

    def _by(self, query: str, label: str) -> dict[str, float]:
        return {
            row["metric"].get(label, ""): float(row["value"][1])
            for row in self.instant(query)
            if not math.isnan(float(row["value"][1]))
        }

    def measure(self, slot: str, seconds: float, ago: float = 0.0) -> Measured:
        s = self._series(slot)
        queries = {
            "requests": growth(s.requests, "", seconds, ago),
            "errors": growth(s.errors, "", seconds, ago),
            "latency": growth(s.latency, "le", seconds, ago),
        }
        labels: dict[str, float] = {}
        values: dict[float, float] = {}
        if s.labels is not None and s.values is not None:  # else the target counts no predictions
            queries["labels"] = growth(s.labels, "label", seconds, ago)
            queries["values"] = growth(s.values, "le", seconds, ago)
            labels = self._by(queries["labels"], "label")
            values = {float(le): v for le, v in self._by(queries["values"], "le").items()}
        requests = self._by(queries["requests"], "")
        errors = self._by(queries["errors"], "")
        latency = {float(le): v for le, v in self._by(queries["latency"], "le").items()}
        sample = SlotSample(
            requests.get("", 0.0),
            # no 5xx series at all is no errors, once the slot answered anything
            errors.get("", 0.0),
            latency,
            labels,
            values,
        )
        return Measured(
            sample,
            queries,
            empty=not requests and not latency and not labels,
            predictions="labels" in queries,
        )

    def ask(self, query: str, slot: str, seconds: float, ago: float = 0.0) -> Answer:
        resolved = (
            query.replace("{selector}", self._series(slot).matchers)
            .replace("{window}", window(seconds))
            .replace("{offset}", offset(ago))
        )
        rows = self.instant(resolved)
        if not rows:
            return Answer(None, resolved)
        if len(rows) > 1:
            raise ProviderError(
                f"the query {resolved!r} returned {len(rows)} series; a check needs one "
                "number (wrap it in sum(...) or another aggregation)"
            )
        value = float(rows[0]["value"][1])
        return Answer(None if math.isnan(value) else value, resolved)


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
