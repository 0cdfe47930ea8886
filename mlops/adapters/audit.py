"""The audit trail: an append-only record of every gate decision, promotion, rejection and rollback.

Entries live next to the registry, in the MLflow tracking server's artifact store: one run per
model in the experiment ``mlops-audit``, one JSON file per entry under ``entries/``. The store lets
anyone who reaches MLflow rewrite or delete a file, so the trail is made tamper-evident rather
than trusted: each entry carries its position (``sequence``) and the digest of the entry before it
(``previous``; the first one holds ``GENESIS``), a hash chain per model. The chain's head (how many
entries, the last one's digest) is kept apart from the entries, as a tag on the audit run and on
the registered model, so that deleting the newest entries shows too. ``verify`` walks it.

Appends to one model's trail are serialized by a Prefect global concurrency limit of one
(``audit_lock_name``): a writer reads the head, writes the next entry and moves the head while it
holds the slot, so two writers cannot both extend the same entry. A fork left by a writer that
bypassed the limit is reported by ``verify``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field

from mlops.adapters.locks import held, lock_name
from mlops.core.lineage import (
    CHAMPION_ALIAS,
    CODE_TAG,
    DATA_MD5_TAG,
    DATA_PATH_TAG,
    DATA_REV_TAG,
    FLOW_RUN_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    POLICY_DIGEST_TAG,
    POLICY_VERSION_TAG,
    PRODUCTION_MD5_TAG,
    PRODUCTION_ROWS_TAG,
    TRIGGER_TAG,
)

AUDIT_EXPERIMENT = "mlops-audit"

ENTRIES = "entries"

MODEL_TAG = "mlops.audit.model"

HEAD_TAG = "mlops.audit.head"  # "<size>:<digest of the last entry>", on the run and the model

GENESIS = "0" * 64  # the `previous` of a chain's first entry

_CHAINED = re.compile(
    r"^(\d{8})-"
)  # entries/<sequence>-<time>-<id>.json; older ones start with a time

Action = Literal[
    "gate-decision",
    "approval",
    "promoted",
    "rejected",
    "rolled-back",
    "policy-applied",
    "release-started",
    "released",
    "release-rolled-back",
    "release-baked",  # the bake after a release's promotion ended and the new champion stays
    "release-failed",
    "retraining-triggered",
    "retraining-skipped",
    "retraining-failed",
    "production-data-collected",
    "adopted",  # a version registered outside mlops' flows, recorded (mlops.adapters.adoption)
]


class AuditEntry(BaseModel):
    """One recorded act: who or what did it, to which versions, on what evidence, under which policy."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model: str
    version: int | None = None
    action: Action
    actor: str
    trigger: str
    reason: str
    previous_champion: int | None = None
    policy_version: int | None = None
    policy_digest: str | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    links: dict[str, str] = Field(default_factory=dict)
    sequence: int | None = None  # position in the model's chain; None: written before the chain
    previous: str | None = None  # digest of the entry at sequence - 1 (GENESIS for the first)


def digest(document: dict[str, Any]) -> str:
    """SHA-256 of an entry's canonical JSON (sorted keys, no spaces): what the next entry records."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class Head(NamedTuple):
    size: int  # entries in the chain
    digest: str

    def __str__(self) -> str:
        return f"{self.size}:{self.digest}"

    @classmethod
    def parse(cls, value: str | None) -> Head | None:
        if not value or ":" not in value:
            return None
        count, _, last = value.partition(":")
        return cls(int(count), last) if count.isdigit() else None


def audit_lock_name(model: str) -> str:
    """The Prefect global concurrency limit that serializes appends to ``model``'s trail."""
    return lock_name("audit", model)


def prefect_lock(model: str) -> AbstractContextManager[None]:
    """Hold the one slot of the model's audit limit (created on first use) while appending."""
    return held(audit_lock_name(model))


@dataclass(frozen=True)
class StoredEntry:
    """One entry file as the store holds it now."""

    path: str
    document: dict[str, Any] | None  # None: not a JSON object any more
    problem: str = ""

    @property
    def entry(self) -> AuditEntry | None:
        try:
            return AuditEntry.model_validate(self.document) if self.document else None
        except ValueError:
            return None

    @property
    def sequence(self) -> int | None:
        seq = (self.document or {}).get("sequence")
        return seq if isinstance(seq, int) else None

    def name(self) -> str:
        doc = self.document or {}
        return f"entry {doc.get('id', '?')} ({doc.get('time', '?')}, {doc.get('action', '?')}; {self.path})"


