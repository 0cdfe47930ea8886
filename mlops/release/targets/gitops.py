"""The GitOps target: instead of applying, each release step is a commit of the rendered manifest
to a git repository and branch that Argo CD or Flux syncs into the cluster.

One commit per step (deploy, each traffic split, promotion); a rollback is one revert commit of
the release's own commits, so the branch history reads as the release happened. The manifest is
``<gitops_path>/<model>.yaml`` in KServe or Knative (Cloud Run) form. Git is driven through its
command line: the repository protocols, credentials and hooks a user's git is set up with are
then the ones used, which no Python git library reproduces whole.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mlops.core.settings import Settings
from mlops.release.router import Traffic
from mlops.release.targets.base import Deployed, TargetError, missing_settings
from mlops.release.targets.declarative import DeclarativeTarget


class GitOpsTarget(DeclarativeTarget):
    name = "gitops"

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__(settings, model)
        if not settings.gitops_repo:
            raise missing_settings("gitops", ["MLOPS_GITOPS_REPO"])
        self.repo = settings.gitops_repo
        self.branch = settings.gitops_branch
        self.fmt = settings.gitops_format
        self.file = Path(settings.gitops_path) / f"{model}.yaml"
        self.clone = self.dir / "gitops"
        self._base: str | None = None  # the branch head before this release's first commit

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = os.environ | {
            "GIT_AUTHOR_NAME": os.environ.get("GIT_AUTHOR_NAME", "mlops release"),
            "GIT_AUTHOR_EMAIL": os.environ.get("GIT_AUTHOR_EMAIL", "mlops@localhost"),
            "GIT_COMMITTER_NAME": os.environ.get("GIT_COMMITTER_NAME", "mlops release"),
            "GIT_COMMITTER_EMAIL": os.environ.get("GIT_COMMITTER_EMAIL", "mlops@localhost"),
            "GIT_TERMINAL_PROMPT": "0",
        }
        done = subprocess.run(
            ["git", *args],
            cwd=cwd or self.clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise TargetError(
                f"git {args[0]} on {self.repo} ({self.branch}) failed: "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
        return done.stdout.strip()

    def _sync(self) -> None:
        """The local clone at the remote branch's head (an empty branch is started)."""
        # a clone of another repository (MLOPS_GITOPS_REPO changed) would lend that one's
        # manifest to this release as its state: the clone is of the repository configured now
        if (self.clone / ".git").exists() and self._git("remote", "get-url", "origin") != self.repo:
            shutil.rmtree(self.clone)
        if not (self.clone / ".git").exists():
            self.clone.parent.mkdir(parents=True, exist_ok=True)
            self._git("clone", "--quiet", self.repo, str(self.clone), cwd=self.clone.parent)
        self._git("fetch", "--quiet", "origin")
        heads = self._git("ls-remote", "--heads", "origin", self.branch)
        if heads:
            self._git("checkout", "--quiet", "-B", self.branch, f"origin/{self.branch}")
            self._git("reset", "--quiet", "--hard", f"origin/{self.branch}")
        else:
            self._git("checkout", "--quiet", "--orphan", self.branch)
            self._git("rm", "-r", "--quiet", "--cached", "--ignore-unmatch", ".")

    def _head(self) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", "HEAD")
        except TargetError:
            return None

    def _read(self) -> dict[str, Any] | None:
        self._sync()
        path = self.clone / self.file
        if not path.exists():
            return None
        manifest: dict[str, Any] = yaml.safe_load(path.read_text())
        return manifest

    def _push(self, message: str) -> None:
        try:
            self._git("push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}")
        except TargetError as exc:
            # someone pushed meanwhile: drop ours, never force; the step fails with the reason
            self._git("reset", "--quiet", "--hard", f"origin/{self.branch}")
            raise TargetError(f"could not push '{message}': {exc}") from None

    def _write(self, manifest: dict[str, Any], message: str) -> None:
        path = self.clone / self.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        self._git("add", str(self.file))
        if not self._git("status", "--porcelain", "--", str(self.file)):
            return  # the branch says this already
        self._git("commit", "--quiet", "-m", message)
        self._push(message)

    def deploy(self, version: int, image: str | None) -> Deployed:
        self._sync()
        self._base = self._head()
        return super().deploy(version, image)

    def set_traffic(self, traffic: Traffic) -> None:
        spec = self.spec()
        if (
            self._base is not None
            and spec.stable is not None
            and traffic == Traffic.only(spec.stable)
            and spec.candidate is not None
        ):
            self._revert_release(f"roll back to {spec.stable} (v{spec.slots[spec.stable].version})")
            return
        super().set_traffic(traffic)

    def _revert_release(self, why: str) -> None:
        """One commit reverting every commit this release made, back to the branch as it was."""
        self._git("revert", "--no-commit", f"{self._base}..HEAD")
        self._git("commit", "--quiet", "-m", f"{self.model}: {why} (revert of this release)")
        self._push(why)
        self._base = None

    def wait_ready(self, deployed: Deployed, timeout: float) -> None:
        """Committed and pushed is as far as this target sees: the cluster's sync tool (Argo CD,
        Flux) rolls it out; check the branch holds the step."""
        self._sync()
        spec = self.spec()
        if (
            spec.slots.get(deployed.slot) is None
            or spec.slots[deployed.slot].version != deployed.version
        ):
            raise TargetError(f"{self.repo} ({self.branch}) does not hold v{deployed.version}")
