"""A data contract inferred from a dataset, for a user who brings a file and no contract.

pandera's ``infer_schema`` gives each column's dtype, whether it holds missing values and its
observed minimum and maximum. What a contract needs beyond that is added here, each rule stated
once below:

- **int or float**: an integer column, or a float column whose values are all whole numbers
  (pandas reads an int column with missing values as float), is ``int``; other numbers ``float``.
- **bool**: a bool column, or a text column holding only True/False and missing values (pandas
  reads a bool column with missing values as objects).
- **category or string**: a text column with at most ``CATEGORY_MAX_VALUES`` distinct values,
  and no more distinct values than ``CATEGORY_MAX_SHARE`` of its non-missing rows, is a
  ``category`` whose allowed ``values`` are those seen, with ``UNKNOWN_TOLERANCE`` of rows allowed
  an unseen one; any other text column is a ``string`` (names, free text, identifiers). The
  target, when named, is always a category if it is text: a classifier needs its classes.
- **ranges with margins**: the observed ``[min, max]`` widened on each side by ``RANGE_MARGIN``
  of the range (of the value itself when the column is constant), rounded outward, and floored
  at 0 for a column that holds no negative value (a count stays a count).
- **nullable** where the column holds a missing value; **min_rows**: ``MIN_ROWS_SHARE`` of the
  rows the contract was inferred from.
- **row ids**: an int column whose values are all distinct and nearly fill their range (at most
  twice as wide as the rows are many) is flagged ``identifier``: it stays in the contract, but
  predicts nothing, so ``mlops init`` leaves it out of the features.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml

from mlops.core.config import ColumnContract, DataContract
from mlops.core.errors import DataLoadError

#: A text column with more distinct values than this is a ``string``, not a ``category``.
CATEGORY_MAX_VALUES = 50
#: ... and so is one whose distinct values exceed this share of its non-missing rows.
CATEGORY_MAX_SHARE = 0.5
#: Each side of an observed range is widened by this share of the range.
RANGE_MARGIN = 0.1
#: Share of rows a category column may hold unseen values in before its check fails.
UNKNOWN_TOLERANCE = 0.01
#: The contract refuses a dataset with fewer rows than this share of the inferred-from rows.
MIN_ROWS_SHARE = 0.5

_SHOWN_VALUES = 3


@dataclass(frozen=True)
class InferredColumn:
    """One column's inferred contract, with what was seen and why it got its type."""

    name: str
    contract: ColumnContract
    missing: int
    distinct: int
    why: str
    identifier: bool = False  # a row id (see the module docstring): not a feature

    def detail(self) -> str:
        """The range or the categories, as the summary shows them."""
        spec = self.contract
        if spec.type in ("int", "float"):
            lo = "-inf" if spec.min is None else _number(spec.min)
            hi = "inf" if spec.max is None else _number(spec.max)
            return f"[{lo}, {hi}]"
        if spec.type == "category":
            values = list(spec.values or ())
            shown = ", ".join(v if len(v) <= 16 else v[:15] + "…" for v in values[:_SHOWN_VALUES])
            more = ", …" if len(values) > _SHOWN_VALUES else ""
            unseen = (
                f" (unseen up to {spec.unknown_tolerance:.0%})" if spec.unknown_tolerance else ""
            )
            return f"{len(values)} values: {shown}{more}{unseen}"
        if spec.type == "string":
            return f"{self.distinct} distinct values"
        return "True/False"


