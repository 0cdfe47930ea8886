"""Several models on one local stack: each router gets its own ports, and keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.core.settings import Settings
from mlops.release.targets.local import router_ports

pytestmark = pytest.mark.unit


def _settings(tmp_path: Path, port: int = 8100, admin: int = 8101) -> Settings:
    return Settings(state_dir=tmp_path / ".mlops", router_port=port, router_admin_port=admin)


def test_each_model_gets_its_own_pair_and_keeps_it(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert router_ports(s, "a") == (8100, 8101)
    assert router_ports(s, "b") == (8102, 8103)
    assert router_ports(s, "c") == (8104, 8105)
    assert router_ports(s, "a") == (8100, 8101)  # recorded: the same after a restart
    assert router_ports(s, "b") == (8102, 8103)


def test_new_settings_ports_move_every_model_with_them(tmp_path: Path) -> None:
    router_ports(_settings(tmp_path), "a")
    router_ports(_settings(tmp_path), "b")
    moved = _settings(tmp_path, 9000, 9001)
    assert router_ports(moved, "b") == (9000, 9001)
    assert router_ports(moved, "a") == (9002, 9003)


def test_ports_far_apart_pair_up_without_overlap(tmp_path: Path) -> None:
    s = _settings(tmp_path, 8000, 8500)
    pairs = [router_ports(s, m) for m in ("a", "b", "c")]
    used = [p for pair in pairs for p in pair]
    assert len(set(used)) == 6 and pairs[0] == (8000, 8500) and pairs[1] == (8002, 8502)
