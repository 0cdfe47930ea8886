"""The penguins example's shift of production traffic, for the end-to-end loop and anyone who
wants to watch the model's monitoring react.

The survey moves to one island: only the penguins of Biscoe are measured (163 complete rows of
the study's 344: 119 Gentoo and 44 Adelie, no Chinstrap, which lives on Dream). Nothing is made
up: each row is a real bird of the study with the species it was identified as. What drifts is
``island`` and the measurements that follow the mix of species (``flipper_length_mm``,
``body_mass_g``, ``bill_depth_mm`` and ``bill_length_mm``: Gentoo are the big ones); the
relation between measurements and species is the study's own, so the model's live accuracy need
not fall.
"""

from __future__ import annotations

import pandas as pd

#: Where the survey goes.
ISLAND = "Biscoe"

DESCRIPTION = (
    f"only the penguins of {ISLAND} island are measured (mostly Gentoo, some Adelie; real rows "
    "with their real species)"
)


def shift(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` (the penguins data's columns, with or without ``species``) of the
    birds measured after the shift: those of ``ISLAND``."""
    if "island" not in frame:
        raise KeyError(
            f"the penguins shift selects by the island column; the rows have {list(frame)}"
        )
    return frame[frame["island"] == ISLAND].reset_index(drop=True)
