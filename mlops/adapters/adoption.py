"""Adopting a model version registered outside mlops' flows (a notebook, another pipeline).

Such a version has none of the registration mlops writes: no checksum to verify its loads by, no
lineage, no holdout frames or metrics on its run for the gates. Adopting it records them, without
changing its artifacts: the stored files must already be in the one format every loader accepts
(skops through mlflow.sklearn, trusted types only: ``mlops.core.integrity``), their checksum is
computed and recorded, the pipeline's own holdout (the split training makes of the current data
version) and the metrics the version scores on it are logged on its run, and its provenance says
who registered it where. The gates then judge it as any challenger; what it was trained on cannot
be verified, which the provenance says.

The fingerprint tag is written last: until then the version reads as not yet adopted (and not
completely registered), so an adoption cut short is simply done again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow

from mlops.adapters.registry import (
    BROKEN_TAG,
    RUN_ID_TAG,
    RegisteredVersion,
    download_model,
    registry_client,
)
from mlops.adapters.tracking import DATA_ARTIFACTS
from mlops.core.errors import MlopsError
from mlops.core.integrity import (
    CHECKSUM_ALGORITHM,
    CHECKSUM_ALGORITHM_TAG,
    CHECKSUM_TAG,
    artifact_checksum,
    check_model_format,
)
from mlops.core.lineage import FINGERPRINT_TAG
from mlops.ml.split import Split

#: Who registered an adopted version, where, and that mlops did not train it.
PROVENANCE_TAG = "mlops.provenance"

#: The fingerprint of an adopted version: its artifacts' checksum (no training inputs are known),
#: a value no training's fingerprint can take.
ADOPTED_PREFIX = "adopted:"


class AdoptionRefused(MlopsError):
    """A version registered outside mlops that cannot be adopted, and why."""


def needs_adoption(version: RegisteredVersion) -> bool:
    """``version`` was registered outside mlops' flows and is not adopted yet."""
    return FINGERPRINT_TAG not in version.tags and BROKEN_TAG not in version.tags


def record_registration(tracking_uri: str, version: RegisteredVersion, adopter: str) -> str:
    """Check the stored artifacts' format, record their checksum, the run and the provenance;
    returns the provenance. Raises ``AdoptionRefused`` naming what is wrong."""
    label = f"{version.name} v{version.version}"
    if not version.run_id:
        raise AdoptionRefused(
            f"{label} has no MLflow run: log it inside a run (mlflow.start_run) so that its "
            "evaluation can be recorded with it"
        )
    client = registry_client(tracking_uri)
    run = client.get_run(version.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_model(tracking_uri, version.name, version.version, Path(tmp))
        try:
            check_model_format(folder, label)
        except MlopsError as exc:
            raise AdoptionRefused(
                f"{exc}. Log it with mlflow.sklearn.log_model(..., serialization_format='skops', "
                "skops_trusted_types=[...]) and the mlops_problem metadata"
            ) from None
        checksum = artifact_checksum(folder)
    recorded = version.tags.get(CHECKSUM_TAG)
    if recorded and recorded != checksum:  # never bless artifacts changed since they were summed
        raise AdoptionRefused(
            f"{label}: its stored artifacts do not match the {CHECKSUM_TAG} recorded on it"
        )
    source = run.data.tags.get("mlflow.source.name") or "unknown source"
    provenance = (
        f"registered outside mlops by {run.info.user_id or 'unknown user'} from {source} "
        f"(run {version.run_id}); adopted by {adopter}: its training data is not known to mlops"
    )
    name, number = version.name, str(version.version)
    for key, value in (
        (CHECKSUM_TAG, checksum),
        (CHECKSUM_ALGORITHM_TAG, CHECKSUM_ALGORITHM),
        (RUN_ID_TAG, version.run_id),
        (PROVENANCE_TAG, provenance[:5000]),
    ):
        client.set_model_version_tag(name, number, key, value)
    if not version.description.strip():
        client.update_model_version(name, number, description=provenance)
    return provenance


def record_evaluation(
    tracking_uri: str, version: RegisteredVersion, split: Split, metrics: dict[str, float]
) -> None:
    """Log the pipeline's training and holdout frames and the holdout metrics on the version's
    run (where the gates read them), then its fingerprint: the adoption is complete."""
    client = registry_client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for part, X, y in (
            ("training", split.X_train, split.y_train),
            ("holdout", split.X_holdout, split.y_holdout),
        ):
            path = Path(tmp) / f"{part}.parquet"
            X.assign(**{str(y.name): y.to_numpy()}).to_parquet(path)
            client.log_artifact(version.run_id, str(path), artifact_path=DATA_ARTIFACTS)
    now = int(time.time() * 1000)
    client.log_batch(
        version.run_id,
        metrics=[
            mlflow.entities.Metric(f"holdout_{k}", float(v), now, 0) for k, v in metrics.items()
        ],
    )
    checksum = (
        version.tags.get(CHECKSUM_TAG)
        or client.get_model_version(version.name, str(version.version)).tags[CHECKSUM_TAG]
    )
    client.set_model_version_tag(
        version.name, str(version.version), FINGERPRINT_TAG, ADOPTED_PREFIX + checksum
    )
