"""PrometheusProvider against a real Prometheus (the installed binary, on a free port, 1 s
scrapes, a throw-away TSDB) scraping a real HTTP server whose prometheus_client counters and
histograms the test moves: the increases come back per slot, an empty selector is `empty`, a
query of several series and a Prometheus that is away are ProviderErrors that say so."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from mlops.core.policy import QueryCheck, ReleasePolicy
from mlops.release.analysis import analyse
from mlops.release.providers.base import ProviderError, measure_window
from mlops.release.providers.prometheus import PrometheusProvider, SlotSeries
from mlops.stack.processes import free_port, spawn, stop_process_group

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

HOST = "127.0.0.1"


def _series(slot: str) -> SlotSeries:
    matchers = f'slot="{slot}"'
    return SlotSeries(
        requests=f"app_requests_total{{{matchers}}}",
        errors=f'app_requests_total{{{matchers},code=~"5.."}}',
        latency=f"app_seconds_bucket{{{matchers}}}",
        labels=f"app_predictions_total{{{matchers}}}",
        values=f"app_value_bucket{{{matchers}}}",
        matchers=matchers,
    )


SERIES = {slot: _series(slot) for slot in ("stable", "candidate", "idle")}


@dataclass
class App:
    """The scraped server's metrics: what the test moves."""

    requests: Counter
    seconds: Histogram
    predictions: Counter
    value: Histogram

    def answer(self, slot: str, code: str, seconds: float, label: str) -> None:
        self.requests.labels(slot, code).inc()
        self.seconds.labels(slot).observe(seconds)
        if code == "200":
            self.predictions.labels(slot, label).inc()


