"""infra/terraform without a terraform binary (none is reachable here): every file parses
(python-hcl2), references hold together (variables declared and set per environment, the work pool
template file present, the outputs the deployment environments read), and checkov finds nothing
that is neither fixed nor skipped with its reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
TF = PROJECT / "infra" / "terraform"
CHECKOV = PROJECT / ".tools" / "checkov" / "bin" / "checkov"
ENVIRONMENTS = ["staging", "prod"]


def plain(value: Any) -> Any:
    """python-hcl2's values without its bookkeeping: string quotes dropped, `__x__` keys left out."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def load(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        parsed: dict[str, Any] = plain(hcl2.load(fh))
    return parsed


def blocks(folder: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Blocks of one kind ("variable", "output", "module") across a folder's .tf files, by name."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.tf")):
        for block in load(path).get(kind, []):
            found |= block
    return found


def references(folder: Path, prefix: str) -> set[str]:
    text = "\n".join(p.read_text() for p in folder.glob("*.tf"))
    return set(re.findall(rf"\b{prefix}\.([A-Za-z_][\w-]*)", text))


def test_every_file_parses() -> None:
    files = [*TF.rglob("*.tf"), *TF.rglob("*.tfvars"), *TF.rglob("*.hcl")]
    assert len(files) >= 12
    for path in files:
        assert isinstance(load(path), dict), path


def test_variables_are_declared_and_set_for_every_environment() -> None:
    declared = blocks(TF, "variable")
    assert references(TF, "var") <= set(declared), references(TF, "var") - set(declared)
    required = {name for name, spec in declared.items() if "default" not in spec}
    for env in ENVIRONMENTS:
        values = load(TF / "environments" / f"{env}.tfvars")
        assert set(values) <= set(declared), f"{env}: undeclared {set(values) - set(declared)}"
        assert required <= set(values), f"{env}: unset {required - set(values)}"
        assert values["environment"] == env
        backend = load(TF / "environments" / f"{env}.backend.hcl")
        assert backend["key"] == f"mlops/{env}/terraform.tfstate"  # one state per environment


def test_modules_receive_exactly_their_inputs() -> None:
    for name, call in blocks(TF, "module").items():
        module = (TF / call["source"]).resolve()
        inputs = blocks(module, "variable")
        given = set(call) - {"source", "for_each", "count", "depends_on", "providers"}
        required = {k for k, v in inputs.items() if "default" not in v}
        assert given <= set(inputs), f"module {name}: unknown inputs {given - set(inputs)}"
        assert required <= given, f"module {name}: missing inputs {required - given}"
        assert references(module, "var") <= set(inputs)


def test_the_work_pool_uses_the_template_mlops_deploy_uses() -> None:
    text = (TF / "prefect.tf").read_text()
    assert '"${path.module}/../../deployments/work-pools/ecs.json"' in text
    assert (PROJECT / "deployments/work-pools/ecs.json").exists()
    template = json.loads((PROJECT / "deployments/work-pools/ecs.json").read_text())
    defaults = re.search(r"ecs_defaults = \{(.*?)\n  \}\n", text, flags=re.S)
    assert defaults is not None
    keys = set(re.findall(r"^    (\w+)\s*=", defaults[1], flags=re.M))
    assert keys and keys <= set(template["variables"]["properties"]), keys


def test_the_outputs_give_what_the_cloud_environments_read() -> None:
    outputs = set(blocks(TF, "output"))
    for env in ENVIRONMENTS:
        spec = (PROJECT / "deployments/environments" / f"{env}.yaml").read_text()
        wanted = set(re.findall(r"\$\{(MLOPS_[A-Z_]+)\}", spec)) - {
            "MLOPS_FLOW_IMAGE",
            "MLOPS_VPC_ID",
        }
        assert wanted <= outputs, f"{env}: no output for {wanted - outputs}"
        pool = yaml.safe_load(spec)["work_pool"]
        assert pool["name"] == f"mlops-{env}" and pool["type"] == "ecs"  # the pool prefect.tf makes


def checkov(folder: Path) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV}: `make tools` installs it")
    out = subprocess.run(
        [str(CHECKOV), "-d", str(folder), "--framework", "terraform", "--skip-download",
         "-o", "json"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    report = json.loads(out.stdout)
    result: dict[str, Any] = report[0] if isinstance(report, list) else report
    return result


def test_checkov_finds_nothing_left_unexplained() -> None:
    report = checkov(TF)
    assert report["summary"]["parsing_errors"] == 0
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 150  # the checks ran on the resources
    for check in report["results"]["skipped_checks"]:
        assert check["check_result"].get("suppress_comment"), check["check_id"]


def test_checkov_catches_a_weakened_resource(tmp_path: Path) -> None:
    copy = tmp_path / "terraform"
    shutil.copytree(TF, copy)
    registry = copy / "registry.tf"
    registry.write_text(registry.read_text().replace('"IMMUTABLE"', '"MUTABLE"'))
    failed = {c["check_id"] for c in checkov(copy)["results"]["failed_checks"]}
    assert "CKV_AWS_51" in failed  # ECR image tags must be immutable
