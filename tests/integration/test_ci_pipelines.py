"""The CI/CD pipelines shipped for the user's repository (GitHub Actions, GitLab CI, Bitbucket
Pipelines, Jenkins).

The GitHub, GitLab and Bitbucket files are checked against SchemaStore's schemas for them, which
check-jsonschema ships (no network needed). Every command the four pipelines call is checked
against the project: `make` targets against the Makefile, `mlops` commands and options against
the CLI, `prefect deployment run` names and parameters against prefect.yaml and the flows,
`mlops deploy --env` against deployments/environments, and the files they name must exist. Secrets
appear only as references.
"""

from __future__ import annotations

import inspect
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from mlops.cli import app
from mlops.stack.environments import available
from tests.helpers import BIN

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
GITHUB = sorted((PROJECT / ".github" / "workflows").glob("*.yml"))
GITLAB = PROJECT / ".gitlab-ci.yml"
BITBUCKET = PROJECT / "bitbucket-pipelines.yml"
JENKINS = PROJECT / "Jenkinsfile"


# what the pipelines run ------------------------------------------------------------------------
def github_commands(path: Path) -> list[str]:
    workflow = yaml.safe_load(path.read_text())
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]  # fmt: skip


def gitlab_commands(path: Path) -> list[str]:
    spec = yaml.safe_load(path.read_text())
    lines: list[str] = []
    for name, job in spec.items():
        if isinstance(job, dict) and name not in ("variables", "workflow", "default"):
            lines += job.get("before_script", []) + job.get("script", [])
    return lines + spec.get("default", {}).get("before_script", [])


def bitbucket_steps(node: Any) -> list[dict[str, Any]]:
    """Every step of a Bitbucket pipeline file, wherever it sits (pipelines by trigger, parallel
    groups; YAML's anchors already resolved by the loader)."""
    if isinstance(node, dict):
        found = [node["step"]] if isinstance(node.get("step"), dict) else []
        return found + [s for k, v in node.items() if k != "step" for s in bitbucket_steps(v)]
    if isinstance(node, list):
        return [s for item in node for s in bitbucket_steps(item)]
    return []


def bitbucket_commands(path: Path) -> list[str]:
    spec = yaml.safe_load(path.read_text())
    return [line for step in bitbucket_steps(spec["pipelines"]) for line in step["script"]]


def jenkins_commands(path: Path) -> list[str]:
    return re.findall(r"\bsh '([^']*)'", path.read_text())


def lines_of(commands: list[str]) -> list[str]:
    return [line.strip() for c in commands for line in c.splitlines() if line.strip()]


# what the project offers ------------------------------------------------------------------------
def make_targets() -> set[str]:
    text = (PROJECT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, flags=re.M))


def mlops_commands() -> dict[str, Any]:
    """`mlops` commands by their full name ("data check"), each with its click command."""
    root: Any = typer.main.get_command(app)
    found: dict[str, Any] = {}
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):  # a group
            found |= {f"{name} {sub}": c for sub, c in cmd.commands.items()}
        else:
            found[name] = cmd
    return found


