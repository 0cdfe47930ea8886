"""The diabetes example's shift of production traffic, for the end-to-end loop and anyone who
wants to watch the model's monitoring react.

The world moves to a heavier population: only patients with a body mass index of 27 or more
come to the clinic (172 of the study's 442, its heaviest two fifths). Nothing is made up: each
row is a real patient of the study with the progression the study measured. What drifts is what
goes with weight: ``bmi`` itself and the measurements that follow it (blood pressure ``bp``,
the triglycerides ``ltg``, the cholesterol ratio ``tch``, ``hdl`` and blood sugar ``glu``), and
the progression is higher on average (the model's live error need not grow: the relation between
the measurements and the progression is the study's own).
"""

from __future__ import annotations

import pandas as pd

#: The smallest body mass index of the shifted population.
MIN_BMI = 27.0

DESCRIPTION = (
    f"only patients with a bmi of {MIN_BMI:g} or more come (the study's heaviest two fifths, "
    "real rows with their real progression)"
)


def shift(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` (the diabetes data's columns, with or without ``progression``) that
    belong to the shifted population: a body mass index of ``MIN_BMI`` or more."""
    if "bmi" not in frame:
        raise KeyError(f"the diabetes shift selects by the bmi column; the rows have {list(frame)}")
    return frame[frame["bmi"] >= MIN_BMI].reset_index(drop=True)
