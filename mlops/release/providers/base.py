"""The metrics provider interface the release's analysis reads through."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mlops.core.errors import MlopsError
from mlops.core.policy import QueryCheck
from mlops.release.analysis import Answer, Measured, Window


class ProviderError(MlopsError):
    """The metrics provider cannot be reached or refused a query (not: the answer was empty)."""


class MetricsProvider(Protocol):
    """Figures of one slot over the last ``seconds``, now, and the answers of user queries.

    An empty answer is not an error: it is returned as such (``Measured.empty``,
    ``Answer.value is None``) and the analysis calls it inconclusive. A provider that cannot
    be reached raises ``ProviderError``."""

    name: str

    def measure(self, slot: str, seconds: float, ago: float = 0.0) -> Measured:
        """Requests, errors, latency buckets and predictions of ``slot`` over the ``seconds``
        that ended ``ago`` seconds before now."""
        ...

    def ask(self, query: str, slot: str, seconds: float, ago: float = 0.0) -> Answer:
        """A user check's ``query`` (``{selector}``, ``{window}`` and ``{offset}`` filled in
        for ``slot``)."""
        ...


def measure_window(
    provider: MetricsProvider,
    candidate: str,
    stable: str,
    seconds: float,
    checks: Sequence[QueryCheck] = (),
    reference: tuple[float, float] | None = None,
) -> Window:
    """Both slots over the last ``seconds``, and every user check asked of both: what
    ``mlops.release.analysis.analyse`` judges. ``reference`` (seconds, ago) measures the
    stable side over another window instead: before the step, when the stable slot takes no
    traffic in it (after a blue-green switch, in the bake after promotion)."""
    back, ago = reference or (seconds, 0.0)
    answers = {
        check.name: (
            provider.ask(check.query, candidate, seconds),
            provider.ask(check.query, stable, back, ago),
        )
        for check in checks
    }
    return Window(
        provider.measure(candidate, seconds),
        provider.measure(stable, back, ago),
        seconds,
        answers,
    )
