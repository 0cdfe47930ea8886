"""A step whose stable slot takes no traffic (after a blue-green switch, in the bake) judges the
candidate against the stable's figures from before it went idle. That reference window grows
with the watched step: a stable whose last seconds before the switch hold no scrape (a loaded
machine's late scrapes; a clean-clone CI saw it) is compared over more of its traffic once the
step extends, instead of staying inconclusive until the release rolls back."""

from __future__ import annotations

import math
from typing import Any

import pytest

from mlops.core.policy import ReleasePolicy
from mlops.release.analysis import Measured
from mlops.release.targets.base import SlotSample
from tasks.release import watch_candidate

pytestmark = pytest.mark.unit

RATE = 40.0  # requests a second, on both slots
STEP = 0.3  # seconds of the step (bake_seconds)
UNSCRAPED = 0.5  # the stable's last seconds before it went idle that no scrape holds


def sample(requests: float) -> SlotSample:
    latency = {0.005: 0.5 * requests, 0.01: 0.99 * requests, 0.05: requests, math.inf: requests}
    return SlotSample(requests, 0.0, latency, {"yes": requests / 2, "no": requests / 2})


class Provider:
    name = "emulated"

    def __init__(self) -> None:
        self.stable_windows: list[float] = []

    def measure(self, slot: str, seconds: float, ago: float = 0.0) -> Measured:
        if slot == "candidate":
            return Measured(sample(RATE * seconds))
        self.stable_windows.append(seconds)
        # only the part of the window older than the unscraped end holds growth
        counted = max(0.0, seconds - UNSCRAPED)
        return Measured(sample(RATE * counted), empty=counted == 0)

    def ask(self, query: str, slot: str, seconds: float, ago: float = 0.0) -> Any:
        raise AssertionError("no user checks in this policy")


class Target:
    def __init__(self) -> None:
        self.provider = Provider()

    def metrics(self) -> Provider:
        return self.provider

    def health(self) -> None:
        return None


def test_an_extended_step_widens_the_stable_reference_until_it_holds_figures() -> None:
    policy = ReleasePolicy(
        bake_seconds=STEP,
        analysis_interval_seconds=0.05,
        min_requests=5,
        warmup_requests=0,
        on_inconclusive="extend",
        max_extensions=3,
    )
    target = Target()
    decision = watch_candidate.fn(
        target,
        "m",
        "stable",
        "candidate",
        STEP,
        policy,
        stable_before=True,
    )
    assert decision.action == "pass", decision.reason
    windows = target.provider.stable_windows
    assert windows[0] == STEP and max(windows) > UNSCRAPED  # it looked further back as it went
