"""The data contract: a pandera schema built from the contract file, and the readable failure report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from mlops.core.config import ColumnContract, DataContract
from mlops.core.errors import DataContractError

_EXAMPLES = 5


def _numeric(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def _column_checks(name: str, spec: ColumnContract) -> list[pa.Check]:
    """Checks for one column; each one reports the failing rows by index."""
    if spec.type in ("int", "float"):
        checks = [
            pa.Check(lambda s: _numeric(s).notna() | s.isna(), name=f"{spec.type}_values"),
        ]
        if spec.type == "int":
            checks.append(
                pa.Check(
                    lambda s: (_numeric(s) % 1 == 0) | _numeric(s).isna(), name="whole_numbers"
                )
            )
        if spec.min is not None or spec.max is not None:
            lo = float("-inf") if spec.min is None else spec.min
            hi = float("inf") if spec.max is None else spec.max
            checks.append(
                pa.Check(
                    lambda s: _numeric(s).between(lo, hi) | _numeric(s).isna(),
                    name=f"in_range[{spec.min}, {spec.max}]",
                )
            )
        return checks
    if spec.type == "category":
        return [_known_categories(spec.values or (), spec.unknown_tolerance)]
    if spec.type == "bool":
        return [pa.Check(lambda s: s.isin([True, False]) | s.isna(), name="bool_values")]
    return []


def _known_categories(allowed: tuple[str, ...], tolerance: float) -> pa.Check:
    """Unknown categories pass while their share stays within ``tolerance``; beyond it, each one fails.

    pandera has no tolerance on element-wise checks, so the check answers for the whole column
    first and only then reports every unknown value, with its row.
    """
    allowed_set = set(allowed)

    def check(s: pd.Series) -> pd.Series:
        known = s.isin(allowed_set) | s.isna()
        present = s.notna().sum()
        share = float((~known).sum() / present) if present else 0.0
        if share <= tolerance:
            return pd.Series(True, index=s.index)
        return known

    return pa.Check(check, name=f"known_categories(tolerance={tolerance:g})")


def _columns(contract: DataContract) -> dict[str, pa.Column]:
    return {
        name: pa.Column(
            checks=_column_checks(name, spec),
            nullable=spec.nullable,
            required=True,
            coerce=False,
        )
        for name, spec in contract.columns.items()
    }


def build_schema(contract: DataContract) -> pa.DataFrameSchema:
    """The pandera schema for a data contract: column presence, nulls, types, ranges, categories, row floor."""
    columns = _columns(contract)
    min_rows = contract.min_rows
    return pa.DataFrameSchema(
        columns,
        strict=contract.strict,
        checks=[pa.Check(lambda df: len(df) >= min_rows, name=f"at_least_{min_rows}_rows")],
    )


def row_schema(contract: DataContract) -> pa.DataFrameSchema:
    """The contract's checks that judge each row by itself, for rows that join a dataset later.

    The row floor is left out (it judges the frame, not a row), and unknown categories get no
    tolerance: a share of unknowns depends on the neighbours, and a row's verdict must not. Rows
    that pass this schema can only lower the share of unknowns of the dataset they join.
    """
    strict = contract.model_copy(
        update={
            "columns": {
                name: spec.model_copy(update={"unknown_tolerance": 0.0})
                if spec.type == "category"
                else spec
                for name, spec in contract.columns.items()
            }
        }
    )
    return pa.DataFrameSchema(_columns(strict), strict=contract.strict)


def contract_of(contract: DataContract, columns: list[str]) -> DataContract:
    """The contract's rules for ``columns`` only, in the contract's order: what judges rows that
    carry just those (a model's labelled production rows hold its features and its target,
    never the dataset's other columns). A column the contract does not name is a KeyError."""
    unknown = [c for c in columns if c not in contract.columns]
    if unknown:
        raise KeyError(f"columns {unknown} are not in the data contract")
    wanted = set(columns)
    return contract.model_copy(
        update={"columns": {n: s for n, s in contract.columns.items() if n in wanted}}
    )


@dataclass(frozen=True)
class RowVerdict:
    """Which rows of a frame meet the contract's row-level checks, and what the others broke."""

    kept: pd.DataFrame
    failures: pd.DataFrame  # pandera's failure cases, one line per failed check and row
    failed_rows: pd.DataFrame  # the refused rows, with `row` and `failed_checks` in front
    report: str = ""  # markdown, as `contract_report` writes it; empty when every row passed

    @property
    def checks(self) -> dict[str, int]:
        """Failures per ``column:check``."""
        named = self.failures["column"].fillna("(table)").astype(str) + ":" + self.failures["check"]
        return {str(k): int(v) for k, v in named.value_counts().sort_index().items()}


def as_text_categories(frame: pd.DataFrame, contract: DataContract) -> pd.DataFrame:
    """``frame`` with the category and string columns the contract names as text: a CSV or Parquet
    file holding category codes as numbers (``sex: 1``) is read as numbers, and the contract's
    values are text (``"1"``). A whole-number float (a code column with gaps, read as 1.0) is its
    integer's text; missing values stay missing. Other columns are untouched."""
    out = frame
    for name, spec in contract.columns.items():
        if spec.type not in ("category", "string") or name not in frame:
            continue
        column = frame[name]
        if column.dtype == object and all(isinstance(v, str) for v in column.dropna()):
            continue
        if out is frame:
            out = frame.copy()
        out[name] = column.map(_text, na_action="ignore").astype(object)
    return out


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def split_by_contract(frame: pd.DataFrame, contract: DataContract, source: str) -> RowVerdict:
    """Rows of ``frame`` that meet ``row_schema(contract)``, and a report of those that do not.

    A failure that names no row (a missing or unexpected column) refuses every row.
    """
    frame = as_text_categories(frame, contract)
    try:
        row_schema(contract).validate(frame, lazy=True)
    except SchemaErrors as exc:
        failures = _name_columns(exc.failure_cases)
        if failures["index"].isna().any():
            failures = failures.assign(index=failures["index"].astype(object))
            table = failures[failures["index"].isna()]
            failures = pd.concat(
                [failures.dropna(subset=["index"])] + [table.assign(index=i) for i in frame.index],
                ignore_index=True,
            )
        report, failed = contract_report(frame, failures, source)
        return RowVerdict(frame.drop(index=failed.index), failures, failed, report)
    return RowVerdict(frame, pd.DataFrame(columns=["column", "check", "index"]), frame.iloc[:0])


def conform(frame: pd.DataFrame, contract: DataContract) -> pd.DataFrame:
    """Give a validated frame the contract's dtypes, in the contract's column order."""
    out = frame[list(contract.columns)].copy()
    for name, spec in contract.columns.items():
        if spec.type == "int":
            out[name] = _numeric(out[name]).astype("Int64" if spec.nullable else "int64")
        elif spec.type == "float":
            out[name] = _numeric(out[name]).astype("float64")
        elif spec.type in ("category", "string"):
            out[name] = out[name].astype("object")
    return out


_TABLE_CHECKS = {"column_in_dataframe": "missing_column", "column_in_schema": "unexpected_column"}


def _name_columns(failures: pd.DataFrame) -> pd.DataFrame:
    """pandera reports a missing or extra column with no column and the name as the failure case;
    put the name in the column and say plainly what is wrong."""
    out = failures.copy()
    table = out["column"].isna() & out["check"].isin(list(_TABLE_CHECKS))
    out.loc[table, "column"] = out.loc[table, "failure_case"].astype(str)
    out.loc[table, "check"] = out.loc[table, "check"].map(_TABLE_CHECKS)
    return out


def contract_report(
    frame: pd.DataFrame, failures: pd.DataFrame, source: str
) -> tuple[str, pd.DataFrame]:
    """A markdown report of a contract failure and the failing rows, annotated with what failed.

    Row numbers in the report are 0-based data rows; the CSV line is the row number plus 2.
    """
    lines = [
        f"# Data contract violations in `{source}`",
        "",
        f"{len(frame)} rows checked. Each line below is one failed check; "
        "failing rows are written beside this report.",
        "",
        "| column | check | failures | example values | example rows |",
        "|---|---|---:|---|---|",
    ]
    grouped = failures.groupby(["column", "check"], dropna=False, sort=False)
    for (column, check), group in grouped:
        values = ", ".join(f"`{v}`" for v in group["failure_case"].astype(str).unique()[:_EXAMPLES])
        rows = sorted(group["index"].dropna().astype(int).unique())[:_EXAMPLES]
        column_name = "(table)" if pd.isna(column) else column
        lines.append(
            f"| {column_name} | {check} | {len(group)} | {values} | "
            f"{', '.join(str(r) for r in rows) or '—'} |"
        )
    row_ids = failures["index"].dropna().astype(int).unique()
    failed = frame.loc[frame.index.intersection(row_ids)].copy()
    if not failed.empty:
        by_row = (
            failures.dropna(subset=["index"])
            .assign(index=lambda d: d["index"].astype(int))
            .assign(
                what=lambda d: (
                    d["column"].fillna("(table)").astype(str) + ":" + d["check"].astype(str)
                )
            )
            .groupby("index")["what"]
            .agg(lambda w: "; ".join(sorted(set(w))))
        )
        # named so as not to collide with the data's own columns (a dataset may have a `row`)
        checks_column = _free_name("failed_checks", failed.columns)
        failed.insert(0, checks_column, by_row.reindex(failed.index).to_numpy())
        failed.insert(0, _free_name("row", failed.columns), failed.index)
    return "\n".join(lines) + "\n", failed


def _free_name(name: str, taken: pd.Index) -> str:
    """``name``, or ``_name``, ``__name``... : the first the frame does not already use."""
    while name in taken:
        name = f"_{name}"
    return name


def check_contract(
    frame: pd.DataFrame, contract: DataContract, source: str, report_dir: Path
) -> pd.DataFrame:
    """Validate ``frame`` against ``contract``; on failure write the report and failing rows, and raise.

    Raises:
        DataContractError: naming the columns and checks that failed and where the report is.
    """
    frame = as_text_categories(frame, contract)
    try:
        build_schema(contract).validate(frame, lazy=True)
    except SchemaErrors as exc:
        failures = _name_columns(exc.failure_cases)
        report, failed_rows = contract_report(frame, failures, source)
        report_dir.mkdir(parents=True, exist_ok=True)
        report_path = report_dir / "contract-report.md"
        report_path.write_text(report, encoding="utf-8")
        failures.to_csv(report_dir / "failure-cases.csv", index=False)
        rows_path = None
        if not failed_rows.empty:
            rows_path = report_dir / "failed-rows.csv"
            failed_rows.to_csv(rows_path, index=False)
        checks = sorted(
            {
                f"{'(table)' if pd.isna(c) else c}:{k}"
                for c, k in failures[["column", "check"]].itertuples(index=False)
            }
        )
        raise DataContractError(
            f"{source}: {len(failures)} contract violations in {len(checks)} checks "
            f"({', '.join(checks[:8])}{', …' if len(checks) > 8 else ''}); "
            f"report: {report_path}" + (f"; failing rows: {rows_path}" if rows_path else ""),
            report=report_path,
            failed_rows=rows_path,
        ) from None
    return conform(frame, contract)
