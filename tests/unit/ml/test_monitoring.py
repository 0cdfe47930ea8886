"""Monitoring on a prediction log written by the server's own writer: windows, bad input, verdicts."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from examples.adult.traffic import shift_adult
from mlops.adapters.prediction_log import (
    FEEDBACK,
    FEEDBACK_SCHEMA,
    PREDICTIONS,
    LogStore,
    PredictionLog,
    file_name,
)
from mlops.adapters.prediction_window import SETTLE, read_prediction_window
from mlops.core.config import load_pipeline_config
from mlops.core.policy import MonitoringPolicy
from mlops.ml.drift import drift_tests, read_snapshot
from mlops.ml.monitoring import (
    MonitoringOutcome,
    PerformanceVerdict,
    Window,
    detect_drift,
    detect_prediction_shift,
    evidence,
    measure_live_performance,
    render_drift_report,
)
from mlops.ml.problems import Predictions, Problem
from mlops.ml.production_data import MAX_ROWS, labelled_rows
from tests.helpers import EXAMPLE, adult_frame

pytestmark = pytest.mark.unit

FEATURES = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
]  # fmt: skip
POLICY = MonitoringPolicy(min_rows=1000, min_labelled_rows=100)
BINARY = Problem("binary", ("0", "1"), "label")


def write_log(root: Path, frame: pd.DataFrame, version: int = 1, labels: bool = True) -> list[str]:
    """Log ``frame`` as the server would: one request per row, then the labels as feedback."""
    log = PredictionLog(str(root), batch_rows=10_000, max_age_seconds=3600)
    rng = np.random.default_rng(0)
    ids = [f"{i:032x}" for i in rng.integers(0, 2**62, len(frame))]
    now = datetime.now(UTC)
    features = frame[FEATURES].to_dict("records")
    y = (frame["income"] == ">50K").astype(int).to_numpy()
    proba = np.clip(y * 0.7 + rng.random(len(frame)) * 0.3, 0, 1)  # an informative score
    log.append(
        PREDICTIONS,
        [
            {"request_id": rid, "row": 0, "time": now, "model": "m", "version": version,
             "prediction": int(p >= 0.5), "probability": float(p), **row}
            for rid, row, p in zip(ids, features, proba, strict=True)
        ],
    )  # fmt: skip
    if labels:
        log.append(
            FEEDBACK,
            [{"request_id": r, "label": int(v), "time": now} for r, v in zip(ids, y, strict=True)],
        )
    log.close()
    return ids


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows without missing values, typed as the training data is (and the server logs it)."""
    typed = pd.read_csv(io.StringIO(frame.to_csv(index=False)), na_values=["?"])
    return typed.dropna().reset_index(drop=True)


def test_a_window_holds_the_rows_of_its_time_span_with_their_labels(tmp_path: Path) -> None:
    write_log(tmp_path, clean(adult_frame(300)))
    now = datetime.now(UTC)
    window = read_prediction_window(
        str(tmp_path), now - timedelta(minutes=5), now + timedelta(seconds=1), FEATURES, 10_000
    )
    assert len(window.rows) == len(clean(adult_frame(300))) and window.labelled == len(window.rows)
    assert window.problems == []
    later = read_prediction_window(
        str(tmp_path), now + timedelta(seconds=1), now + timedelta(minutes=1), FEATURES, 10_000
    )
    assert later.rows.empty and later.problems == []


