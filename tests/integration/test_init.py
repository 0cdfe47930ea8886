"""`mlops init` as a newcomer meets it: a CSV and no contract in, a pipeline that trains and passes
its own gates out (two commands), an inferred contract that then refuses a corrupted copy, and
bad input refused in one line before anything is written."""

from __future__ import annotations

import gzip
import importlib.util
import os
import shlex
import uuid
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops.cli import app
from mlops.core.config import load_pipeline_config
from mlops.core.policy import load_policy
from mlops.core.settings import Settings
from tests.helpers import BIN, PROJECT, adult_frame, assert_clean, git, mlops

pytestmark = pytest.mark.integration

ROWS = 3000


def _bare_project(root: Path) -> Path:
    """A git + DVC project with the project layer (flows/, tasks/) and no data or config yet."""
    from dvc.repo import Repo

    root.mkdir(parents=True)
    git(root, "init", "-q")
    git(root, "config", "user.email", "tests@mlops.invalid")
    git(root, "config", "user.name", "mlops tests")
    with Repo.init(str(root)) as repo, repo.config.edit("repo") as conf:
        conf["core"]["analytics"] = False
    for layer in ("flows", "tasks"):
        (root / layer).symlink_to(PROJECT / layer, target_is_directory=True)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "empty project")
    return root


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_a_csv_becomes_a_gated_champion_in_two_commands_and_its_contract_refuses_a_corrupted_copy(
    local_stack: Settings, tmp_path: Path
) -> None:
    project = _bare_project(tmp_path / "project")
    incoming = tmp_path / "incoming" / "census.csv"
    incoming.parent.mkdir()
    adult_frame(ROWS).to_csv(incoming, index=False)  # as shipped: "?" marks a missing value
    name = f"init-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "MLOPS_PROJECT_DIR": str(project),
        "MLOPS_DVC_REMOTE_URL": str(tmp_path / "dvc-remote"),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }

    # 1: mlops init
    out = mlops(
        env, "init", "--data", str(incoming), "--target", "income", "--na-value", "?",
        "--name", name, "--no-register",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert_clean(out)
    summary = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    assert summary["age"][1:3] == ["int", "[9,"], out.stdout
    assert summary["workclass"][1] == "category" and "missing)" in " ".join(summary["workclass"])
    assert summary["income"][1] == "category" and "target" in summary["income"]
    assert "data/census.csv: pushed to the DVC remote" in out.stdout
    if importlib.util.find_spec("mlops.stack.deployments"):
        assert f"training/{name}" in out.stdout and "added to prefect.yaml" in out.stdout
    pipeline = project / "pipelines" / name / "pipeline.yaml"
    cfg = load_pipeline_config(pipeline)
    assert (cfg.target.kind, cfg.target.positive) == ("binary", ">50K")
    assert cfg.data.path == "data/census.csv" and (project / "data" / "census.csv.dvc").is_file()
    assert "income" not in cfg.features.columns and "age" in cfg.features.numeric
    policy, _ = load_policy(cfg.policy, set(cfg.contract.columns), cfg.target.kind)
    assert set(policy.metrics) == {"roc_auc", "f1", "brier"}
    assert 0.8 < policy.metrics["roc_auc"].min < 0.9, policy.metrics  # below a ~0.90 baseline

    # 2: the command it printed trains, judges and promotes the first version
    (next_line,) = [line for line in out.stdout.splitlines() if line.startswith("next: ")]
    command = shlex.split(next_line.removeprefix("next: "))
    assert command[:3] == ["mlops", "train", "--pipeline"] and "promotion" in command, next_line
    trained = mlops(env, *command[1:])
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert f"registered {name} version 1" in trained.stdout
    from mlflow import MlflowClient

    client = MlflowClient(local_stack.mlflow_tracking_uri, local_stack.mlflow_tracking_uri)
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    # the inferred contract refuses a corrupted copy, naming the column
    from dvc.repo import Repo

    data = project / "data" / "census.csv"
    corrupted = pd.read_csv(data, dtype=str, keep_default_na=False)
    corrupted.loc[[5, 17, 40], "age"] = "500"
    corrupted.to_csv(data, index=False)
    with Repo(str(project)) as repo:
        repo.add(str(data))
    checked = mlops({**env, "MLOPS_PIPELINE": str(pipeline)}, "data", "check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    error = _error_line(checked.stderr)
    assert "3 contract violations" in error and "age:in_range[9.0, 98.0]" in error, error


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _bare_project(tmp_path_factory.mktemp("init-bad") / "project")
    frame = adult_frame(300)
    frame.to_csv(root / "census.csv", index=False)
    frame.assign(income="<=50K").to_csv(root / "one-class.csv", index=False)
    frame.assign(income=frame["income"].where(frame.index != 7, "")).to_csv(
        root / "gaps.csv", index=False
    )
    (root / "broken.csv").write_bytes(gzip.compress(b"\xff\xfe" * 500))
    (root / "census.txt").write_text((root / "census.csv").read_text())
    return root


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        ("missing.csv", [], "missing.csv: file not found"),
        ("census.csv", ["--target", "salary"], "--target 'salary' is not a column of"),
        ("broken.csv", [], "broken.csv: not a readable CSV table"),
        ("census.txt", [], "census.txt: unknown data format"),
        ("one-class.csv", [], "--target 'income' holds one value ('<=50K') in all 300 rows"),
        ("gaps.csv", [], "--target 'income': 1 of 300 rows of"),
        (
            "census.csv",
            ["--problem", "regression"],
            "--problem regression: a regression target must be an int or float column",
        ),
        (
            "census.csv",
            ["--problem", "multiclass"],
            "a multiclass target needs three classes or more, not ['<=50K', '>50K']",
        ),
        ("census.csv", ["--problem", "ranking"], "--problem 'ranking': use one of binary"),
        ("census.csv", ["--positive", "rich"], "positive 'rich' is not one of ['<=50K', '>50K']"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem_and_nothing_is_written(
    project: Path, data: str, options: list[str], expected: str
) -> None:
    options = options if "--target" in options else ["--target", "income", *options]
    before = sorted(project.rglob("*"))
    result = CliRunner().invoke(
        app,
        ["init", "--data", str(project / data), "--project-dir", str(project), *options],
    )
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    error = _error_line(result.stderr)
    assert expected in error, error
    assert sorted(project.rglob("*")) == before, "nothing is written"


def _problem_frames() -> dict[str, pd.DataFrame]:
    """Small files whose target decides the problem type: a 0/1 int, a float, three categories
    (in a Parquet file)."""
    import numpy as np

    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    group = rng.choice(["a", "b"], 300)
    return {
        "clicks.csv": pd.DataFrame({"x": x, "group": group, "clicked": (x > 0).astype(int)}),
        "prices.csv": pd.DataFrame({"x": x, "group": group, "price": 100 + 20 * x}),
        "sizes.parquet": pd.DataFrame(
            {"x": x, "group": group, "size": np.select([x < -0.5, x < 0.5], ["S", "M"], "L")}
        ),
    }


@pytest.mark.parametrize(
    ("data", "target", "problem", "classes", "metrics"),
    [
        ("clicks.csv", "clicked", "binary", ("0", "1"), {"roc_auc", "f1", "brier"}),
        ("prices.csv", "price", "regression", (), {"rmse", "mae", "r2"}),
        (
            "sizes.parquet",
            "size",
            "multiclass",
            ("L", "M", "S"),
            {"f1_macro", "accuracy", "log_loss"},
        ),
    ],
)
def test_the_target_decides_the_problem_and_what_is_written_loads_for_it(
    project: Path,
    data: str,
    target: str,
    problem: str,
    classes: tuple[str, ...],
    metrics: set[str],
) -> None:
    path = project.parent / data
    frame = _problem_frames()[data]
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    name = f"{path.stem}-{uuid.uuid4().hex[:6]}"
    args = ["init", "--data", str(path), "--target", target, "--project-dir", str(project)]
    result = CliRunner().invoke(app, [*args, "--name", name, "--no-register"])
    assert result.exit_code == 0, result.output
    cfg = load_pipeline_config(project / "pipelines" / name / "pipeline.yaml")
    assert (cfg.target.kind, cfg.target.classes) == (problem, classes)
    assert cfg.features.numeric == ("x",) and cfg.features.categorical == ("group",)
    policy, _ = load_policy(cfg.policy, set(cfg.contract.columns), cfg.target.kind)
    assert set(policy.metrics) == metrics