@dataclass
class Verification:
    """What ``AuditTrail.verify`` found: ``problems`` break the chain, ``notes`` do not."""

    model: str
    chained: int = 0
    before_chain: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [
            f"{self.model}: {self.chained} chained entries"
            + (
                f", {self.before_chain} before the chain (not verifiable)"
                if self.before_chain
                else ""
            )
            + (": chain intact" if self.ok else f": BROKEN ({len(self.problems)} problems)")
        ]
        lines += [
            f"  {'first broken link' if i == 0 else 'also'}: {p}"
            for i, p in enumerate(self.problems)
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class AuditTrail:
    """Append and read audit entries for models on one MLflow tracking server."""

    def __init__(
        self,
        tracking_uri: str,
        lock: Callable[[str], AbstractContextManager[None]] = prefect_lock,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.lock = lock

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(AUDIT_EXPERIMENT))
        except mlflow.exceptions.MlflowException:  # created meanwhile by another writer
            exp = self.client.get_experiment_by_name(AUDIT_EXPERIMENT)
            assert exp is not None
            return str(exp.experiment_id)

    def _runs(self, model: str) -> list[str]:
        runs = self.client.search_runs(
            [self._experiment_id()], filter_string=f"tags.`{MODEL_TAG}` = '{model}'"
        )
        return sorted(r.info.run_id for r in runs)

    def _run_for(self, model: str) -> str:
        runs = self._runs(model)
        if runs:
            return runs[0]
        run = self.client.create_run(
            self._experiment_id(), run_name=f"audit-{model}", tags={MODEL_TAG: model}
        )
        return str(run.info.run_id)

    # the chain --------------------------------------------------------------------------------
    def _stored(self, run_id: str, paths: list[str] | None = None) -> list[StoredEntry]:
        """Entry files of one run (or only ``paths`` of it), as they are in the store."""
        if paths is None:
            if not self.client.list_artifacts(run_id, ENTRIES):
                return []
            folder = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ENTRIES, tracking_uri=self.tracking_uri
            )
            files = {f"{ENTRIES}/{f.name}": f for f in sorted(Path(folder).glob("*.json"))}
        else:
            files = {
                p: Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=p, tracking_uri=self.tracking_uri
                    )
                )
                for p in paths
            }
        out = []
        for path, local in files.items():
            try:
                doc = json.loads(local.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                out.append(StoredEntry(path, None, f"not valid JSON any more ({exc})"))
                continue
            out.append(StoredEntry(path, doc if isinstance(doc, dict) else None))
        return out

    def _heads(self, model: str, run_id: str | None) -> dict[str, Head | None]:
        """The chain head as each place holds it (the model's place only once it is registered)."""
        heads: dict[str, Head | None] = {}
        if run_id is not None:
            heads["audit run"] = Head.parse(self.client.get_run(run_id).data.tags.get(HEAD_TAG))
        with contextlib.suppress(MlflowException):
            tags = self.client.get_registered_model(model).tags
            heads["registered model"] = Head.parse(tags.get(HEAD_TAG))
        return heads

    def _next_link(self, model: str, run_id: str) -> Head:
        """Where the next entry goes: after the recorded head, or after entries an interrupted
        append wrote beyond it (they chain onto it); without any head, after the last chained entry."""
        heads = [h for h in self._heads(model, run_id).values() if h is not None]
        head = max(heads, default=None)
        names = sorted(a.path for a in self.client.list_artifacts(run_id, ENTRIES))
        chained = [p for p in names if _CHAINED.match(Path(p).name)]
        if head is None:
            if not chained:
                return Head(0, GENESIS)
            last = self._stored(run_id, [chained[-1]])[0]
            return Head((last.sequence or 0) + 1, digest(last.document or {}))
        for path in chained:  # beyond the head: written by an append that died before the tag
            if int(_CHAINED.match(Path(path).name)[1]) < head.size:  # type: ignore[index]
                continue
            stored = self._stored(run_id, [path])[0]
            doc = stored.document or {}
            if doc.get("sequence") == head.size and doc.get("previous") == head.digest:
                head = Head(head.size + 1, digest(doc))
        return head

    def _move_head(self, model: str, run_id: str, head: Head) -> None:
        self.client.set_tag(run_id, HEAD_TAG, str(head))
        with contextlib.suppress(MlflowException):  # the model may not be registered yet
            self.client.set_registered_model_tag(model, HEAD_TAG, str(head))

    def append(self, entry: AuditEntry) -> str:
        """Write one entry as the next link of its model's chain; returns its artifact path."""
        with self.lock(entry.model):
            run_id = self._run_for(entry.model)
            head = self._next_link(entry.model, run_id)
            linked = entry.model_copy(update={"sequence": head.size, "previous": head.digest})
            document = linked.model_dump(mode="json")
            stamp = linked.time.strftime("%Y%m%dT%H%M%S%fZ")
            path = f"{ENTRIES}/{head.size:08d}-{stamp}-{linked.id}.json"
            self.client.log_dict(run_id, document, path)
            self._move_head(entry.model, run_id, Head(head.size + 1, digest(document)))
        return path

    def entries(self, model: str, version: int | None = None) -> list[AuditEntry]:
        """Every entry for ``model`` (or one version of it, with the model-wide ones), oldest first."""
        out: list[AuditEntry] = []
        for run_id in self._runs(model):
            if not self.client.list_artifacts(run_id, ENTRIES):
                continue
            folder = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ENTRIES, tracking_uri=self.tracking_uri
            )
            for path in sorted(Path(folder).glob("*.json")):
                out.append(AuditEntry.model_validate_json(path.read_text()))
        # entries before the chain by time, then the chain in its own order
        out.sort(key=lambda e: (e.sequence is not None, e.sequence or 0, e.time))
        if version is not None:
            out = [e for e in out if e.version in (version, None) or e.previous_champion == version]
        return out

    def verify(self, model: str) -> Verification:
        """Walk ``model``'s chain from genesis to its head; name every broken link, first one first."""
        report = Verification(model)
        runs = self._runs(model)
        stored = [s for run_id in runs for s in self._stored(run_id)]
        for s in stored:
            if s.document is None or (s.entry is None and s.sequence is None):
                report.problems.append(
                    f"{s.path}: {s.problem or 'not an audit entry any more'} (edited)"
                )
        legacy = [s for s in stored if s.document and s.sequence is None and s.entry]
        report.before_chain = len(legacy)
        chain = sorted(
            (s for s in stored if s.sequence is not None), key=lambda s: (s.sequence, s.path)
        )
        report.chained = len(chain)
        last = self._walk(chain, report)
        self._check_heads(self._heads(model, runs[0] if runs else None), chain, last, report)
        return report

    @staticmethod
    def _walk(chain: list[StoredEntry], report: Verification) -> Head:
        """Check each link; returns the head the entries themselves reach."""
        expected = Head(0, GENESIS)
        before: StoredEntry | None = None
        for s in chain:
            doc = s.document or {}
            seq = s.sequence or 0
            if seq < expected.size:
                report.problems.append(
                    f"{s.name()} forks the chain: a second entry at #{seq} (a writer that did not "
                    "hold the audit lock, or a copy)"
                )
                continue
            if seq > expected.size:
                report.problems.append(
                    f"entries #{expected.size}..#{seq - 1} are missing (deleted) before {s.name()}"
                )
            elif doc.get("previous") != expected.digest:
                report.problems.append(
                    f"{before.name()} was edited: its digest no longer matches what #{seq} records"
                    if before is not None
                    else f"{s.name()} does not start from genesis: #0 edited or replaced"
                )
            expected = Head(seq + 1, digest(doc))
            before = s
        return expected

    @staticmethod
    def _check_heads(
        heads: dict[str, Head | None],
        chain: list[StoredEntry],
        reached: Head,
        report: Verification,
    ) -> None:
        """Compare the chain's end with each recorded head: a deleted or edited newest entry shows here."""
        last = chain[-1] if chain else None
        for place, head in heads.items():
            if head is None:
                # the model's copy is set from the first append after its registration
                if chain and place == "audit run":
                    report.problems.append(
                        f"no chain head on the {place}: its tag was removed, and the newest "
                        "entries could have been deleted with it"
                    )
                elif chain:
                    report.notes.append(f"no chain head on the {place} yet")
                continue
            if head.size > reached.size:
                report.problems.append(
                    f"the newest {head.size - reached.size} entries were deleted: the head on "
                    f"the {place} records {head.size} entries ending in {head.digest[:12]}, the "
                    f"trail ends at #{reached.size - 1}"
                )
            elif head.size == reached.size and head.digest != reached.digest and last:
                report.problems.append(
                    f"{last.name()} was edited: its digest differs from the head on the {place}"
                )
            elif head.size < reached.size:
                report.notes.append(
                    f"{reached.size - head.size} entries after the head on the {place} (an "
                    "append that stopped before moving the head; the next append adopts them)"
                )


