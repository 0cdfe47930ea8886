"""The registry webhook receiver's checks as plain logic: MLflow's own signature is accepted, and
what is missing, forged, outside the tolerance or already accepted is refused with its outcome."""

from __future__ import annotations

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from mlops.adapters.registry import RUN_ID_TAG
from mlops.core.integrity import CHECKSUM_TAG
from mlops.stack.registry_webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Refused,
    Verifier,
    registered_by_mlops,
    signature,
)

pytestmark = pytest.mark.unit

BODY = '{"entity": "model_version", "action": "created", "data": {}}'
NOW = 1_800_000_000


def headers(sig: str | None, delivery: str = "d-1", stamp: int = NOW) -> dict[str, str]:
    found = {DELIVERY_ID_HEADER.lower(): delivery, TIMESTAMP_HEADER.lower(): str(stamp)}
    if sig is not None:
        found[SIGNATURE_HEADER.lower()] = sig
    return found


def outcome(verifier: Verifier, given: dict[str, str], body: str = BODY) -> str:
    with pytest.raises(Refused) as refused:
        verifier.check(given, body.encode())
    return refused.value.outcome


def test_the_signature_is_mlflows_own() -> None:
    assert signature("s3cret", "d-1", str(NOW), BODY) == _generate_hmac_signature(
        "s3cret", "d-1", str(NOW), BODY
    )


def test_a_signed_delivery_passes_once_accepted_and_then_is_a_replay() -> None:
    verifier = Verifier("s3cret", clock=lambda: NOW + 10)
    good = headers(signature("s3cret", "d-1", str(NOW), BODY))
    assert verifier.check(good, BODY.encode()) == "d-1"
    assert verifier.check(good, BODY.encode()) == "d-1"  # not accepted yet: MLflow may resend
    verifier.accepted("d-1")
    assert outcome(verifier, good) == "replayed"


def test_missing_forged_tampered_and_stale_deliveries_are_refused_by_outcome() -> None:
    verifier = Verifier("s3cret", tolerance=300, clock=lambda: NOW)
    assert outcome(verifier, headers(None)) == "unsigned"
    assert outcome(verifier, headers(signature("guess", "d-1", str(NOW), BODY))) == "forged"
    signed = headers(signature("s3cret", "d-1", str(NOW), BODY))
    assert outcome(verifier, signed, BODY.replace("created", "deleted")) == "forged"
    old = NOW - 301
    assert outcome(verifier, headers(signature("s3cret", "d-2", str(old), BODY), "d-2", old)) == (
        "stale"
    )


def test_one_of_several_offered_signatures_may_match() -> None:
    verifier = Verifier("s3cret", clock=lambda: NOW)
    both = f"v1,AAAA {signature('s3cret', 'd-1', str(NOW), BODY)}"
    assert verifier.check(headers(both), BODY.encode()) == "d-1"


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Verifier("")


def test_versions_of_mlops_flows_are_told_by_their_registration_tags() -> None:
    assert registered_by_mlops({RUN_ID_TAG: "r", CHECKSUM_TAG: "c" * 64})
    assert not registered_by_mlops({RUN_ID_TAG: "r"})  # copied by hand, not registered by mlops
    assert not registered_by_mlops({})
