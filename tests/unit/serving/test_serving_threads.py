"""The model server predicts small batches on one OpenMP thread (large ones on all), by its
registered path and by its compiled one.

Checked in a fresh interpreter that imports the server's model module first and scikit-learn
after, as `mlops serve` does: a thread-pool controller made too early never sees OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import PROJECT

pytestmark = pytest.mark.unit

PROBE = """
import numpy as np, pandas as pd
from mlops.serving.fast_path import CompiledPipeline, NumericBlock
from mlops.serving.model import SINGLE_THREAD_ROWS, Column, ServedModel  # first, as the server does
import sklearn.ensemble  # then scikit-learn and its OpenMP runtime, with the model
from threadpoolctl import threadpool_info

class Probe:
    threads = []
    def predict_proba(self, X):
        self.threads.append(max([p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openmp"] or [0]))
        return np.tile([0.4, 0.6], (len(X), 1))

probe = Probe()
columns = [Column("a", "long", True)]
if "{path}" == "compiled":
    model = ServedModel("m", 1, None, columns, compiled=CompiledPipeline((NumericBlock(("a",), ()),), probe))
else:
    model = ServedModel("m", 1, probe, columns)
model.predict_records([{{"a": 1}}])
model.predict_records([{{"a": i}} for i in range(SINGLE_THREAD_ROWS + 1)])
print(*probe.threads)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: one thread either way")
@pytest.mark.parametrize("path", ["registered", "compiled"])
def test_small_batches_predict_on_one_openmp_thread_and_large_ones_on_all(path: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(path=path)],
        cwd=PROJECT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    small, large = (int(n) for n in done.stdout.split())
    assert small == 1, "a one-row batch ran on several OpenMP threads"
    assert large > 1