def test_an_empty_or_missing_log_is_an_empty_window_not_an_error(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    window = read_prediction_window(str(tmp_path / "nothing-here"), None, now, FEATURES, 10_000)
    assert window.rows.empty and window.problems == []
    verdict = detect_drift(window, adult_frame(2000), FEATURES, POLICY)
    assert not verdict.judged and not verdict.detected
    assert "0 rows: too small to judge (needs 1000)" in verdict.reason


def _requests(start: int, n: int, predicted: datetime) -> list[dict[str, object]]:
    rows = clean(adult_frame(n))[FEATURES].to_dict("records")
    return [
        {"request_id": f"{start + i:032x}", "row": 0, "time": predicted, "model": "m",
         "version": 1, "prediction": 0, "probability": 0.2, **row}
        for i, row in enumerate(rows)
    ]  # fmt: skip


def _ids(window: object) -> set[str]:
    return set(window.rows["request_id"])  # type: ignore[attr-defined]


def test_rows_straddling_a_windows_end_are_judged_in_exactly_one_window(tmp_path: Path) -> None:
    """Rows predicted before a window ends but written after it was read belong to the next one;
    rows written before it ends are in it and never again."""
    log = PredictionLog(tmp_path, batch_rows=10_000, max_age_seconds=3600, spill_dir=tmp_path / "s")
    early = _requests(0, 50, datetime.now(UTC))
    log.append(PREDICTIONS, early)
    assert log.flush(timeout=30)  # written before the first window ends
    late = _requests(1000, 50, datetime.now(UTC))
    log.append(PREDICTIONS, late)  # predicted before the first window ends, still buffered
    first_end = datetime.now(UTC)
    first = read_prediction_window(str(tmp_path), None, first_end, FEATURES, 10_000)
    log.close()  # written after the first window was read
    second_end = datetime.now(UTC) + SETTLE
    second = read_prediction_window(str(tmp_path), first_end, second_end, FEATURES, 10_000)
    third = read_prediction_window(str(tmp_path), second_end, second_end + SETTLE, FEATURES, 10_000)

    assert all(r["time"] < first_end for r in late)
    assert _ids(first) == {r["request_id"] for r in early}
    assert _ids(second) == {r["request_id"] for r in late}
    assert third.rows.empty and not first.problems and not second.problems


def test_a_late_written_row_keeps_the_label_that_arrived_before_it_was_written(
    tmp_path: Path,
) -> None:
    """A batch spilled for hours is written into today's window; its labels, written on time into
    an hour partition that ended before the window began, still join it."""
    now = datetime.now(UTC)
    predicted = now - timedelta(hours=3)
    rows = _requests(0, 20, predicted)
    store = LogStore(str(tmp_path))
    labels = [{"request_id": r["request_id"], "label": 1, "time": predicted} for r in rows]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(labels, schema=FEEDBACK_SCHEMA), buffer)
    store.commit(store.stage(FEEDBACK, "labels", buffer.getvalue()),
                 store.destination(FEEDBACK, file_name(predicted, "labels")))  # fmt: skip
    log = PredictionLog(tmp_path, batch_rows=10_000, max_age_seconds=3600, spill_dir=tmp_path / "s")
    log.append(PREDICTIONS, rows)
    log.close()  # committed now, three hours after the prediction and its label

    window = read_prediction_window(
        str(tmp_path), now - timedelta(minutes=1), datetime.now(UTC) + SETTLE, FEATURES, 10_000
    )
    assert len(window.rows) == len(rows) and window.labelled == len(rows), window.problems
    assert window.problems == []
    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")  # retraining collects them all too
    collected = read_prediction_window(
        str(tmp_path), now - timedelta(minutes=1), now + SETTLE, cfg.features.columns, MAX_ROWS
    )
    frame = labelled_rows(collected, cfg)
    assert len(frame) == len(rows) and set(frame[cfg.target.column]) == {cfg.target.positive}
    assert collected.problems == []


def test_corrupt_files_missing_and_extra_columns_and_unknown_labels_are_reported(
    tmp_path: Path,
) -> None:
    frame = clean(adult_frame(400)).drop(columns=["native_country"]).assign(shoe_size=42)
    features = [c for c in FEATURES if c != "native_country"]
    log = PredictionLog(str(tmp_path), batch_rows=10_000, max_age_seconds=3600)
    now = datetime.now(UTC)
    log.append(PREDICTIONS, [{"request_id": f"{i:032x}", "time": now, "version": 1, "prediction": 0,
                              "probability": 0.1, **r} for i, r in enumerate(frame[[*features, "shoe_size"]].to_dict("records"))])  # fmt: skip
    log.append(FEEDBACK, [{"request_id": "f" * 32, "label": 1, "time": now}])
    log.close()
    partition = tmp_path / PREDICTIONS / f"date={now:%Y-%m-%d}" / f"hour={now:%H}"
    bad = partition / file_name(now, "corrupt")
    bad.write_bytes(b"PAR1 this is not parquet")
    (partition / "copied-by-hand.parquet").write_bytes(b"no commit stamp: no window holds it")

    window = read_prediction_window(
        str(tmp_path), now - timedelta(minutes=1), now + timedelta(seconds=1), FEATURES, 10_000
    )
    assert len(window.rows) == len(frame)
    problems = "\n".join(window.problems)
    assert f"{bad.name} is unreadable and was skipped" in problems
    assert "copied-by-hand.parquet has no commit stamp in its name: skipped" in problems
    assert "lacks feature column(s) ['native_country']" in problems
    assert "column(s) ['shoe_size'] are not in the reference: ignored" in problems
    assert "1 label(s) name request ids with no logged prediction" in problems
    assert "shoe_size" not in window.rows and window.labelled == 0


