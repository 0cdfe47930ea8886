"""Typed lineage: the tags a training run writes read back as the same object."""

from __future__ import annotations

import dataclasses

import pytest

from mlops.core.lineage import (
    DATA_MD5_TAG,
    GIT_DIRTY_TAG,
    DataVersion,
    GitState,
    Lineage,
)

pytestmark = pytest.mark.unit


def _lineage(dirty: bool = True) -> Lineage:
    return Lineage.of(
        GitState(commit="abc123", dirty=dirty),
        DataVersion(path="data/adult.csv", md5="f" * 32, size=10, rev=None),
        ("run-fingerprint", "code-sha"),
        3,
        "digest12",
        "flow-run-id",
        "event drift",
    )


@pytest.mark.parametrize("dirty", [True, False])
def test_the_tags_a_lineage_writes_read_back_as_the_same_lineage(dirty: bool) -> None:
    lineage = _lineage(dirty)
    tags = lineage.to_tags()
    assert tags[GIT_DIRTY_TAG] == str(dirty).lower()
    assert len(tags) == len(dataclasses.fields(Lineage))  # every field has its tag
    assert Lineage.from_tags({**tags, "mlops.other": "x"}) == lineage


def test_a_missing_lineage_tag_is_named() -> None:
    tags = _lineage().to_tags()
    del tags[DATA_MD5_TAG]
    with pytest.raises(KeyError, match=DATA_MD5_TAG):
        Lineage.from_tags(tags)
