"""Charts for MLflow runs, drawn with matplotlib off screen (the Agg backend): PNGs where people
would rather look than read a table."""

from __future__ import annotations

from typing import Any

from mlops.ml.explanations import Importance


def importance_figure(importance: Importance, top: int = 20) -> Any:
    """A bar chart of the ``top`` most important columns, most important at the top."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the chart goes to the run as a PNG
    import matplotlib.pyplot as plt

    items = importance.top(top)[::-1]
    figure, ax = plt.subplots(figsize=(7, 0.3 * len(items) + 1.2))
    ax.barh([name for name, _ in items], [value for _, value in items], color="#3b6ea8")
    ax.set_xlabel(importance.measure)
    ax.set_title(f"What drives the answers ({importance.rows} holdout rows)")
    figure.tight_layout()
    return figure
