"""A pipeline's deployments rendered from its config, and prefect.yaml growing by one block per
model: existing text kept, duplicates refused, the same pipeline twice a no-op."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from mlops.core.config import load_pipeline_config
from mlops.core.errors import MlopsError
from mlops.stack.deployments import (
    FLOW_NAMES,
    PREFECT_FILE,
    RETRAINING,
    ModelDeploymentError,
    add_model,
    deployment_names,
    deployments_for,
    render_block,
)
from tests.helpers import EXAMPLE, PROJECT, edit_yaml

pytestmark = pytest.mark.unit

ADULT = Path("examples/adult/pipeline.yaml")


def pipeline_copy(root: Path, folder: str, **changes: object) -> Path:
    """The example's pipeline config (with its contract and policy) under ``root/folder``."""
    into = root / folder
    into.mkdir(parents=True)
    for name in ("pipeline.yaml", "contract.yaml", "policy.yaml"):
        shutil.copy(EXAMPLE / name, into / name)
    edit_yaml(into / "pipeline.yaml", **changes)
    return into / "pipeline.yaml"


def parsed(path: Path) -> list[dict[str, object]]:
    return list(yaml.safe_load(path.read_text())["deployments"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose prefect.yaml is the shipped one, with a comment of the user's at its end."""
    text = (PROJECT / PREFECT_FILE).read_text() + "  # kept: a note of the user's\n"
    (tmp_path / PREFECT_FILE).write_text(text)
    return tmp_path


def test_the_adult_deployments_of_prefect_yaml_are_what_its_config_renders() -> None:
    cfg = load_pipeline_config(PROJECT / ADULT)
    text = (PROJECT / PREFECT_FILE).read_text()
    rendered = deployments_for(ADULT, cfg)
    examples = [ADULT, *(Path(f"examples/{n}/pipeline.yaml") for n in ("diabetes", "penguins"))]
    assert parsed(PROJECT / PREFECT_FILE) == [  # the file holds the examples' and nothing else
        d for p in examples for d in deployments_for(p, load_pipeline_config(PROJECT / p))
    ]
    assert render_block(ADULT, cfg) in text  # written by the renderer, to the byte
    assert deployment_names(rendered) == [
        "training/adult",
        "training/adult-to-production",
        "hyperparameter-search/adult",
        "promotion/adult",
        "packaging/adult",
        "release/adult",
        "monitoring/adult",
        "retraining/adult",
    ]


def test_the_flow_names_are_those_the_flows_declare() -> None:
    """``flow/deployment`` names are built from FLOW_NAMES: each is the name its @flow gives."""
    for entrypoint, name in FLOW_NAMES.items():
        path, func = entrypoint.split(":")
        tree = ast.parse((PROJECT / path).read_text())
        (found,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func]
        (decorator,) = [d for d in found.decorator_list if isinstance(d, ast.Call)]
        declared = {k.arg: k.value for k in decorator.keywords}["name"]
        assert isinstance(declared, ast.Constant) and declared.value == name, entrypoint


def test_each_pipeline_gets_its_own_names_tags_and_automations(tmp_path: Path) -> None:
    path = pipeline_copy(tmp_path, "churn", name="churn", model_name="churn-model", search=None)
    cfg = load_pipeline_config(path)
    rendered = deployments_for(Path("churn/pipeline.yaml"), cfg)
    assert [d["name"] for d in rendered] == ["churn", "churn-to-production", *["churn"] * 5]
    assert "hyperparameter-search/churn" not in deployment_names(rendered)  # it has no search
    for d in rendered:
        assert d["tags"][-1] == "churn-model", d
        assert d["work_pool"] == {"name": "{{ $MLOPS_WORK_POOL }}"}
        parameters = d["parameters"]
        assert parameters.get("pipeline", "churn/pipeline.yaml") == "churn/pipeline.yaml"
        assert "churn-model" in d["description"] and "adult" not in d["description"]
    (retraining,) = [d for d in rendered if d["entrypoint"] == RETRAINING]
    assert {t["match"]["prefect.resource.id"] for t in retraining["triggers"]} == {
        "mlops.model.churn-model"
    }
    assert [t["expect"] for t in retraining["triggers"]] == [
        ["mlops.model.drift-detected", "mlops.model.performance-degraded"],
        ["mlops.policy.updated"],
    ]


def test_a_model_is_appended_with_the_file_kept_and_adding_it_again_writes_nothing(
    project: Path,
) -> None:
    before = (project / PREFECT_FILE).read_text()
    path = pipeline_copy(project, "models/churn", name="churn", model_name="churn-model")
    said: list[str] = []
    names = add_model(project, Path("models/churn/pipeline.yaml"), out=said.append)
    after = (project / PREFECT_FILE).read_text()
    assert after.startswith(before)  # every byte and comment of the file is still there
    cfg = load_pipeline_config(path)
    churn = deployments_for(Path("models/churn/pipeline.yaml"), cfg)
    assert parsed(project / PREFECT_FILE) == parsed(PROJECT / PREFECT_FILE) + churn
    assert names == deployment_names(churn) and names[0] == "training/churn"
    assert said == [f"churn-model (models/churn/pipeline.yaml): 8 deployments added to "
                    f"prefect.yaml: {', '.join(names)}"]  # fmt: skip

    again: list[str] = []
    assert add_model(project, path, out=again.append) == names  # absolute path: same pipeline
    assert (project / PREFECT_FILE).read_text() == after
    assert "deployments are in prefect.yaml already, unchanged; nothing written" in again[0]


def test_a_pipeline_name_or_model_another_pipeline_deploys_is_refused_naming_both(
    project: Path,
) -> None:
    before = (project / PREFECT_FILE).read_text()
    same_name = pipeline_copy(project, "twin", model_name="twin-model")  # name: adult
    with pytest.raises(ModelDeploymentError) as err:
        add_model(project, same_name, out=None)
    assert "twin/pipeline.yaml: its pipeline name 'adult' is already deployed by " in str(err.value)
    assert "examples/adult/pipeline.yaml (training/adult, " in str(err.value)

    same_model = pipeline_copy(project, "rival", name="rival")  # model_name: adult-income
    with pytest.raises(ModelDeploymentError) as err:
        add_model(project, same_model, out=None)
    message = str(err.value)
    assert "rival/pipeline.yaml: its model_name 'adult-income' is already deployed by" in message
    assert "examples/adult/pipeline.yaml" in message and "retraining/adult" in message
    assert (project / PREFECT_FILE).read_text() == before


def test_a_pipeline_whose_config_changed_since_it_was_added_is_refused(project: Path) -> None:
    path = pipeline_copy(project, "churn", name="churn", model_name="churn-model")
    add_model(project, path, out=None)
    written = (project / PREFECT_FILE).read_text()
    edit_yaml(path, search=None)  # its search deployment would go
    with pytest.raises(ModelDeploymentError, match=r"differ from what its config renders now "
                       r"\(in the file: hyperparameter-search/churn; rendered: none\)"):  # fmt: skip
        add_model(project, path, out=None)
    edit_yaml(path, model_name="churn-renamed")  # every deployment changes, packaging too
    with pytest.raises(ModelDeploymentError, match=r"differ from what its config renders now "
                       r"\(in the file: training/churn, .*packaging/churn, .*; rendered: "
                       r"training/churn, "):  # fmt: skip
        add_model(project, path, out=None)
    assert (project / PREFECT_FILE).read_text() == written


def test_a_project_without_prefect_yaml_gets_one(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    path = pipeline_copy(project, "conf", name="basket", model_name="basket-size")
    names = add_model(project, path, out=None)
    spec = yaml.safe_load((project / PREFECT_FILE).read_text())
    assert spec["name"] == "shop"
    assert spec["pull"] == yaml.safe_load((PROJECT / PREFECT_FILE).read_text())["pull"]
    assert deployment_names(spec["deployments"]) == names and len(names) == 8


def test_what_cannot_take_a_model_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    outside = pipeline_copy(tmp_path, "elsewhere", name="x", model_name="x")
    project = tmp_path / "project"
    project.mkdir()
    with pytest.raises(ModelDeploymentError, match="must be inside the project folder"):
        add_model(project, outside, out=None)
    assert not (project / PREFECT_FILE).exists()

    inside = pipeline_copy(project, "conf", name="x", model_name="x")
    last_key = "name: p\ndeployments:\n  - name: a\n    entrypoint: flows/a.py:a\npull: []\n"
    (project / PREFECT_FILE).write_text(last_key)
    with pytest.raises(ModelDeploymentError, match="`deployments:` must be the last top-level"):
        add_model(project, inside, out=None)
    assert (project / PREFECT_FILE).read_text() == last_key

    (project / PREFECT_FILE).write_text("deployments: [")
    with pytest.raises(ModelDeploymentError, match="not valid YAML"):
        add_model(project, inside, out=None)
    with pytest.raises(MlopsError, match="file not found"):
        add_model(project, project / "conf" / "missing.yaml", out=None)