@dataclass(frozen=True)
class InferredContract:
    """A data contract inferred from ``rows`` rows, column by column."""

    contract: DataContract
    columns: tuple[InferredColumn, ...]
    rows: int

    def column(self, name: str) -> InferredColumn:
        return next(c for c in self.columns if c.name == name)

    def summary(self) -> str:
        """A plain-text table to review: column, type, range or categories, nullable, why."""
        header = ("column", "type", "range / categories", "nullable", "why")
        rows = [
            (
                c.name,
                c.contract.type,
                c.detail(),
                f"yes ({c.missing} missing)" if c.contract.nullable else "no",
                c.why,
            )
            for c in self.columns
        ]
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
            for row in (header, *rows)
        ]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(header[-1]))
        lines.append(f"{self.rows} rows; the contract asks for at least {self.contract.min_rows}")
        return "\n".join(lines)

    def to_yaml(self, source: str) -> str:
        """The contract file, with a header saying where it came from and how."""
        body: dict[str, Any] = {
            "version": self.contract.version,
            "min_rows": self.contract.min_rows,
            "strict": self.contract.strict,
            "columns": {c.name: _column_yaml(c.contract) for c in self.columns},
        }
        header = (
            f"# Data contract inferred by `mlops init` from {source} ({self.rows} rows):\n"
            f"# ranges widened by {RANGE_MARGIN:.0%} of the observed range (floored at 0 for "
            "columns without negatives),\n"
            f"# categories are the values seen (at most {CATEGORY_MAX_VALUES}), with "
            f"{UNKNOWN_TOLERANCE:.0%} of rows allowed an unseen one.\n"
            "# Review it: it holds what the data held, not what it should hold.\n"
        )
        return header + yaml_text(body)


def infer_contract(frame: pd.DataFrame, target: str | None = None) -> InferredContract:
    """The data contract ``frame`` suggests (the rules are in the module's docstring).

    Raises:
        DataLoadError: the frame has no rows or no columns.
    """
    if frame.empty or not len(frame.columns):
        raise DataLoadError(
            "the dataset has no rows or no columns: nothing to infer a contract from"
        )
    schema = pa.infer_schema(frame)
    assert isinstance(schema, pa.DataFrameSchema)  # a frame's schema, not a series'
    columns = tuple(
        _infer_column(str(name), frame[name], schema.columns[name], name == target)
        for name in frame.columns
    )
    contract = DataContract(
        min_rows=max(1, math.floor(len(frame) * MIN_ROWS_SHARE)),
        strict=True,
        columns={c.name: c.contract for c in columns},
    )
    return InferredContract(contract, columns, len(frame))


def _infer_column(name: str, s: pd.Series, inferred: pa.Column, is_target: bool) -> InferredColumn:
    present = s.dropna()
    missing = int(s.isna().sum())
    nullable = bool(inferred.nullable)
    distinct = int(present.nunique())
    if present.empty:
        return InferredColumn(
            name, ColumnContract(type="string", nullable=True), missing, 0, "holds no values"
        )
    if pd.api.types.is_bool_dtype(s) or (
        s.dtype == object and present.map(lambda v: isinstance(v, (bool, np.bool_))).all()
    ):
        return InferredColumn(
            name, ColumnContract(type="bool", nullable=nullable), missing, distinct, "True/False"
        )
    if pd.api.types.is_numeric_dtype(s):
        return _numeric_column(name, present, inferred, nullable, missing, distinct)
    text = present.astype(str)
    share = distinct / len(present)
    if is_target or (distinct <= CATEGORY_MAX_VALUES and share <= CATEGORY_MAX_SHARE):
        why = "the target" if is_target else f"{distinct} distinct values"
        return InferredColumn(
            name,
            ColumnContract(
                type="category",
                nullable=nullable,
                values=tuple(sorted(text.unique())),
                # an unseen class in the target is refused: no model can have learnt it
                unknown_tolerance=0.0 if is_target else UNKNOWN_TOLERANCE,
            ),
            missing,
            distinct,
            why,
        )
    why = (
        f"{distinct} distinct values (over {CATEGORY_MAX_VALUES})"
        if distinct > CATEGORY_MAX_VALUES
        else f"{distinct} distinct values in {len(present)} rows (over {CATEGORY_MAX_SHARE:.0%})"
    )
    return InferredColumn(
        name, ColumnContract(type="string", nullable=nullable), missing, distinct, why
    )


