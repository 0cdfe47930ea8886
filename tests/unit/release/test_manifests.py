"""Rendered KServe, Knative (Cloud Run) and Seldon Core 2 manifests for each release step, against
the shipped CRD schemas."""

from __future__ import annotations

from typing import Any

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


@pytest.mark.parametrize("fmt", ["kserve", "knative"])
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


# Seldon Core 2: a Model per slot, the Experiment named after the model --------------------------
B1 = SlotSpec(1, "s3://mlops-artifacts/1/run-a/artifacts")
B2 = SlotSpec(2, "s3://mlops-artifacts/1/run-b/artifacts")


def seldon(traffic: Traffic, stable: str | None = "blue", candidate: str | None = "green") -> Any:
    spec = ReleaseSpec({"blue": B1, "green": B2}, stable, candidate, traffic)
    manifest = render_checked("seldon", "adult-income", "mlops", spec)
    assert manifest["kind"] == "List" and ReleaseSpec.of(manifest) == spec
    *models, experiment = manifest["items"]
    return {m["metadata"]["name"]: m for m in models}, experiment


def test_seldon_has_a_model_per_slot_loading_its_folder_with_mlflows_runtime() -> None:
    models, experiment = seldon(Traffic({"blue": 95, "green": 5}))
    assert set(models) == {"adult-income-blue", "adult-income-green"}
    green = models["adult-income-green"]
    assert green["kind"] == "Model" and green["apiVersion"] == "mlops.seldon.io/v1alpha1"
    assert green["spec"]["storageUri"] == B2.image
    assert green["spec"]["requirements"] == ["mlflow"]
    assert green["metadata"]["labels"]["mlops.dev/version"] == "2"
    assert experiment["kind"] == "Experiment" and experiment["metadata"]["name"] == "adult-income"


def test_seldon_canary_is_the_experiments_candidate_weights() -> None:
    _, experiment = seldon(Traffic({"blue": 75, "green": 25}))
    assert experiment["spec"]["candidates"] == [
        {"name": "adult-income-blue", "weight": 75},
        {"name": "adult-income-green", "weight": 25},
    ]
    assert "mirror" not in experiment["spec"]


def test_seldon_shadow_mirrors_every_request_to_a_model_that_is_no_candidate() -> None:
    _, experiment = seldon(Traffic({"blue": 100}, "green"))
    assert experiment["spec"]["candidates"] == [{"name": "adult-income-blue", "weight": 100}]
    assert experiment["spec"]["mirror"] == {"name": "adult-income-green", "percent": 100}


def test_seldon_rollback_leaves_the_stable_model_the_one_candidate() -> None:
    _, staged = seldon(Traffic({"blue": 100, "green": 0}))
    _, rolled_back = seldon(Traffic.only("blue"), candidate=None)
    expected = [{"name": "adult-income-blue", "weight": 100}]
    assert staged["spec"]["candidates"] == rolled_back["spec"]["candidates"] == expected


def test_a_misspelt_or_missing_seldon_field_is_named() -> None:
    manifest = render("seldon", "adult-income", "mlops", canary(5))
    manifest["items"][0]["spec"]["storageUrl"] = manifest["items"][0]["spec"].pop("storageUri")
    manifest["items"][-1]["spec"]["candidates"][0]["weight"] = "most"
    with pytest.raises(ManifestError) as err:
        validate_manifest(manifest)
    assert "'storageUri' is a required property" in str(err.value)
    assert "spec.storageUrl: unknown field" in str(err.value)
    with pytest.raises(ManifestError, match="'most' is not of type 'integer'"):
        validate_manifest(manifest["items"][-1])
