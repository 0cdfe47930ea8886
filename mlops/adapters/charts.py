"""Charts for MLflow runs, drawn with matplotlib off screen (the Agg backend): PNGs where people
would rather look than read a table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlops.ml.explanations import Importance


def importance_figure(importance: Importance, top: int = 20) -> Any:
    """A bar chart of the ``top`` most important columns, most important at the top."""
    plt = _pyplot()
    items = importance.top(top)[::-1]
    figure, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.2))
    ax.barh([name for name, _ in items], [value for _, value in items], color="#3b6ea8")
    ax.set_xlabel(importance.measure)
    ax.set_title(f"What drives the answers ({importance.rows} holdout rows)")
    figure.tight_layout()
    return figure


#: Categories a distribution chart shows; the rest are summed as "(other)".
TOP_CATEGORIES = 12


def distribution_figure(column: str, reference: pd.Series, window: pd.Series, against: str) -> Any:
    """The column's distribution in the training data (or whatever ``against`` names) and in the
    window, side by side on shared axes: histograms of shares on the same bins for numbers, the
    shares of the most common categories for the rest. Missing values are left out and counted
    in the titles."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    sides = [(against, reference, "#7f8c99"), ("window", window, "#c0392b")]
    numeric = pd.api.types.is_numeric_dtype(reference) and pd.api.types.is_numeric_dtype(window)
    if numeric:
        values = [pd.to_numeric(s, errors="coerce").dropna().to_numpy(float) for _, s, _ in sides]
        both = np.concatenate(values) if any(len(v) for v in values) else np.zeros(1)
        bins = np.histogram_bin_edges(both, bins=30)
        for ax, (name, series, color), v in zip(axes, sides, values, strict=True):
            weights = np.full(len(v), 1 / len(v)) if len(v) else None
            ax.hist(v, bins=bins, weights=weights, color=color)
            ax.set_title(_title(name, series))
            ax.set_xlabel(column)
    else:
        shares = [s.dropna().astype(str).value_counts(normalize=True) for _, s, _ in sides]
        order = list((shares[0].add(shares[1], fill_value=0)).sort_values(ascending=False).index)
        shown = order[:TOP_CATEGORIES]
        for ax, (name, series, color), share in zip(axes, sides, shares, strict=True):
            heights = [float(share.get(c, 0.0)) for c in shown]
            labels = list(shown)
            if len(order) > len(shown):
                heights.append(float(share.drop(shown, errors="ignore").sum()))
                labels.append("(other)")
            ax.barh(labels[::-1], heights[::-1], color=color)
            ax.set_title(_title(name, series))
            ax.set_xlabel("share of rows")
    axes[0].set_ylabel("share of rows" if numeric else column)
    figure.suptitle(f"{column}: {against} against the window")
    figure.tight_layout()
    return figure


def _title(name: str, series: pd.Series) -> str:
    missing = int(series.isna().sum())
    return f"{name} ({len(series) - missing} rows" + (f", {missing} missing)" if missing else ")")


def canary_figure(steps: list[dict[str, Any]]) -> Any:
    """A release's watched steps over time: per metric the candidate's and the stable version's
    figure at each step (a step document's ``decision.checks``, ``explain_step``), the step's traffic in the x labels and
    a failed check marked."""
    plt = _pyplot()
    metrics: dict[str, list[tuple[int, float | None, float | None, str]]] = {}
    labels = []
    for k, document in enumerate(steps):
        decision = dict(document.get("decision") or {})
        labels.append(f"step {document.get('step', k)}\n{document.get('name', '')}")
        for result in decision.get("checks") or []:
            metrics.setdefault(str(result["name"]), []).append(
                (k, _number(result.get("candidate")), _number(result.get("stable")),
                 str(result.get("outcome", ""))),
            )  # fmt: skip
    shown = [m for m, points in metrics.items() if any(p[1] is not None for p in points)]
    figure, axes = plt.subplots(
        max(1, len(shown)), 1, figsize=(8, 2.2 * max(1, len(shown)) + 0.6), sharex=True,
        squeeze=False,
    )  # fmt: skip
    for ax, name in zip(axes[:, 0], shown, strict=False):
        points = metrics[name]
        for index, label, color in ((1, "candidate", "#c0392b"), (2, "stable", "#7f8c99")):
            xs = [p[0] for p in points if p[index] is not None]
            ys = [p[index] for p in points if p[index] is not None]
            if xs:
                ax.plot(xs, ys, marker="o", label=label, color=color)
        for x, value, _, outcome in points:
            if outcome == "fail" and value is not None:
                ax.scatter([x], [value], s=120, facecolors="none", edgecolors="black", zorder=3)
        ax.set_ylabel(name)
        ax.legend(loc="best", fontsize="small")
    bottom = axes[-1, 0]
    bottom.set_xticks(range(len(labels)), labels, fontsize="small")
    if not shown:
        bottom.text(0.5, 0.5, "no step measured a metric", ha="center", transform=bottom.transAxes)
    figure.suptitle("The canary's checks at each step (a circle: a failed check)")
    figure.tight_layout()
    return figure


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def close_figure(figure: Any) -> None:
    """Free a figure once it is written (pyplot keeps every open figure alive)."""
    _pyplot().close(figure)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: the chart goes to a run as a PNG
    import matplotlib.pyplot as plt

    return plt
