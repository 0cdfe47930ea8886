"""Hooks between release steps: what a hook is told, and the webhook's call and answer.

A hook (``mlops.core.policy.HookPolicy``) runs at a named phase of a release (``HOOK_PHASES``).
A ``webhook`` is POSTed the release's state (``HookPayload``) as JSON: a 2xx answer lets the
release go on; any other status, a timeout or no connection refuses the step, with a reason that
names the hook, the status and the start of the body. A ``manual`` hook is a person's answer in
the Prefect UI (``tasks.release``). At ``after-rollback`` a hook is only told: it cannot refuse.

With a secret (``MLOPS_HOOK_SECRET``), each webhook request carries ``X-Mlops-Signature:
sha256=<hex>``, the HMAC-SHA256 of the exact body, so the receiver can tell the release's calls
from anyone else's (as GitHub signs its webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from mlops.core.policy import HookPolicy
from mlops.release.canary import ReleaseFailed

#: The header of a signed webhook request: ``sha256=`` and the hex HMAC of the body.
SIGNATURE_HEADER = "X-Mlops-Signature"
#: The phase at which hooks are told, and cannot refuse.
AFTER_ROLLBACK = "after-rollback"
#: How much of a refusing answer's body the reason quotes.
BODY_EXCERPT = 200


class HookRefused(ReleaseFailed):
    """A hook refused a release step (the release rolls back); ``evidence`` is for the audit."""

    def __init__(self, phase: str, step: str, answer: HookAnswer) -> None:
        super().__init__(f"{phase} ({step}): {answer.describe()}")
        self.answer = answer
        self.evidence: dict[str, object] = {"phase": phase, "step": step, **asdict(answer)}


@dataclass(frozen=True)
class HookPayload:
    """What a hook is told: the release, where it stands, and the last analysis decision.

    ``step`` names where the release stands (``at 25%``, ``promotion``); ``traffic`` is the
    split about to be set (percent per slot; after a rollback, the one now set)."""

    model: str
    version: int
    phase: str
    step: str
    strategy: str
    target: str
    traffic: dict[str, int]
    decision: dict[str, object] | None = None
    flow_run_url: str | None = None
    reason: str | None = None  # after-rollback: why it rolled back

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def body(self) -> bytes:
        """The JSON the webhook is sent (and the signature covers), keys sorted."""
        return json.dumps(self.as_dict(), sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class HookAnswer:
    """A hook's answer: go on or not, who or what answered, and why."""

    hook: str
    proceed: bool
    by: str
    reason: str

    def describe(self) -> str:
        verdict = "allowed" if self.proceed else "refused"
        return f"hook {self.hook!r} {verdict} by {self.by}: {self.reason}"


def sign(body: bytes, secret: str) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= BODY_EXCERPT else text[:BODY_EXCERPT] + "..."


def call_webhook(
    hook: HookPolicy,
    payload: HookPayload,
    secret: str | None = None,
    client: httpx.Client | None = None,
) -> HookAnswer:
    """POST ``payload`` to the hook's URL within its ``timeout_seconds``; a 2xx answer proceeds,
    anything else (another status, a timeout, no connection) refuses, naming why."""
    if hook.kind != "webhook" or not hook.url:
        raise ValueError(f"hook {hook.name!r} is {hook.kind}, not a webhook with a url")
    body = payload.body()
    headers = {"Content-Type": "application/json", "User-Agent": "mlops-release-hook"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    by = f"webhook {hook.url}"
    owned = client is None
    http = client or httpx.Client()
    try:
        response = http.post(hook.url, content=body, headers=headers, timeout=hook.timeout_seconds)
    except httpx.TimeoutException:
        return HookAnswer(
            hook.name, False, by, f"no answer within {hook.timeout_seconds:g} s (timed out)"
        )
    except httpx.HTTPError as exc:
        return HookAnswer(
            hook.name, False, by, f"could not be reached: {type(exc).__name__}: {exc}"
        )
    finally:
        if owned:
            http.close()
    excerpt = _excerpt(response.text)
    said = f": {excerpt}" if excerpt else ""
    if response.is_success:
        return HookAnswer(hook.name, True, by, f"answered {response.status_code}{said}")
    return HookAnswer(hook.name, False, by, f"answered {response.status_code}{said}")


def hooks_at(hooks: tuple[HookPolicy, ...], phase: str) -> list[HookPolicy]:
    """The hooks of ``phase``, in the policy's order."""
    return [h for h in hooks if h.phase == phase]


def refusal(answers: list[HookAnswer]) -> HookAnswer | None:
    """The first answer that refuses, if any (the hooks of a phase run in order and the first
    refusal stops the rest)."""
    return next((a for a in answers if not a.proceed), None)
