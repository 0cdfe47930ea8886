"""Versioned data through DVC: exact versions resolve and load; tampered, missing or unreadable data is refused."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd
import pytest

from mlops.adapters.dvc import configure_remote, pull_dataset
from mlops.core.errors import DataLoadError, DataVersionError
from mlops.ml.split import Split
from tasks.data import load_dataset, resolve_data_version
from tests.helpers import adult_frame, git, make_project

pytestmark = pytest.mark.unit


def test_resolves_the_recorded_md5_and_loads_exactly_those_bytes(tmp_path: Path) -> None:
    make_project(tmp_path)
    data = (tmp_path / "data" / "adult.csv").read_bytes()
    version = resolve_data_version.fn(tmp_path, "data/adult.csv")
    assert version.md5 == hashlib.md5(data).hexdigest()
    assert version.size == len(data) and version.rev is None
    frame = load_dataset.fn(tmp_path, version, ("?",))
    assert len(frame) == 1500 and frame["workclass"].isna().any()


def test_an_older_git_revision_gives_the_older_data(tmp_path: Path) -> None:
    from dvc.repo import Repo

    make_project(tmp_path)
    v1_commit = git(tmp_path, "rev-parse", "HEAD")
    v1 = resolve_data_version.fn(tmp_path, "data/adult.csv")
    adult_frame(1200).to_csv(tmp_path / "data" / "adult.csv", index=False)
    Repo(str(tmp_path)).add(str(tmp_path / "data" / "adult.csv"))
    git(tmp_path, "commit", "-qam", "data v2")

    now = resolve_data_version.fn(tmp_path, "data/adult.csv")
    then = resolve_data_version.fn(tmp_path, "data/adult.csv", rev=v1_commit)
    assert now.md5 != v1.md5 and then.md5 == v1.md5 and then.rev == v1_commit
    assert len(load_dataset.fn(tmp_path, then)) == 1500
    assert len(load_dataset.fn(tmp_path, now)) == 1200


def test_a_file_edited_without_dvc_add_is_refused(tmp_path: Path) -> None:
    make_project(tmp_path)
    version = resolve_data_version.fn(tmp_path, "data/adult.csv")
    with (tmp_path / "data" / "adult.csv").open("a") as fh:
        fh.write("39,Private,1,Bachelors,13,Divorced,Sales,Unmarried,White,Male,0,0,40,Peru,>50K\n")
    with pytest.raises(
        DataVersionError, match=r"md5 is .* but DVC records .*dvc add data/adult\.csv"
    ):
        load_dataset.fn(tmp_path, version)


def test_an_untracked_path_is_refused(tmp_path: Path) -> None:
    make_project(tmp_path)
    with pytest.raises(DataVersionError, match=r"data/other\.csv: not tracked by DVC"):
        resolve_data_version.fn(tmp_path, "data/other.csv")


def test_an_unknown_revision_is_refused(tmp_path: Path) -> None:
    make_project(tmp_path)
    with pytest.raises(DataVersionError, match=r"data/adult\.csv@no-such-rev"):
        resolve_data_version.fn(tmp_path, "data/adult.csv", rev="no-such-rev")


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    make_project(tmp_path, raw=b"")
    version = resolve_data_version.fn(tmp_path, "data/adult.csv")
    with pytest.raises(DataLoadError, match=r"data/adult\.csv: the file is empty"):
        load_dataset.fn(tmp_path, version)


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    make_project(tmp_path, raw=b'age,sex\n"unterminated,Male\n1,2,3,4\n')
    version = resolve_data_version.fn(tmp_path, "data/adult.csv")
    with pytest.raises(DataLoadError, match=r"data/adult\.csv: not a readable CSV table"):
        load_dataset.fn(tmp_path, version)


def test_pull_seeds_an_empty_remote_from_the_verified_copy(tmp_path: Path) -> None:
    import gzip
    import shutil

    project = tmp_path / "project"
    make_project(project)
    data = project / "data" / "adult.csv"
    seed = tmp_path / "seed.csv.gz"
    with data.open("rb") as src, gzip.open(seed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    remote = tmp_path / "remote"
    configure_remote(project, str(remote))
    # a fresh clone: no workspace file, no cache
    data.unlink()
    shutil.rmtree(project / ".dvc" / "cache")

    assert pull_dataset(project, "data/adult.csv", seed) == "seeded"
    assert any(p.is_file() for p in remote.rglob("*")), "the remote holds the data afterwards"
    assert pull_dataset(project, "data/adult.csv", seed) == "present"
    data.unlink()
    shutil.rmtree(project / ".dvc" / "cache")
    assert pull_dataset(project, "data/adult.csv", seed) == "pulled"
    assert len(pd.read_csv(data)) == 1500


def test_a_flow_reads_through_the_remote_the_settings_name_not_only_the_repos_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flow run in a fresh container (the docker, kubernetes and cloud pools) has the committed
    .dvc/config alone, whose remote is a folder of another machine: MLOPS_DVC_REMOTE_URL is where
    its data versions are."""
    import shutil

    from dvc.repo import Repo

    project = tmp_path / "project"
    make_project(project)
    team = tmp_path / "team-remote"
    configure_remote(project, str(team))
    with Repo(str(project)) as repo:
        repo.push()
    configure_remote(project, None)  # back to the repo's default: a folder holding nothing
    (project / "data" / "adult.csv").unlink()
    shutil.rmtree(project / ".dvc" / "cache")
    version = resolve_data_version.fn(project, "data/adult.csv")
    monkeypatch.delenv("MLOPS_DVC_REMOTE_URL", raising=False)
    with pytest.raises(
        DataVersionError, match="cannot be read from the workspace, cache or remote"
    ):
        load_dataset.fn(project, version)
    monkeypatch.setenv("MLOPS_DVC_REMOTE_URL", str(team))
    assert len(load_dataset.fn(project, version, ("?",))) == 1500
    assert not (project / ".dvc" / "config.local").read_text().strip(), "nothing was written"


