"""In-process inference: the compiled path (mlops.serving.fast_path) against the registered one.

The example's pipeline (examples/adult: HistGradientBoosting behind the shipped feature pipeline)
is trained on the shipped data as the training flow trains it, saved as an MLflow model folder as
the training run logs it, and loaded as the server loads it (``load_model_folder``: verified,
compiled, checked against the registered path on its probe rows). Then, alternating in one
process, ``ServedModel.predict_records`` (what /predict calls with validated rows) answers the
benchmarks' one row and a batch of 64:
  * registered: the Pipeline on a DataFrame built from the rows,
  * compiled:   the rows into a float array by numpy, then the estimator.
Itemised beside them: the compiled transform alone and the estimator alone on the array (the
floor the compiled path adds its transform to). Prints p50 and p99 of each and ends with the
one-row p50 speed-up, registered / compiled.

    .venv/bin/python benchmarks/inference_path.py [--repeat 1000]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import EXAMPLE, ROW, STATE, percentile
from threadpoolctl import ThreadpoolController

from mlops.serving.fast_path import disagreement
from mlops.serving.model import ServedModel


def served_example(folder: Path) -> ServedModel:
    """The example's model, trained, saved and loaded as the pipeline and the server do."""
    import mlflow.sklearn

    from mlops.adapters.tracking import model_artifact
    from mlops.core.config import load_pipeline_config
    from mlops.core.integrity import artifact_checksum
    from mlops.ml.data import parse_dataset
    from mlops.ml.problems import problem_for
    from mlops.ml.split import split_dataset
    from mlops.ml.training import train_model
    from mlops.serving.model import load_model_folder

    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    seed = EXAMPLE / "adult.csv.gz"
    frame = parse_dataset(seed.read_bytes(), seed.name, tuple(cfg.data.na_values))
    split = split_dataset(frame, cfg.features.columns, problem_for(cfg.target), cfg.split)
    model = train_model(split, cfg.features, cfg.model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        mlflow.sklearn.save_model(model, str(folder), **model_artifact(model, split))
    return load_model_folder(folder, cfg.model_name, 1, artifact_checksum(folder))


def timed(calls: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each call, ``repeat`` times, the calls alternating (the same machine load)."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlops-inference-path-"))
    try:
        model = served_example(work / "model")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(STATE, ignore_errors=True)  # _common's private-stack folder: unused here
    print(
        f"path: {model.path.name} ({model.path.reason}; max difference {model.path.max_difference})"
    )
    compiled = model.compiled
    assert compiled is not None, f"the example's pipeline did not compile: {model.path.reason}"
    registered = dataclasses.replace(model, compiled=None)
    one, batch = [ROW], [ROW] * 64
    array = compiled.transform(one)
    fast_answer, slow_answer = model.predict_records(batch), registered.predict_records(batch)
    assert fast_answer.probabilities is not None and slow_answer.probabilities is not None
    check = disagreement(
        (fast_answer.predictions, fast_answer.probabilities),
        (slow_answer.predictions, slow_answer.probabilities),
        model.problem.classes,
    )
    assert check.agrees, check.first

    # made once the model has loaded OpenMP, as the server's (a controller per call would time
    # the scan of every loaded library instead of the estimator)
    threads = ThreadpoolController()

    def estimator_alone() -> Any:  # under the one-thread limit both paths apply to small batches
        with threads.limit(limits=1, user_api="openmp"):
            return compiled.final.predict_proba(array)

    seconds = timed(
        {
            "registered, one row": lambda: registered.predict_records(one),
            "compiled, one row": lambda: model.predict_records(one),
            "compiled transform alone, one row": lambda: compiled.transform(one),
            "estimator alone on the array, one row": estimator_alone,
            "registered, 64 rows": lambda: registered.predict_records(batch),
            "compiled, 64 rows": lambda: model.predict_records(batch),
        },
        args.repeat,
    )
    ms = 1000
    for name, values in seconds.items():
        print(
            f"{name}: p50 {percentile(values, 0.5) * ms:.3f} ms, "
            f"p99 {percentile(values, 0.99) * ms:.3f} ms"
        )
    slow, fast = (percentile(seconds[f"{p}, one row"], 0.5) for p in ("registered", "compiled"))
    floor = percentile(seconds["estimator alone on the array, one row"], 0.5)
    print(f"compiled one-row p50 over the estimator alone: +{(fast - floor) * ms:.3f} ms")
    print(f"{slow / fast:.2f}x one-row p50 speed-up of the compiled path (registered / compiled)")


if __name__ == "__main__":
    main()
