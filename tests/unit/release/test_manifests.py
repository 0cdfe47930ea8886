"""Rendered KServe and Knative (Cloud Run) manifests for each release step, against the shipped
CRD schemas."""

from __future__ import annotations

import pytest

from mlops.release.manifests import (
    FORMATS,
    ManifestError,
    ReleaseSpec,
    SlotSpec,
    render,
    render_checked,
    validate_manifest,
)
from mlops.release.router import Traffic

pytestmark = pytest.mark.unit

V1 = SlotSpec(1, "registry.example/adult-income:v1-abc1234@sha256:" + "1" * 64)
V2 = SlotSpec(2, "registry.example/adult-income:v2-def5678@sha256:" + "2" * 64)


def canary(weight: int) -> ReleaseSpec:
    return ReleaseSpec(
        {"blue": V1, "green": V2}, "blue", "green", Traffic({"blue": 100 - weight, "green": weight})
    )


def release_steps() -> list[tuple[str, ReleaseSpec]]:
    """Every state a canary of v2 beside v1 passes through, promotion and rollback included."""
    return [
        ("first version", ReleaseSpec({"blue": V1}, None, "blue", Traffic.only("blue"))),
        ("stable", ReleaseSpec({"blue": V1}, "blue", None, Traffic.only("blue"))),
        *[(f"canary {w}%", canary(w)) for w in (0, 5, 25, 50)],
        ("all on v2", canary(100)),
        ("promoted", ReleaseSpec({"blue": V1, "green": V2}, "green", None, Traffic.only("green"))),
        ("rolled back", ReleaseSpec({"blue": V1, "green": V2}, "blue", None, Traffic.only("blue"))),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_release_step_renders_a_manifest_its_crd_schema_accepts(fmt: str) -> None:
    for step, spec in release_steps():
        manifest = render_checked(fmt, "adult-income", "mlops", spec)
        assert ReleaseSpec.of(manifest) == spec, step  # the manifest records where it stands


def test_kserve_canary_is_canary_traffic_percent_on_the_candidate() -> None:
    manifest = render("kserve", "adult-income", "mlops", canary(25))
    predictor = manifest["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 25
    assert predictor["containers"][0]["image"] == V2.image
    assert manifest["metadata"]["labels"]["mlops.dev/version"] == "2"


def test_kserve_rollback_restores_the_previous_spec() -> None:
    before = render("kserve", "adult-income", "mlops", release_steps()[1][1])
    rolled_back = render("kserve", "adult-income", "mlops", release_steps()[-1][1])
    assert "canaryTrafficPercent" not in rolled_back["spec"]["predictor"]
    assert rolled_back["spec"] == before["spec"]


def test_knative_splits_traffic_between_named_revisions_with_tags() -> None:
    manifest = render("knative", "adult-income", "mlops", canary(5))
    assert manifest["spec"]["template"]["metadata"]["name"] == "adult-income-v2"
    assert manifest["spec"]["traffic"] == [
        {"revisionName": "adult-income-v1", "percent": 95, "tag": "stable"},
        {"revisionName": "adult-income-v2", "percent": 5, "tag": "candidate"},
    ]
    staged = render("knative", "adult-income", "mlops", canary(0))["spec"]["traffic"]
    assert staged[1] == {"revisionName": "adult-income-v2", "percent": 0, "tag": "candidate"}


def test_a_wrongly_typed_or_misspelt_field_is_named() -> None:
    manifest = render("kserve", "adult-income", "mlops", canary(5))
    manifest["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    manifest["spec"]["predictor"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(ManifestError) as err:
        validate_manifest(manifest)
    assert "spec.predictor.canaryTrafficPercent: 'ten' is not of type 'integer'" in str(err.value)
    assert "spec.predictor.containers[0].readinessprobe: unknown field" in str(err.value)

    knative = render("knative", "adult-income", "mlops", canary(5))
    knative["spec"]["traffic"][0]["percnt"] = 95
    with pytest.raises(ManifestError, match=r"spec\.traffic\[0\]\.percnt: unknown field"):
        validate_manifest(knative)


@pytest.mark.parametrize("fmt", FORMATS)
def test_shadow_traffic_cannot_be_rendered_and_says_why(fmt: str) -> None:
    spec = ReleaseSpec({"blue": V1, "green": V2}, "blue", "green", Traffic({"blue": 100}, "green"))
    with pytest.raises(ManifestError, match="cannot mirror traffic"):
        render(fmt, "adult-income", "mlops", spec)


def test_a_split_with_no_candidate_or_an_empty_slot_is_refused() -> None:
    split = ReleaseSpec({"blue": V1, "green": V2}, "blue", None, Traffic({"blue": 50, "green": 50}))
    with pytest.raises(ManifestError, match="no candidate"):
        render("kserve", "m", "ns", split)
    empty = ReleaseSpec({"blue": V1}, "blue", "green", Traffic({"blue": 90, "green": 10}))
    with pytest.raises(ManifestError, match=r"slot\(s\) \['green'\] run no version"):
        render("knative", "m", "ns", empty)
