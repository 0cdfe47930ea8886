"""The packaging flow: a registered model version becomes a tested container image in a registry."""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mlops.adapters.git import git_state
from mlops.core.context import RunContext
from mlops.core.lineage import CHAMPION_ALIAS, GitState
from mlops.core.settings import Settings
from mlops.release.packaging import BuiltImage, image_repository, image_tag
from mlops.stack.processes import free_port
from tasks.packaging import (
    assemble_build_context,
    build_image,
    push_image,
    record_image,
    smoke_test_image,
)
from tasks.registry import resolve_model_version


@flow(name="packaging", persist_result=False)
def packaging(
    version: str = CHAMPION_ALIAS, model: str | None = None, push: bool = True
) -> BuiltImage:
    """Build the model server image for one model version, check it answers, push it, record it.

    Args:
        version: version number or alias (default: the `champion`).
        model: registered model name (default: the active pipeline's).
        push: push to MLOPS_IMAGE_REGISTRY and record the digest on the model version; without a
            registry the image stays in the local engine and the tag is recorded without a digest.

    The model version gets the tag `mlops.image` only once the image has answered the model's
    input example exactly as the model does in process (and, when pushed, the push succeeded).
    """
    log = get_run_logger()
    settings = Settings()
    uri = str(settings.mlflow_tracking_uri)
    name = model or RunContext.load(settings).model_name
    found = resolve_model_version(uri, name, version)
    git = git_state(settings.project_dir)
    repository = image_repository(settings.image_registry, name)
    tag = image_tag(found.version, git.commit)

    with tempfile.TemporaryDirectory(prefix="mlops-image-") as tmp:
        context = assemble_build_context(uri, found, Path(tmp) / "context")
        image = build_image(context, repository, tag, settings.base_image, git.commit)
        rows = smoke_test_image(image, context, free_port())
    log.info(
        "%s answered %d example rows exactly as %s v%s", image.reference, rows, name, found.version
    )
    if push and settings.image_registry:
        image = push_image(image, insecure=settings.image_registry_insecure)
    record_image(uri, name, found.version, image)
    create_markdown_artifact(
        key=f"image-{name}",
        markdown=_summary(name, found.version, image, settings.base_image, rows, git),
        description=f"{name} v{found.version} image",
    )
    log.info("%s v%s -> %s", name, found.version, image.pinned)
    return image


def _summary(
    name: str, version: int, image: BuiltImage, base: str, rows: int, git: GitState
) -> str:
    """The image's card: what it is, what it was built from, what its smoke test showed."""
    return "\n".join(
        [
            f"# {name} v{version}: model server image",
            "",
            "| | |",
            "|---|---|",
            f"| image | `{image.reference}` |",
            f"| digest | `{image.digest or 'not pushed'}` |",
            f"| image id | `{image.image_id}` |",
            f"| base | `{base}` |",
            f"| smoke test | {rows} example rows answered as in process |",
            f"| git commit | `{git.commit}`{' (dirty)' if git.dirty else ''} |",
        ]
    )