def test_unshifted_windows_raise_no_drift_and_the_shifted_one_does(tmp_path: Path) -> None:
    data = clean(adult_frame(9000))
    reference, live = data.iloc[:5000], data.iloc[5000:]
    for k, part in enumerate(np.array_split(live, 3)):  # repeated windows, none drifted
        root = tmp_path / f"window-{k}"
        write_log(root, part)
        window = read_prediction_window(
            str(root), None, datetime.now(UTC) + timedelta(seconds=1), FEATURES, 100_000
        )
        verdict = detect_drift(window, reference, FEATURES, POLICY)
        assert verdict.judged and not verdict.detected, verdict.reason
    root = tmp_path / "shifted"
    write_log(root, shift_adult(live))
    window = read_prediction_window(
        str(root), None, datetime.now(UTC) + timedelta(seconds=1), FEATURES, 100_000
    )
    verdict = detect_drift(window, reference, FEATURES, POLICY)
    assert verdict.detected and set(verdict.drifted) == {"age", "hours_per_week"}, verdict.reason
    assert verdict.reason.startswith("2 of 14 columns drifted (14%; limit 10%) against the ")
    assert verdict.reason.endswith("training data (5000 rows): age, hours_per_week")
    path, differ = render_drift_report(
        window, reference, FEATURES, POLICY, verdict, tmp_path / "r.html"
    )
    assert Path(path).stat().st_size > 10_000 and differ == []  # the report decides alike


