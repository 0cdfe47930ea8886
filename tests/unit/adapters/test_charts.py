"""The charts people look at: a drifted column's two distributions side by side, and a
release's checks over its steps (``mlops.adapters.charts``), read back from the figures."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlops.adapters.charts import (
    TOP_CATEGORIES,
    canary_figure,
    close_figure,
    distribution_figure,
)


def _png(figure: Any) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png")
    close_figure(figure)
    return out.getvalue()


def test_a_numeric_column_is_drawn_as_shares_on_shared_bins() -> None:
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.normal(40, 10, 2000))
    window = pd.Series(np.append(rng.normal(55, 10, 990), [np.nan] * 10))
    figure = distribution_figure("age", reference, window, "training data")
    left, right = figure.axes
    heights = [[p.get_height() for p in ax.patches] for ax in (left, right)]
    assert [sum(h) for h in heights] == [pytest.approx(1.0), pytest.approx(1.0)]  # shares
    edges = [[p.get_x() for p in ax.patches] for ax in (left, right)]
    assert edges[0] == edges[1]  # the same bins on both sides
    # the window's mass sits further right, where its shift put it
    centre = [np.average(e, weights=h) for e, h in zip(edges, heights, strict=True)]
    assert centre[1] - centre[0] > 10
    assert left.get_title() == "training data (2000 rows)"
    assert right.get_title() == "window (990 rows, 10 missing)"
    assert figure._suptitle.get_text() == "age: training data against the window"
    assert _png(figure).startswith(b"\x89PNG")


def test_a_category_column_shows_its_commonest_categories_and_the_rest_as_other() -> None:
    names = [f"c{k:02d}" for k in range(TOP_CATEGORIES + 5)]
    reference = pd.Series(names * 10)
    window = pd.Series(["c00"] * 50 + names)
    figure = distribution_figure("job", reference, window, "training data")
    left, right = figure.axes
    figure.canvas.draw()  # categorical tick labels are set when drawn; the axes share them
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert len(labels) == TOP_CATEGORIES + 1 and labels[0] == "(other)"  # barh: top is last
    assert labels[-1] == "c00"  # the commonest over both sides, at the top
    widths = {t: p.get_width() for t, p in zip(labels, right.patches, strict=True)}
    assert widths["c00"] == pytest.approx(51 / len(window))
    assert sum(p.get_width() for p in left.patches) == pytest.approx(1.0)
    close_figure(figure)


def _step(number: int, name: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"step": number, "name": name, "decision": {"action": "pass", "checks": checks}}


def test_the_release_chart_draws_each_metric_over_the_steps_and_circles_a_failure() -> None:
    steps = [
        _step(1, "at 10%", [{"name": "error-rate", "outcome": "pass", "candidate": 0.0, "stable": 0.01},
                            {"name": "latency", "outcome": "pass", "candidate": 0.02, "stable": 0.02}]),
        _step(2, "at 50%", [{"name": "error-rate", "outcome": "fail", "candidate": 0.3, "stable": 0.01},
                            {"name": "latency", "outcome": "inconclusive", "candidate": None, "stable": 0.02}]),
    ]  # fmt: skip
    figure = canary_figure(steps)
    errors, latency = figure.axes
    assert errors.get_ylabel() == "error-rate" and latency.get_ylabel() == "latency"
    lines = {line.get_label(): list(line.get_ydata()) for line in errors.get_lines()}
    assert lines == {"candidate": [0.0, 0.3], "stable": [0.01, 0.01]}
    assert [list(c.get_offsets()[0]) for c in errors.collections] == [[1.0, 0.3]]  # the failure
    assert len(latency.collections) == 0
    candidate = next(line for line in latency.get_lines() if line.get_label() == "candidate")
    assert list(candidate.get_xdata()) == [0]  # a step without a figure is left out, not zero
    ticks = [t.get_text() for t in latency.get_xticklabels()]
    assert ticks == ["step 1\nat 10%", "step 2\nat 50%"]
    assert _png(figure).startswith(b"\x89PNG")


def test_a_release_whose_steps_measured_nothing_says_so() -> None:
    figure = canary_figure([_step(1, "at 50%", [])])
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.texts] == ["no step measured a metric"]
    close_figure(figure)