def describe_version(tracking_uri: str, model: str, version: int | None = None) -> str:
    """The lineage chain of one version (default: the champion) as text for a person."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    registered = client.get_registered_model(model)
    if version is None:
        if CHAMPION_ALIAS not in registered.aliases:
            raise LookupError(f"{model} has no champion; name a version with --version")
        version = int(registered.aliases[CHAMPION_ALIAS])
    mv = client.get_model_version(model, str(version))
    tags = mv.tags
    run = client.get_run(mv.run_id) if mv.run_id else None
    aliases = sorted(a for a, v in registered.aliases.items() if int(v) == version)
    gates: list[dict[str, Any]] = []
    if mv.run_id and any(a.path == "gates.json" for a in client.list_artifacts(mv.run_id)):
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="gates.json", tracking_uri=tracking_uri
        )
        gates = json.loads(Path(path).read_text())["gates"]
    entries = AuditTrail(tracking_uri).entries(model, version)
    lines = [
        f"{model} v{version}",
        f"  aliases          {', '.join(aliases) or '(none)'}"
        + ("  <- serving as champion" if CHAMPION_ALIAS in aliases else ""),
        f"  registered       {datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC",
        "data",
        f"  path             {tags.get(DATA_PATH_TAG, '?')}",
        f"  dvc md5          {tags.get(DATA_MD5_TAG, '?')}",
        f"  revision         {tags.get(DATA_REV_TAG, '?')}",
        *(
            [
                f"  production rows  {tags[PRODUCTION_ROWS_TAG]} labelled "
                f"(parquet md5 {tags.get(PRODUCTION_MD5_TAG, '?')})"
            ]
            if PRODUCTION_ROWS_TAG in tags
            else []
        ),
        "code",
        f"  git commit       {tags.get(GIT_COMMIT_TAG, '?')}"
        + (" (uncommitted changes)" if tags.get(GIT_DIRTY_TAG) == "true" else ""),
        f"  pipeline sha256  {tags.get(CODE_TAG, '?')}",
        "training",
        f"  trigger          {tags.get(TRIGGER_TAG, '?')}",
        f"  prefect run      {tags.get(FLOW_RUN_TAG, '?')}",
        f"  mlflow run       {mv.run_id}",
    ]
    if run is not None:
        lines.append("parameters")
        lines += [f"  {k:<32} {v}" for k, v in sorted(run.data.params.items())]
        lines.append("holdout metrics")
        lines += [
            f"  {k.removeprefix('holdout_'):<16} {v:.4f}"
            for k, v in sorted(run.data.metrics.items())
            if k.startswith("holdout_")
        ]
    lines.append(
        f"policy             v{tags.get(POLICY_VERSION_TAG, '?')} (digest {tags.get(POLICY_DIGEST_TAG, '?')})"
    )
    lines.append("gates")
    lines += [
        f"  {g['gate']:<24} {'pass' if g['passed'] else 'FAIL'}  {g['reason']}" for g in gates
    ] or ["  (not judged yet: run the promotion flow)"]
    lines.append("history")
    lines += [
        f"  {e.time:%Y-%m-%d %H:%M:%S}  {e.action:<14} by {e.actor} ({e.trigger}): {e.reason}"
        + (f" [approver {e.evidence['approver']}]" if "approver" in e.evidence else "")
        for e in entries
    ] or ["  (no audit entries)"]
    return "\n".join(lines)
