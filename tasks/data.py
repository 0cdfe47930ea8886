"""Data steps: the dataset's version (DVC), loading, the contract (pandera), the split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect.artifacts import create_markdown_artifact

from mlops.adapters import dvc
from mlops.core.config import DataContract
from mlops.core.errors import DataContractError
from mlops.core.lineage import DataVersion
from mlops.core.settings import Settings
from mlops.ml import split
from mlops.ml.contract import check_contract
from tasks import on_connection_errors, step

resolve_data_version = step(
    dvc.resolve_data_version,
    name="resolve-data-version",
    **on_connection_errors(1, 5),
)


@step(name="load-dataset")
def load_dataset(
    project_dir: Path, version: DataVersion, na_values: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Exactly ``version`` of the dataset, read through the DVC remote the settings name
    (MLOPS_DVC_REMOTE_URL, as the cloud and docker environments set it) or else the repo's own."""
    settings = Settings()
    return dvc.load_dataset(
        project_dir, version, na_values, settings.dvc_remote_url, settings.dvc_remote_endpoint_url
    )


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
