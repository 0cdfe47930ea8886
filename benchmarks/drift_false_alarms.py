"""False alarms of monitoring's drift decision, from small windows to huge ones, in one run.

On the shipped Adult data: a 20,000-row reference (as monitoring samples the champion's training
data) and windows drawn from the other rows (with replacement past their 12,561), unshifted, at
300, 1,000 and 10,000 rows (50 windows each) and 100,000 and 1,000,000 rows (10 each); then the
example's documented shift (examples/adult/traffic.py: shift_adult) on 10 windows of each size
but the largest. Each window is judged twice on the same drift tests: Evidently's decision alone
(the baseline: ``drift_decision: evidently``) and under the rule (``corrected``: Evidently's test
confirmed by a two-sample significance test, Benjamini-Hochberg across the columns). A window
raises drift when more than 10 % of its columns drift (the example policy's limit).

Last line: the rule's false-alarm rate over every unshifted window, then the baseline's.

    .venv/bin/python benchmarks/drift_false_alarms.py
"""

from __future__ import annotations

import time

import pandas as pd
from _common import EXAMPLE

from examples.adult.traffic import shift_adult
from mlops.ml.drift import DriftRule, drift_tests

LIMIT = 0.1
UNSHIFTED = ((300, 50), (1_000, 50), (10_000, 50), (100_000, 10), (1_000_000, 10))
SHIFTED = ((300, 10), (1_000, 10), (10_000, 10), (100_000, 10))


def judged(window: pd.DataFrame, reference: pd.DataFrame) -> tuple[bool, bool]:
    """(Evidently alone, the rule): does the window raise drift?"""
    reading = drift_tests(window, reference, DriftRule())
    by_evidently = sum(bool(c.evidently) for c in reading.columns) / len(reading.columns)
    return by_evidently > LIMIT, (reading.share or 0.0) > LIMIT


def main() -> None:
    data = pd.read_csv(EXAMPLE / "adult.csv.gz", na_values=["?"]).drop(columns=["income"])
    reference = data.sample(20_000, random_state=1)
    rest = data.drop(reference.index)
    totals = {"evidently": 0, "rule": 0, "windows": 0}
    print("unshifted windows raising drift (Evidently alone / the rule):")
    for rows, count in UNSHIFTED:
        started, alarms = time.perf_counter(), [0, 0]
        for k in range(count):
            window = rest.sample(rows, replace=rows > len(rest), random_state=1000 * rows + k)
            for i, raised in enumerate(judged(window, reference)):
                alarms[i] += raised
        totals["evidently"] += alarms[0]
        totals["rule"] += alarms[1]
        totals["windows"] += count
        per = (time.perf_counter() - started) / count
        print(
            f"  {rows:>9,} rows: {alarms[0]:2d} / {alarms[1]:2d} of {count} ({per:.2f} s a window)"
        )
    print("windows of the documented shift caught (Evidently alone / the rule):")
    for rows, count in SHIFTED:
        caught = [0, 0]
        for k in range(count):
            window = shift_adult(rest.sample(rows, replace=rows > len(rest), random_state=7 * k))
            for i, raised in enumerate(judged(window, reference)):
                caught[i] += raised
        print(f"  {rows:>9,} rows: {caught[0]:2d} / {caught[1]:2d} of {count}")
    n = totals["windows"]
    print(
        f"{totals['rule'] / n:.3f} false-alarm rate under the rule over {n} unshifted windows "
        f"({totals['rule']}); Evidently's decision alone {totals['evidently'] / n:.3f} "
        f"({totals['evidently']})"
    )


if __name__ == "__main__":
    main()