def _pull(project: Path, seed: Path) -> str:
    return pull_dataset(project, "data/adult.csv", seed)


def test_processes_pulling_one_repo_at_once_each_get_the_verified_data(tmp_path: Path) -> None:
    """Two flows (or test workers) on one machine pull the same dataset: one seeds, the others
    wait for DVC's lock instead of failing on it, and no one reads a half-copied file."""
    import gzip
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    project = tmp_path / "project"
    make_project(project)
    data = project / "data" / "adult.csv"
    expected = data.read_bytes()
    seed = tmp_path / "seed.csv.gz"
    with data.open("rb") as src, gzip.open(seed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    configure_remote(project, str(tmp_path / "remote"))
    data.unlink()
    shutil.rmtree(project / ".dvc" / "cache")

    with ProcessPoolExecutor(3) as pool:
        done = list(pool.map(_pull, [project] * 3, [seed] * 3))
    assert "seeded" in done and set(done) <= {"seeded", "pulled", "present"}, done
    assert data.read_bytes() == expected
    assert not list(data.parent.glob("*.seeding*")), "no copy in progress is left behind"


def test_a_seed_that_differs_from_the_record_is_refused(tmp_path: Path) -> None:
    import gzip
    import shutil

    project = tmp_path / "project"
    make_project(project)
    seed = tmp_path / "seed.csv.gz"
    with gzip.open(seed, "wb") as fh:
        fh.write(adult_frame(1100).to_csv(index=False).encode())
    configure_remote(project, str(tmp_path / "remote"))
    (project / "data" / "adult.csv").unlink()
    shutil.rmtree(project / ".dvc" / "cache")
    with pytest.raises(DataVersionError, match="refusing to version it"):
        pull_dataset(project, "data/adult.csv", seed)
    assert not (project / "data" / "adult.csv").exists(), "nothing half-written is left"


# formats: chosen by the file's name, judged by the same contract --------------------------------
def _version_file(root: Path, name: str, raw: bytes) -> str:
    """``raw`` written as data/<name> in the project and versioned with DVC."""
    from dvc.repo import Repo

    path = root / "data" / name
    path.write_bytes(raw)
    Repo(str(root)).add(str(path))
    git(root, "add", "-A")
    git(root, "commit", "-qm", f"data as {name}")
    return f"data/{name}"


def _validated_split(root: Path, path: str) -> tuple[pd.DataFrame, Split]:
    from mlops.core.config import load_pipeline_config
    from mlops.ml.contract import check_contract
    from mlops.ml.problems import problem_for
    from mlops.ml.split import split_dataset
    from tests.helpers import EXAMPLE

    cfg = load_pipeline_config(EXAMPLE / "pipeline.yaml")
    contract = cfg.contract.model_copy(update={"min_rows": 100})
    frame = load_dataset.fn(root, resolve_data_version.fn(root, path), cfg.data.na_values)
    valid = check_contract(frame, contract, path, root / "reports")
    split = split_dataset(valid, cfg.features.columns, problem_for(cfg.target), cfg.split)
    return valid, split


def test_a_parquet_file_passes_the_same_contract_and_splits_like_the_csv(tmp_path: Path) -> None:
    """Typed columns, a category dtype and the "?" of the original as text: after the contract
    the frame and the split are the CSV's, row for row."""
    make_project(tmp_path)
    typed = pd.read_csv(tmp_path / "data" / "adult.csv", skipinitialspace=True)
    assert (typed["workclass"] == "?").any(), "the missing marker is in the file as text"
    typed["sex"] = typed["sex"].astype("category")
    buffer = io.BytesIO()
    typed.to_parquet(buffer, index=False)
    parquet = _version_file(tmp_path, "adult.parquet", buffer.getvalue())

    from_csv, csv_split = _validated_split(tmp_path, "data/adult.csv")
    from_parquet, parquet_split = _validated_split(tmp_path, parquet)
    pd.testing.assert_frame_equal(from_parquet, from_csv)
    assert from_parquet["workclass"].isna().sum() == from_csv["workclass"].isna().sum() > 0
    pd.testing.assert_frame_equal(parquet_split.X_holdout, csv_split.X_holdout)
    pd.testing.assert_series_equal(parquet_split.y_train, csv_split.y_train)


def test_a_parquet_file_that_breaks_the_contract_is_refused_like_a_csv(tmp_path: Path) -> None:
    from mlops.core.errors import DataContractError

    make_project(tmp_path)
    typed = pd.read_csv(tmp_path / "data" / "adult.csv", na_values=["?"], skipinitialspace=True)
    typed.loc[3, "age"] = 500
    buffer = io.BytesIO()
    typed.to_parquet(buffer, index=False)
    parquet = _version_file(tmp_path, "adult.parquet", buffer.getvalue())
    with pytest.raises(
        DataContractError, match=r"data/adult\.parquet: 1 contract violations .*age"
    ):
        _validated_split(tmp_path, parquet)


def test_a_gzip_csv_reads_like_the_plain_one(tmp_path: Path) -> None:
    import gzip

    make_project(tmp_path)
    raw = (tmp_path / "data" / "adult.csv").read_bytes()
    packed = _version_file(tmp_path, "adult.csv.gz", gzip.compress(raw))
    pd.testing.assert_frame_equal(
        _validated_split(tmp_path, packed)[0], _validated_split(tmp_path, "data/adult.csv")[0]
    )


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("adult.parquet", b"PAR1 not really", r"data/adult\.parquet: not a readable Parquet file"),
        ("adult.csv.gz", b"plain text, not gzip", r"data/adult\.csv\.gz: not a readable gzip file"),
    ],
)
def test_an_unreadable_file_of_each_format_is_refused(
    tmp_path: Path, name: str, raw: bytes, message: str
) -> None:
    make_project(tmp_path)
    path = _version_file(tmp_path, name, raw)
    with pytest.raises(DataLoadError, match=message):
        load_dataset.fn(tmp_path, resolve_data_version.fn(tmp_path, path))


def test_a_data_path_of_another_format_is_refused_when_the_config_loads() -> None:
    from pydantic import ValidationError

    from mlops.core.config import DataConfig
    from mlops.ml.data import parse_dataset

    with pytest.raises(
        ValidationError, match=r"data/adult\.xlsx: unknown data format; .*\.parquet"
    ):
        DataConfig(path="data/adult.xlsx", contract=Path("c.yaml"))
    with pytest.raises(DataLoadError, match=r"adult\.json: unknown data format"):
        parse_dataset(b"{}", "adult.json")
    assert DataConfig(path="data/A.PARQUET", contract=Path("c.yaml")).format == "parquet"
