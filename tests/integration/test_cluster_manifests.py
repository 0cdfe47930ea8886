"""The cluster targets' manifests and writes: kubectl accepts every rendered release step, the
KServe target drives an InferenceService through the Kubernetes API (an emulated API server, as no
cluster runs here), and the GitOps target commits each step to a real bare repository."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlops.core.settings import Settings
from mlops.release.manifests import FORMATS, render_checked
from mlops.release.router import Traffic
from mlops.release.targets.base import TargetError
from mlops.release.targets.gitops import GitOpsTarget
from mlops.release.targets.kserve import KServeTarget
from tests.helpers import git
from tests.k8s_api import EmulatedKubernetes
from tests.unit.release.test_manifests import release_steps

pytestmark = pytest.mark.integration

IMAGE = "registry.example/adult-income:v{v}-abc1234@sha256:{d}"


def image(version: int) -> str:
    return IMAGE.format(v=version, d=str(version) * 64)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedKubernetes]:
    with EmulatedKubernetes(ready_after=0.2) as api:
        api.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        yield api


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed (.ci/run installs it)"
)
@pytest.mark.parametrize("fmt", FORMATS)
def test_kubectl_client_dry_run_accepts_every_rendered_step(
    fmt: str, cluster: EmulatedKubernetes, tmp_path: Path
) -> None:
    for step, spec in release_steps():
        path = tmp_path / f"{step}.yaml"
        path.write_text(yaml.safe_dump(render_checked(fmt, "adult-income", "mlops", spec)))
        done = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(cluster.config_path),
                "apply",
                "--dry-run=client",
                "--validate=false",
                "-f",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (step, done.stderr)
        assert "(dry run)" in done.stdout, step
    assert not cluster.objects  # a dry run writes nothing


def test_kserve_target_canary_then_rollback_restores_the_previous_spec(
    cluster: EmulatedKubernetes, tmp_path: Path
) -> None:
    settings = Settings(state_dir=tmp_path, k8s_kubeconfig=cluster.config_path)
    target = KServeTarget(settings, "canary-rollback")
    first = target.deploy(1, image(1))
    target.wait_ready(first, 10)
    target.set_traffic(Traffic.only(first.slot))
    target.mark_stable(first.slot)
    stable_spec = target._read()["spec"]

    candidate = target.deploy(2, image(2))
    target.wait_ready(candidate, 10)
    for weight in (5, 25):
        target.set_traffic(Traffic({first.slot: 100 - weight, candidate.slot: weight}))
    assert target._read()["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert target.state().traffic == Traffic({first.slot: 75, candidate.slot: 25})

    target.set_traffic(Traffic.only(first.slot))  # the rollback
    assert target._read()["spec"] == stable_spec
    writes = [
        (
            w["spec"]["predictor"].get("canaryTrafficPercent"),
            w["spec"]["predictor"]["containers"][0]["image"],
        )
        for w in cluster.writes
        if w["metadata"]["name"] == "canary-rollback"
    ]
    assert writes[-4:] == [(0, image(2)), (5, image(2)), (25, image(2)), (None, image(1))]


def test_kserve_candidate_that_fails_is_reported_with_kserves_reason(
    cluster: EmulatedKubernetes, tmp_path: Path
) -> None:
    settings = Settings(state_dir=tmp_path, k8s_kubeconfig=cluster.config_path)
    target = KServeTarget(settings, "failing")
    cluster.failing.add(image(9))
    deployed = target.deploy(9, image(9))
    with pytest.raises(
        TargetError, match="v9 did not become ready: PredictorReady: RevisionFailed"
    ):
        target.wait_ready(deployed, 10)


def test_kserve_without_a_cluster_or_with_a_conflicting_writer_is_a_clear_error(
    cluster: EmulatedKubernetes, tmp_path: Path
) -> None:
    with pytest.raises(TargetError, match="needs MLOPS_K8S_KUBECONFIG"):
        KServeTarget(Settings(state_dir=tmp_path), "m")
    settings = Settings(state_dir=tmp_path, k8s_kubeconfig=cluster.config_path)
    ours, theirs = KServeTarget(settings, "contended"), KServeTarget(settings, "contended")
    first = ours.deploy(1, image(1))
    ours.wait_ready(first, 10)
    spec = ours.spec()  # read ...
    theirs.mark_stable(first.slot)  # ... someone else writes ...
    with pytest.raises(TargetError, match="changed while this release was changing it"):
        ours._apply(spec, "stale write")  # ... and ours is refused, not silently applied


def test_gitops_commits_each_step_and_rolls_back_with_one_revert(tmp_path: Path) -> None:
    remote = tmp_path / "deploy.git"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(remote)], check=True)
    settings = Settings(
        state_dir=tmp_path / "state", gitops_repo=str(remote), gitops_format="knative"
    )
    target = GitOpsTarget(settings, "adult-income")
    first = target.deploy(1, image(1))
    target.set_traffic(Traffic.only(first.slot))
    target.mark_stable(first.slot)
    before = git(remote, "show", "main:deploy/adult-income.yaml")
    head = git(remote, "rev-parse", "main")

    candidate = GitOpsTarget(settings, "adult-income")  # a new release, as a new flow run makes it
    staged = candidate.deploy(2, image(2))
    candidate.wait_ready(staged, 5)
    for weight in (5, 25):
        candidate.set_traffic(Traffic({first.slot: 100 - weight, staged.slot: weight}))
    candidate.set_traffic(Traffic.only(first.slot))

    log = git(remote, "log", "--format=%s", f"{head}..main").splitlines()
    assert log == [
        "adult-income: roll back to blue (v1) (revert of this release)",
        "adult-income: traffic blue 75%, green 25%",
        "adult-income: traffic blue 95%, green 5%",
        "adult-income: deploy v2 in green (blue 100%)",
    ]
    assert git(remote, "show", "main:deploy/adult-income.yaml") == before
    assert candidate.state().traffic == Traffic.only(first.slot)


def test_gitops_reads_the_repository_configured_now_not_the_one_it_cloned_before(
    tmp_path: Path,
) -> None:
    """MLOPS_GITOPS_REPO changed (a new repository, empty): the model's clone of the old one must
    not lend it the old manifest as this release's state."""
    old, new = tmp_path / "old.git", tmp_path / "new.git"
    for remote in (old, new):
        subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(remote)], check=True)
    state = tmp_path / "state"
    first = GitOpsTarget(Settings(state_dir=state, gitops_repo=str(old)), "adult-income")
    deployed = first.deploy(1, image(1))
    first.mark_stable(deployed.slot)
    assert first.spec().stable == deployed.slot
    moved = GitOpsTarget(Settings(state_dir=state, gitops_repo=str(new)), "adult-income")
    assert moved.spec().slots == {}, "nothing is released in the new repository yet"
    second = moved.deploy(2, image(2))
    assert git(new, "log", "--format=%s", "main").splitlines() == [
        f"adult-income: deploy v2 in {second.slot} ({second.slot} 100%)"
    ]
    assert git(old, "log", "--format=%s", "main").count("\n") == 1  # the old one untouched


def test_gitops_without_a_repository_or_against_a_missing_one_is_a_clear_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(TargetError, match="needs MLOPS_GITOPS_REPO"):
        GitOpsTarget(Settings(state_dir=tmp_path), "m")
    target = GitOpsTarget(
        Settings(state_dir=tmp_path, gitops_repo=str(tmp_path / "nowhere.git")), "m"
    )
    with pytest.raises(TargetError, match=r"git clone on .*nowhere\.git"):
        target.state()