def _query(url: str, query: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=5)
    answer.raise_for_status()  # a Prometheus still starting answers 503 "Service Unavailable"
    body = answer.json()
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait_for(url: str, query: str, value: float, timeout: float = 30) -> None:
    """Until Prometheus has scraped ``query`` at ``value``."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = _query(url, query)
            if seen and float(seen[0]["value"][1]) == value:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{query} never reached {value}: {seen}")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, App]]:
    """A Prometheus scraping the app every second, the app's counters at zero and scraped."""
    registry = CollectorRegistry()
    app = App(
        Counter("app_requests", "Requests.", ["slot", "code"], registry=registry),
        Histogram("app_seconds", "Latency.", ["slot"], buckets=(0.01, 0.1, 1), registry=registry),
        Counter("app_predictions", "Predictions.", ["slot", "label"], registry=registry),
        Histogram("app_value", "Values.", ["slot"], buckets=(1, 10), registry=registry),
    )
    for slot in ("stable", "candidate"):  # every series exists at 0 before anything counts
        for code in ("200", "500"):
            app.requests.labels(slot, code)
        app.seconds.labels(slot)
        for label in ("yes", "no"):
            app.predictions.labels(slot, label)
    app_port, prom_port = free_port(), free_port()
    server, _ = start_http_server(app_port, HOST, registry=registry)
    folder = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "app", "static_configs": [{"targets": [f"{HOST}:{app_port}"]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = spawn(
        [
            str(shutil.which("prometheus")),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--web.listen-address={HOST}:{prom_port}",
            f"--storage.tsdb.path={folder / 'data'}",
        ],
        Path(folder / "prometheus.log"),
    )
    url = f"http://{HOST}:{prom_port}"
    try:
        _wait_for(url, 'count(app_requests_total{job="app"})', 4, timeout=60)
        time.sleep(2.5)  # two scrapes more at zero: the increases below start from a sample of 0
        for _ in range(15):
            app.answer("stable", "200", 0.005, "no")
        app.answer("stable", "200", 0.05, "yes")
        for i in range(12):
            app.answer("candidate", "200", 0.5, "yes" if i % 3 else "no")
        for _ in range(4):
            app.answer("candidate", "500", 0.05, "")
        _wait_for(url, 'sum(app_requests_total{slot="candidate"})', 16)
        _wait_for(url, 'sum(app_requests_total{slot="stable"})', 16)
        time.sleep(1.5)  # a scrape after the last change: both ends of each window are known
        yield url, app
    finally:
        stop_process_group(proc.pid, timeout=10)
        server.shutdown()


def test_measure_returns_each_slots_increases_with_their_queries(
    scraped: tuple[str, App],
) -> None:
    url, _ = scraped
    provider = PrometheusProvider(url, SERIES)
    candidate = provider.measure("candidate", seconds=30)

    # exact: the counters at the window's end less those at its start (increase() would
    # extrapolate towards the window's edges and overcount by up to a third)
    def near(figure: float, true: float) -> bool:
        return figure == true

    sample = candidate.sample
    assert not candidate.empty
    assert near(sample.requests, 16) and near(sample.errors, 4), sample
    assert set(sample.labels) == {"yes", "no"}
    assert near(sample.labels["yes"], 8) and near(sample.labels["no"], 4), sample.labels
    assert sorted(sample.latency_buckets) == [0.01, 0.1, 1.0, float("inf")]
    assert sample.latency_buckets[0.01] == 0
    assert near(sample.latency_buckets[0.1], 4)  # the fast 500s
    assert near(sample.latency_buckets[1.0], 16)
    errors = 'app_requests_total{slot="candidate",code=~"5.."}'
    assert candidate.queries["errors"] == (
        f"sum({errors}) - (sum({errors} offset 30s) or vector(0))"
    )
    stable = provider.measure("stable", seconds=30)
    assert stable.sample.requests == 16
    assert stable.sample.errors == 0  # its 5xx series stayed at 0


def test_a_window_before_the_counts_holds_none_of_them(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    # the last 2 s ended 30 s ago, before the app existed: nothing at all
    past = PrometheusProvider(url, SERIES).measure("candidate", seconds=2, ago=30)
    assert past.empty and past.sample.requests == 0
    assert " offset 30s" in past.queries["requests"]


def test_a_selector_that_matches_nothing_is_empty_not_an_error(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    idle = PrometheusProvider(url, SERIES).measure("idle", seconds=30)
    assert idle.empty
    assert idle.sample.requests == 0 and idle.sample.latency_buckets == {}


def test_the_analysis_of_a_measured_window_fails_the_candidate(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    check = QueryCheck(
        name="error-share",
        query='sum(increase(app_requests_total{{selector},code="500"}[{window}]))',
        max_increase=1,
    )
    policy = ReleasePolicy(min_requests=10, checks=(check,))
    provider = PrometheusProvider(url, SERIES)
    window = measure_window(provider, "candidate", "stable", 30, policy.checks)
    results = {r.name: r for r in analyse(window, policy)}
    assert results["error-rate"].outcome == "fail"  # 4 of 16 against 0 of 16
    assert results["latency"].outcome == "fail"  # 12 of 16 at 500 ms against 5 ms
    assert results["error-share"].outcome == "fail"
    assert results["error-share"].query["candidate"] == (
        'sum(increase(app_requests_total{slot="candidate",code="500"}[30s]))'
    )


def test_ask_fills_in_the_slot_window_and_offset(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    provider = PrometheusProvider(url, SERIES)
    answer = provider.ask("sum(increase(app_requests_total{{selector}}[{window}]))", "stable", 30)
    assert answer.value is not None and 16 <= answer.value <= 16 * 1.5
    assert answer.query == 'sum(increase(app_requests_total{slot="stable"}[30s]))'
    past = provider.ask("sum(app_requests_total{{selector}}{offset})", "stable", 5, ago=120)
    assert past.value is None and past.query.endswith(" offset 120s)")


def test_an_empty_answer_is_none(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    answer = PrometheusProvider(url, SERIES).ask("sum(nothing_total{{selector}})", "stable", 30)
    assert answer.value is None and answer.query == 'sum(nothing_total{slot="stable"})'


def test_a_query_of_several_series_is_refused_naming_it(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    with pytest.raises(ProviderError, match=r"returned 2 series; a check needs one number"):
        PrometheusProvider(url, SERIES).ask("app_requests_total{{selector}}", "stable", 30)


def test_a_query_prometheus_refuses_is_a_provider_error(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    with pytest.raises(ProviderError, match=r"Prometheus refused .*bad_data"):
        PrometheusProvider(url, SERIES).ask("sum(rate(x{{selector}}[{window}])", "stable", 30)


def test_an_unknown_slot_is_a_provider_error(scraped: tuple[str, App]) -> None:
    url, _ = scraped
    with pytest.raises(ProviderError, match="no metrics series are known for slot 'blue'"):
        PrometheusProvider(url, SERIES).measure("blue", 30)


def test_prometheus_away_is_a_provider_error_naming_its_url() -> None:
    url = f"http://{HOST}:{free_port()}"
    with pytest.raises(ProviderError, match=f"Prometheus at {url} cannot be reached"):
        PrometheusProvider(url, SERIES, timeout=2).measure("stable", 30)