def prefect_deployments() -> dict[str, set[str]]:
    """Deployment names of prefect.yaml ("flow/name") with the parameters their flow takes."""
    import importlib

    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    found: dict[str, set[str]] = {}
    for d in spec["deployments"]:
        module, func = d["entrypoint"].split(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
        found[f"{flow.name}/{d['name']}"] = set(inspect.signature(flow.fn).parameters)
    return found


def simple_commands(line: str) -> list[list[str]]:
    """The words of each command of a shell line (split at pipes, `&&`, `||` and `;`)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("|", "||", "&&", ";"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def problems(lines: list[str]) -> list[str]:
    """What in these command lines the project does not have."""
    targets, commands, deployments = make_targets(), mlops_commands(), prefect_deployments()
    environments = set(available(PROJECT))
    found: list[str] = []
    for line in lines:
        for words in simple_commands(line):
            tool, args = Path(words[0]).name, words[1:]
            if tool == "make":
                found += [f"make target {t!r}" for t in args if t not in targets]
            elif tool == "mlops":
                name = " ".join(args[:2]) if " ".join(args[:2]) in commands else args[0]
                if name not in commands:
                    found.append(f"mlops command {name!r}")
                    continue
                options = {o for p in commands[name].params for o in getattr(p, "opts", [])}
                found += [
                    f"mlops {name} option {a!r}" for a in args if a.startswith("--") and a not in options
                ]  # fmt: skip
                if name == "deploy" and "--env" in args:
                    env = args[args.index("--env") + 1]
                    if not env.startswith("$") and env not in environments:
                        found.append(f"environment {env!r}")
            elif tool == "prefect" and args[:2] == ["deployment", "run"]:
                if args[2] not in deployments:
                    found.append(f"deployment {args[2]!r}")
                    continue
                for i, a in enumerate(args):
                    if a == "--param" and args[i + 1].split("=")[0] not in deployments[args[2]]:
                        found.append(f"parameter {args[i + 1]!r} of {args[2]}")
            found += [
                f"file {word}"  # files the command names
                for word in words
                if re.match(r"^(infra|deployments|flows|tasks|examples)/[\w./-]+$", word)
                and not (PROJECT / word).exists()
            ]
    return found


# tests -------------------------------------------------------------------------------------------
def test_the_pipelines_are_shipped() -> None:
    assert {p.name for p in GITHUB} == {"pull-request.yml", "main.yml", "data.yml"}
    assert GITLAB.exists() and BITBUCKET.exists() and JENKINS.exists()


@pytest.mark.parametrize(
    ("schema", "files"),
    [
        ("vendor.github-workflows", GITHUB),
        ("vendor.gitlab-ci", [GITLAB]),
        ("vendor.bitbucket-pipelines", [BITBUCKET]),
    ],
    ids=["github", "gitlab", "bitbucket"],
)
def test_the_workflow_files_match_their_schemas(schema: str, files: list[Path]) -> None:
    out = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    text = (PROJECT / ".github/workflows/pull-request.yml").read_text()
    bad.write_text(text.replace("runs-on:", "run-on:", 1))
    out = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1 and "run-on" in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("name", "commands"),
    [
        *[(p.name, github_commands(p)) for p in GITHUB],
        (".gitlab-ci.yml", gitlab_commands(GITLAB)),
        ("bitbucket-pipelines.yml", bitbucket_commands(BITBUCKET)),
        ("Jenkinsfile", jenkins_commands(JENKINS)),
    ],
)
def test_every_command_a_pipeline_calls_exists_in_the_project(
    name: str, commands: list[str]
) -> None:
    lines = lines_of(commands)
    assert lines, f"{name}: no commands found"
    assert problems(lines) == [], name


def test_every_pipeline_runs_the_checks_and_the_deploy() -> None:
    for lines in (
        lines_of([c for p in GITHUB for c in github_commands(p)]),
        lines_of(gitlab_commands(GITLAB)),
        lines_of(bitbucket_commands(BITBUCKET)),
        lines_of(jenkins_commands(JENKINS)),
    ):
        text = "\n".join(lines)
        for expected in ("make lint", "make test-unit", "mlops data check", "mlops deploy --env",
                         "prefect deployment run training/adult"):  # fmt: skip
            assert expected in text


def test_the_command_check_names_what_does_not_exist() -> None:
    assert problems(
        [
            "make lnt",
            ".venv/bin/mlops data chek",
            ".venv/bin/mlops deploy --env qa --pool x",
            "prefect deployment run training/nope",
            "prefect deployment run training/adult --param trigger=x --param epochs=3",
            "docker build -f infra/docker/missing.Dockerfile .",
        ]
    ) == [
        "make target 'lnt'",
        "mlops command 'data'",
        "mlops deploy option '--pool'",
        "environment 'qa'",
        "deployment 'training/nope'",
        "parameter 'epochs=3' of training/adult",
        "file infra/docker/missing.Dockerfile",
    ]


def test_secrets_appear_only_as_references() -> None:
    secret = re.compile(r"(API_KEY|SECRET_ACCESS_KEY|ACCESS_KEY_ID)\s*[:=]\s*(.+)")
    for path in [*GITHUB, GITLAB, BITBUCKET, JENKINS]:
        for match in secret.finditer(path.read_text()):
            value = match[2].strip()
            assert value.startswith(("${{ secrets.", "credentials(")), f"{path.name}: {match[0]}"
    choices = yaml.safe_load((PROJECT / ".github/workflows/main.yml").read_text())[True]
    options = choices["workflow_dispatch"]["inputs"]["environment"]["options"]
    assert set(options) <= set(available(PROJECT))