def test_drift_tests_decide_as_evidentlys_preset_on_every_column() -> None:
    """The per-column tests run directly against ``Report([DataDriftPreset()])``: same test, same
    score, same decision, on small frames (K-S, chi-square, Z-test) and large ones (Wasserstein,
    Jensen-Shannon)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    data = clean(adult_frame(12_000))
    shifted = shift_adult(data.iloc[6000:])
    for rows in (600, 5000):  # Evidently picks its tests by the reference size: <= 1000 or more
        ref, cur = data.iloc[:rows][FEATURES], shifted.iloc[:rows][FEATURES]
        ours = drift_tests(cur, ref)
        plain = read_snapshot(Report([DataDriftPreset()]).run(cur, ref).dict()["metrics"])
        assert {c.column: (c.method, c.drifted) for c in ours.columns} == {
            c.column: (c.method, c.drifted) for c in plain.columns
        }
        for a, b in zip(ours.columns, sorted(plain.columns, key=lambda c: FEATURES.index(c.column)), strict=True):  # fmt: skip
            assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-9), a.column
        assert ours.share == pytest.approx(plain.share)
        assert ours.drifted  # the shift is seen at both sizes


def test_a_column_without_values_is_skipped_with_its_reason_not_judged() -> None:
    data = clean(adult_frame(3000))
    ref, cur = data.iloc[:1500][FEATURES], data.iloc[1500:][FEATURES].copy()
    cur["capital_gain"] = np.nan
    reading = drift_tests(cur, ref)
    assert reading.skipped == {"capital_gain": "no values in the current data"}
    assert "capital_gain" not in {c.column for c in reading.columns}
    assert reading.missing_share["capital_gain"] == 1.0 and len(reading.columns) == 13


def test_live_performance_is_judged_on_the_serving_version_once_enough_labels_arrived(
    tmp_path: Path,
) -> None:
    data = clean(adult_frame(1500))
    write_log(tmp_path, data.iloc[:50], version=1)
    window = read_prediction_window(
        str(tmp_path), None, datetime.now(UTC) + timedelta(seconds=1), FEATURES, 100_000
    )
    few = measure_live_performance(window, 1, {"roc_auc": 0.9}, POLICY, BINARY)
    assert not few.judged and "50 labelled rows (needs 100)" in few.reason

    write_log(tmp_path / "more", data, version=1)
    window = read_prediction_window(
        str(tmp_path / "more"), None, datetime.now(UTC) + timedelta(seconds=1), FEATURES, 100_000
    )
    fine = measure_live_performance(window, 1, {"roc_auc": 0.9}, POLICY, BINARY)
    assert fine.judged and not fine.degraded and fine.live is not None and fine.live > 0.9
    worse = measure_live_performance(window, 1, {"roc_auc": fine.live + 0.1}, POLICY, BINARY)
    assert worse.judged and worse.degraded and "worse by 0.100; limit 0.050" in worse.reason
    unknown = measure_live_performance(window, 1, {}, POLICY, BINARY)
    assert not unknown.judged and "no holdout roc_auc" in unknown.reason
    other_version = measure_live_performance(window, 2, {"roc_auc": 0.9}, POLICY, BINARY)
    assert not other_version.judged and "0 labelled rows" in other_version.reason


def test_the_shift_moves_what_it_documents() -> None:
    frame = clean(adult_frame(3000))
    shifted = shift_adult(frame)
    assert (shifted["age"] - frame["age"]).max() == 8 and shifted["age"].max() <= 90
    assert (shifted["hours_per_week"] <= frame["hours_per_week"]).all()
    rule = (shifted["age"] >= 45) & (shifted["hours_per_week"] < 40)
    assert (shifted.loc[rule, "income"] == "<=50K").all()
    assert (shifted.loc[~rule, "income"] == frame.loc[~rule, "income"]).all()
    changed = (shifted["income"] != frame["income"]).mean()
    assert 0.05 < changed < 0.2, changed


# per problem type: synthetic windows -------------------------------------------------------------
ADULT_CLASSES = Problem("binary", ("<=50K", ">50K"), "income")
IRIS = Problem("multiclass", ("setosa", "versicolor", "virginica"), "species")
PRICES = Problem("regression", (), "price")


def _served(
    predictions: list[object],
    labels: list[object] | None = None,
    probabilities: list[list[float]] | None = None,
    x: np.ndarray | None = None,
) -> Window:
    """A window of rows version 1 answered, as the reader returns them."""
    n = len(predictions)
    columns: dict[str, object] = {
        "request_id": [f"{i:032x}" for i in range(n)],
        "row": 0,
        "version": 1,
        "prediction": pd.Series(predictions, dtype=object),
        "x": x if x is not None else np.zeros(n),
    }
    if probabilities is not None:
        columns["probabilities"] = [np.asarray(p) for p in probabilities]
    if labels is not None:
        columns["label"] = pd.Series(labels, dtype=object)
    return Window(None, datetime.now(UTC), pd.DataFrame(columns))


def test_live_performance_of_a_multiclass_model_reads_class_names_and_probabilities() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 400)
    right = rng.random(400) < 0.8  # four in five predictions are right
    predicted = np.where(right, truth, (truth + 1) % 3)
    proba = np.full((400, 3), 0.1)
    proba[np.arange(400), predicted] = 0.8
    window = _served(
        [IRIS.classes[i] for i in predicted], [IRIS.classes[i] for i in truth], proba.tolist()
    )
    policy = MonitoringPolicy(min_labelled_rows=100, performance_metric="f1_macro")
    from sklearn.metrics import f1_score

    expected = f1_score(truth, predicted, average="macro")
    fine = measure_live_performance(window, 1, {"f1_macro": expected}, policy, IRIS)
    assert fine.judged and not fine.degraded and fine.live == pytest.approx(expected)
    worse = measure_live_performance(window, 1, {"f1_macro": expected + 0.2}, policy, IRIS)
    assert worse.degraded and "worse by 0.200" in worse.reason
    auc = policy.model_copy(update={"performance_metric": "roc_auc_ovr"})
    ovr = measure_live_performance(window, 1, {"roc_auc_ovr": 0.5}, auc, IRIS)
    assert ovr.judged and ovr.live is not None and ovr.live > 0.8  # read from `probabilities`
    bare = Window(None, window.until, window.rows.drop(columns=["probabilities"]))
    unread = measure_live_performance(bare, 1, {"roc_auc_ovr": 0.5}, auc, IRIS)
    assert not unread.judged and "no class probabilities" in unread.reason


def test_live_performance_of_a_regression_is_judged_by_an_error_that_must_stay_low() -> None:
    rng = np.random.default_rng(2)
    truth = rng.normal(200, 30, 300)
    predicted = truth + rng.normal(0, 10, 300)
    window = _served(list(predicted), list(truth))
    policy = MonitoringPolicy(min_labelled_rows=100, performance_metric="rmse", max_metric_drop=2)
    live = float(np.sqrt(np.mean((predicted - truth) ** 2)))
    holds = measure_live_performance(window, 1, {"rmse": live - 1}, policy, PRICES)
    assert holds.judged and not holds.degraded and holds.live == pytest.approx(live)
    assert "worse by 1.000; limit 2.000" in holds.reason  # a higher rmse is worse
    decayed = measure_live_performance(window, 1, {"rmse": live - 3}, policy, PRICES)
    assert decayed.judged and decayed.degraded


def test_labels_of_one_class_leave_unjudged_only_a_metric_that_needs_two() -> None:
    window = _served([">50K"] * 150 + ["<=50K"] * 50, [">50K"] * 200, [[0.2, 0.8]] * 200)
    window.rows["probability"] = 0.8
    policy = MonitoringPolicy(min_labelled_rows=100)
    auc = measure_live_performance(window, 1, {"roc_auc": 0.9}, policy, ADULT_CLASSES)
    assert not auc.judged and "labels hold one class only ('>50K')" in auc.reason
    accuracy = policy.model_copy(update={"performance_metric": "accuracy"})
    judged = measure_live_performance(window, 1, {"accuracy": 0.78}, accuracy, ADULT_CLASSES)
    assert judged.judged and judged.live == pytest.approx(0.75) and not judged.degraded


def test_labels_or_predictions_naming_no_class_are_left_out_and_named() -> None:
    truth = ["setosa", "versicolor", "virginica"] * 40
    window = _served([*truth[:-2], "tulip", "setosa"], [*truth[:-1], "rose"])
    policy = MonitoringPolicy(min_labelled_rows=100, performance_metric="accuracy")
    verdict = measure_live_performance(window, 1, {"accuracy": 1.0}, policy, IRIS)
    assert verdict.judged and verdict.labelled == 118 and verdict.live == 1.0
    assert (
        "1 labels naming no class of ['setosa', 'versicolor', 'virginica'] left out: ['rose']"
        in (verdict.reason)
    )
    assert "1 predictions naming no class" in verdict.reason and "['tulip']" in verdict.reason


def test_old_and_new_binary_logs_in_one_window_are_judged_alike(tmp_path: Path) -> None:
    """A log written before problem types (prediction and label 0/1, P(positive) only) and one
    written since (class names, the class probabilities) in one window: the same answers score
    the same as either alone."""
    data = clean(adult_frame(1200))
    y = (data["income"] == ">50K").astype(int).to_numpy()
    rng = np.random.default_rng(0)
    p = np.clip(y * 0.6 + rng.random(len(data)) * 0.4, 0, 1)
    now = datetime.now(UTC)
    half = len(data) // 2
    for old, part in ((True, slice(0, half)), (False, slice(half, len(data)))):
        log = PredictionLog(str(tmp_path), batch_rows=10_000, max_age_seconds=3600)
        rows, labels = [], []
        for i in range(part.start, part.stop):
            rid = f"{i:032x}"
            name = ADULT_CLASSES.classes[int(p[i] >= 0.5)]
            answer: dict[str, object] = (
                {"prediction": int(p[i] >= 0.5), "probability": float(p[i])}
                if old
                else {"prediction": name, "probabilities": [1 - p[i], p[i]], "probability": p[i]}
            )
            feature_row = data.iloc[i][FEATURES].to_dict()
            rows.append({"request_id": rid, "row": 0, "time": now, "model": "m", "version": 1,
                         **answer, **feature_row})  # fmt: skip
            label = int(y[i]) if old else ADULT_CLASSES.classes[y[i]]
            labels.append({"request_id": rid, "label": label, "time": now})
        log.append(PREDICTIONS, rows)
        log.append(FEEDBACK, labels)
        log.close()
    window = read_prediction_window(
        str(tmp_path), None, datetime.now(UTC) + timedelta(seconds=1), FEATURES, 100_000
    )
    assert len(window.rows) == len(data) and window.labelled == len(data), window.problems
    verdict = measure_live_performance(window, 1, {"roc_auc": 0.9}, POLICY, ADULT_CLASSES)
    from sklearn.metrics import roc_auc_score

    assert verdict.judged and verdict.live == pytest.approx(roc_auc_score(y, p))
    assert "left out" not in verdict.reason


def _classes(shares: dict[str, float], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return list(rng.choice(list(shares), size=n, p=list(shares.values())))


def test_predicted_classes_that_moved_are_reported_and_past_a_set_limit_detect_drift() -> None:
    holdout_shares = {"setosa": 0.5, "versicolor": 0.3, "virginica": 0.2}
    reference = Predictions(
        np.array([IRIS.classes.index(c) for c in _classes(holdout_shares, 3000, 0)])
    )
    features = pd.DataFrame({"x": np.random.default_rng(9).normal(0, 1, 3000)})
    x = np.random.default_rng(10).normal(0, 1, 1200)
    policy = MonitoringPolicy(min_rows=1000, reference_rows=3000)
    like = _served(_classes(holdout_shares, 1200, 1), x=x)
    moved = _served(_classes({"setosa": 0.2, "versicolor": 0.3, "virginica": 0.5}, 1200, 2), x=x)

    same = detect_prediction_shift(like, reference, IRIS, policy, 1)
    assert same.judged and same.measure == "total variation" and not same.exceeded
    assert same.distance is not None and same.distance < 0.05 and same.p_value is not None
    assert same.p_value > 0.01 and same.window.keys() == set(IRIS.classes)

    shifted = detect_prediction_shift(moved, reference, IRIS, policy, 1)
    assert shifted.distance == pytest.approx(0.3, abs=0.04) and shifted.p_value < 1e-6
    # the classes that moved, named with their shares in the window and on the holdout
    assert re.search(
        r"'setosa' 1\d\.\d% vs 5\d\.\d%, 'virginica' 5\d\.\d% vs 2\d\.\d%", shifted.reason
    )
    assert "reported only" in shifted.reason and not shifted.exceeded
    reported = detect_drift(moved, features, ["x"], policy, shifted)
    assert reported.judged and not reported.detected  # the feature drift share decides alone
    assert reported.predictions == shifted

    limited = policy.model_copy(update={"max_prediction_shift": 0.2})
    beyond = detect_prediction_shift(moved, reference, IRIS, limited, 1)
    assert beyond.exceeded and "limit 0.200" in beyond.reason
    drift = detect_drift(moved, features, ["x"], limited, beyond)
    assert drift.detected and drift.drifted == [] and "predicted classes moved by" in drift.reason
    within = detect_drift(like, features, ["x"], limited, detect_prediction_shift(like, reference, IRIS, limited, 1))  # fmt: skip
    assert within.judged and not within.detected

    outcome = MonitoringOutcome("m", 1, None, "now", 1200, drift, _no_performance(), [], {})
    payload = evidence(outcome, "drift")["predictions"]
    assert payload["exceeded"] and payload["measure"] == "total variation"
    assert payload["window"]["setosa"] == pytest.approx(0.2, abs=0.04)
    assert json.loads(json.dumps(payload)) == payload  # small plain JSON, as an event carries


def test_predicted_values_that_moved_are_judged_by_their_kolmogorov_smirnov_distance() -> None:
    rng = np.random.default_rng(4)
    reference = Predictions(rng.normal(100, 10, 3000))
    policy = MonitoringPolicy(min_rows=1000, max_prediction_shift=0.1)
    like = detect_prediction_shift(_served(list(rng.normal(100, 10, 1200))), reference, PRICES, policy, 1)  # fmt: skip
    assert like.judged and like.measure == "Kolmogorov-Smirnov" and not like.exceeded
    assert like.distance is not None and like.distance < 0.06
    moved = detect_prediction_shift(_served(list(rng.normal(110, 10, 1200))), reference, PRICES, policy, 1)  # fmt: skip
    assert moved.exceeded and moved.distance == pytest.approx(0.38, abs=0.05)
    assert moved.wasserstein == pytest.approx(10, abs=1.5)
    assert moved.window["median"] == pytest.approx(110, abs=1.5) and "median 1" in moved.reason
    few = detect_prediction_shift(_served([1.0] * 10), reference, PRICES, policy, 1)
    assert not few.judged and "too small to judge (needs 1000)" in few.reason
    other = detect_prediction_shift(_served(list(rng.normal(100, 10, 1200))), reference, PRICES, policy, 2)  # fmt: skip
    assert not other.judged and "0 predictions of v2" in other.reason
    none = detect_prediction_shift(_served([1.0] * 1200), None, PRICES, policy, 1)
    assert not none.judged and "no predictions of the serving model" in none.reason


def _no_performance() -> PerformanceVerdict:
    return PerformanceVerdict(False, False, "no labels", "accuracy")
