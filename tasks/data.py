"""Data steps: the dataset's version (DVC), loading, the contract (pandera), the split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact

from mlops.adapters import dvc
from mlops.core.config import DataContract
from mlops.core.errors import DataContractError
from mlops.ml import split
from mlops.ml.contract import check_contract
from tasks import on_connection_errors, step

resolve_data_version = step(
    dvc.resolve_data_version,
    name="resolve-data-version",
    **on_connection_errors(1, 5),
)
load_dataset = step(dvc.load_dataset, name="load-dataset")
locate_data_version = step(dvc.locate_data_version, name="locate-data-version")
split_dataset = step(split.split_dataset, name="split-dataset")


@step(name="validate-dataset")
def validate_dataset(
    frame: pd.DataFrame, contract: DataContract, source: str, report_dir: Path
) -> pd.DataFrame:
    """Check the dataset against its data contract; a failure leaves a report artifact and stops the flow."""
    try:
        return check_contract(frame, contract, source, report_dir)
    except DataContractError as exc:
        create_markdown_artifact(
            key="data-contract-violations",
            markdown=exc.report.read_text(encoding="utf-8")
            + (f"\nFailing rows: `{exc.failed_rows}`\n" if exc.failed_rows else ""),
            description=f"Why {source} was refused",
        )
        raise
