"""`mlops train --hand-over`: a version the gates reject is reported as the reason, in one line."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from mlops.core.settings import Settings
from tests.helpers import BIN, adult_frame, lenient_policy, make_project, mlops

pytestmark = pytest.mark.integration


def test_a_failing_gate_of_the_hand_over_is_one_line_not_a_traceback(
    local_stack: Settings, tmp_path: Path
) -> None:
    name = f"cli-gate-{uuid.uuid4().hex[:6]}"
    pipeline = make_project(tmp_path, adult_frame(1500), model_name=name)
    lenient_policy(pipeline, metrics={"roc_auc": {"min": 0.999}})  # no model here reaches it
    # the session's stack (its servers and ports are in this process's environment)
    env = {**os.environ, "MLOPS_PROJECT_DIR": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"}

    out = mlops(env, "train", "--pipeline", str(pipeline), "--hand-over", "promotion")

    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    (error,) = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: metric-thresholds: roc_auc ") and "0.999" in error, error
