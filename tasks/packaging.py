"""Packaging steps: the model-server image, built, smoke-tested, pushed and recorded."""

from __future__ import annotations

from mlops.release import packaging
from tasks import step

assemble_build_context = step(
    packaging.assemble_build_context, name="assemble-build-context", retries=1
)
build_image = step(packaging.build_image, name="build-image")
smoke_test_image = step(packaging.smoke_test_image, name="smoke-test-image")
push_image = step(packaging.push_image, name="push-image", retries=2, retry_delay_seconds=5)
record_image = step(packaging.record_image, name="record-image", retries=2)
