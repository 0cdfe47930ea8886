"""Versioned data through DVC: the remote, materialising the dataset, resolving and reading one
exact version (verified by its md5 before anything parses it)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pandas as pd
from dvc.api import DVCFileSystem
from dvc.exceptions import DvcException
from dvc.repo import Repo

from mlops.core.errors import DataVersionError
from mlops.core.lineage import DataVersion
from mlops.ml.data import parse_dataset

REMOTE_NAME = "mlops"


def configure_remote(project_dir: Path, url: str | None, endpoint_url: str | None = None) -> None:
    """Point the repo's default DVC remote at ``url`` (a folder or s3:// URL), in .dvc/config.local.

    With no url the committed default (a folder under .mlops/) stays in force.
    """
    with Repo(str(project_dir)) as repo, repo.config.edit("local") as conf:
        if url is None:
            conf.get("remote", {}).pop(REMOTE_NAME, None)
            if conf.get("core", {}).get("remote") == REMOTE_NAME:
                del conf["core"]["remote"]
            return
        conf.setdefault("remote", {})[REMOTE_NAME] = remote_config(url, endpoint_url)
        conf.setdefault("core", {})["remote"] = REMOTE_NAME


def remote_config(url: str, endpoint_url: str | None = None) -> dict[str, str]:
    """The DVC config of the remote at ``url`` (with an S3-compatible ``endpoint_url``)."""
    remote = {"url": url}
    if endpoint_url:
        remote["endpointurl"] = endpoint_url
    return remote


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pull_dataset(project_dir: Path, path: str, seed: Path | None = None) -> str:
    """Make the DVC-tracked ``path`` present in the workspace and in the remote.

    Pulls from the remote; when the remote does not hold the version yet (a fresh machine with an
    empty local remote), restores it from the shipped ``seed`` copy, checks it byte for byte
    against the DVC record and pushes it, so the remote is complete afterwards.

    Returns:
        "present", "pulled" or "seeded": what had to be done.
    """
    version = resolve_data_version(project_dir, path)
    target = project_dir / path
    # DVC resolves relative targets against the working directory, not the repo: pass absolute ones.
    targets = [str(target)]
    if target.exists() and _md5_of(target) == version.md5:
        with Repo(str(project_dir)) as repo:
            repo.push(targets=targets)
        return "present"
    with Repo(str(project_dir)) as repo:
        try:
            repo.pull(targets=targets)
            return "pulled"
        except DvcException:
            if seed is None or not seed.exists():
                raise DataVersionError(
                    f"{path}: version {version.md5} is neither in the workspace nor in the DVC "
                    "remote, and no seed copy is configured"
                ) from None
        tmp = target.with_suffix(target.suffix + ".seeding")
        with gzip.open(seed, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        got = _md5_of(tmp)
        if got != version.md5:
            tmp.unlink()
            raise DataVersionError(
                f"{seed}: the seed copy has md5 {got}, but {path}.dvc records {version.md5}; "
                "refusing to version it as that data"
            )
        tmp.replace(target)
        repo.commit(str(target), force=True)  # caches the verified file; the .dvc stays as it is
        repo.push(targets=targets)
    return "seeded"


def resolve_data_version(project_dir: Path, path: str, rev: str | None = None) -> DataVersion:
    """Resolve the DVC record of ``path`` at git revision ``rev`` (the workspace when None)."""
    try:
        fs = DVCFileSystem(str(project_dir), rev=rev)
        info = fs.info(path)
    except FileNotFoundError:
        where = f"at revision {rev}" if rev else "in the workspace"
        raise DataVersionError(f"{path}: not tracked by DVC {where} (no {path}.dvc)") from None
    except DvcException as exc:
        raise DataVersionError(f"{path}@{rev or 'workspace'}: {exc}") from None
    dvc_info = info.get("dvc_info") or {}
    md5 = dvc_info.get("md5")
    if not md5:
        raise DataVersionError(f"{path}: not a DVC-tracked file (run `dvc add {path}`)")
    return DataVersion(path=path, md5=md5, size=int(dvc_info.get("size") or 0), rev=rev)


def read_data_version(
    project_dir: Path,
    version: DataVersion,
    remote_url: str | None = None,
    endpoint_url: str | None = None,
) -> bytes:
    """The bytes of exactly ``version`` through DVC (workspace, cache or remote), md5 verified.

    ``remote_url`` (MLOPS_DVC_REMOTE_URL) overrides the repo's configured remote for this read
    alone: a flow run in a fresh container has only the committed .dvc/config, whose default
    remote is a folder of the machine that made it."""
    override = (
        {"remote": REMOTE_NAME, "remote_config": remote_config(remote_url, endpoint_url)}
        if remote_url
        else {}
    )
    try:
        fs = DVCFileSystem(str(project_dir), rev=version.rev, **override)
        with fs.open(version.path, "rb") as fh:
            raw: bytes = fh.read()
    except (FileNotFoundError, DvcException) as exc:
        raise DataVersionError(
            f"{version.path}@{version.short}: cannot be read from the workspace, cache or remote "
            f"({exc}); run `mlops data pull`"
        ) from None
    got = hashlib.md5(raw).hexdigest()
    if got != version.md5:
        raise DataVersionError(
            f"{version.path}: the file's md5 is {got} but DVC records {version.md5}; version the "
            f"change with `dvc add {version.path}` or restore it with `dvc checkout {version.path}`"
        )
    return raw


def load_dataset(
    project_dir: Path,
    version: DataVersion,
    na_values: tuple[str, ...] = (),
    remote_url: str | None = None,
    endpoint_url: str | None = None,
) -> pd.DataFrame:
    """Read exactly ``version`` through DVC, verify its md5, and parse it (CSV, gzip CSV or Parquet)."""
    raw = read_data_version(project_dir, version, remote_url, endpoint_url)
    return parse_dataset(raw, version.path, na_values)


def locate_data_version(
    project_dir: Path, path: str, md5: str, revs: list[str | None]
) -> DataVersion:
    """The first of ``revs`` (None: the workspace) at which ``path`` is the version ``md5``."""
    tried = []
    for rev in revs:
        try:
            version = resolve_data_version(project_dir, path, rev)
        except DataVersionError as exc:
            tried.append(f"{rev or 'workspace'} ({exc})")
            continue
        if version.md5 == md5:
            return version
        tried.append(f"{rev or 'workspace'} (md5 {version.md5})")
    raise DataVersionError(f"{path}: version {md5} is not at any of: {'; '.join(tried)}")