def _numeric_column(
    name: str,
    present: pd.Series,
    inferred: pa.Column,
    nullable: bool,
    missing: int,
    distinct: int,
) -> InferredColumn:
    stats = {k: v for check in inferred.checks for k, v in (check.statistics or {}).items()}
    lo = float(stats.get("min_value", present.min()))
    hi = float(stats.get("max_value", present.max()))
    values = present.astype("float64")
    whole = bool((values % 1 == 0).all())
    kind = "int" if whole else "float"
    why = "whole numbers" if whole else "numbers"
    if whole and not pd.api.types.is_integer_dtype(present):
        why = "whole numbers (read as float: the column has missing values)"
    low, high = widen(lo, hi, whole)
    # every value distinct and nearly filling its range: a row number, which predicts nothing
    identifier = whole and 1 < distinct == len(present) and hi - lo + 1 <= 2 * len(present)
    if identifier:
        why = "whole numbers, each one distinct, filling their range (a row id: not a feature)"
    return InferredColumn(
        name,
        ColumnContract(type=kind, nullable=nullable, min=low, max=high),
        missing,
        distinct,
        why,
        identifier,
    )


def widen(lo: float, hi: float, whole: bool, margin: float = RANGE_MARGIN) -> tuple[float, float]:
    """``[lo, hi]`` widened by ``margin`` of the range on each side (of the value when lo == hi),
    rounded outward (to whole numbers for ``whole``, else to two significant digits of the
    widening), and floored at 0 when ``lo`` is not negative."""
    pad = margin * (hi - lo) if hi > lo else margin * max(abs(lo), 1.0)
    if pad <= 0:
        return lo, hi
    if whole:
        low, high = float(math.floor(lo - pad)), float(math.ceil(hi + pad))
    else:
        low, high = (
            round_outward(lo - pad, pad, down=True),
            round_outward(hi + pad, pad, down=False),
        )
    if lo >= 0:
        low = max(low, 0.0)
    return low, high


def round_outward(value: float, scale: float, down: bool) -> float:
    """``value`` rounded down (or up) at two significant digits of ``scale``, for a bound that
    must not move inward: ``round_outward(0.8545, 0.045, down=True) == 0.854``."""
    if scale <= 0:
        return value
    digits = 1 - math.floor(math.log10(scale))
    step = 10.0**-digits
    rounded = (math.floor if down else math.ceil)(value / step) * step
    return round(rounded, max(digits, 0))


class _FlowList(list[Any]):
    pass


class _FlowDict(dict[str, Any]):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True)
)
_Dumper.add_representer(
    _FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=True)
)


def yaml_text(body: dict[str, Any]) -> str:
    """``body`` as YAML a person would write: mappings in block style, except a mapping of plain
    values two levels down (a column's contract, a metric's threshold), which fits on its line,
    and lists of plain values on one line."""

    def shape(value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            inner = {k: shape(v, depth + 1) for k, v in value.items()}
            flat = all(not isinstance(v, (dict, list)) for v in value.values())
            return _FlowDict(inner) if flat and value and depth >= 2 else inner
        if isinstance(value, (list, tuple)):
            items = [shape(v, depth + 1) for v in value]
            flat = all(not isinstance(v, (dict, list)) for v in value)
            return _FlowList(items) if flat else items
        return value

    return yaml.dump(
        shape(body, 0),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )


def yaml_comment(text: str) -> str:
    """``text`` as a YAML comment block after a blank line, wrapped at 96 columns."""
    return "\n" + "".join(f"# {line}\n" for line in textwrap.wrap(text, 94))


def _column_yaml(spec: ColumnContract) -> dict[str, Any]:
    """A column's contract as the file spells it: defaults left out, an int column's bounds whole."""
    out = spec.model_dump(mode="json", exclude_defaults=True)
    if spec.type == "int":
        out.update({k: int(out[k]) for k in ("min", "max") if k in out})
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
