"""Rendered overlays, built once per test session by the real kustomize."""

from __future__ import annotations

import pytest

from tests.test_openshift.kustomize import OVERLAYS
from tests.test_openshift.manifests import Manifests, rendered_overlay


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def rendered(overlay: str) -> Manifests:
    return rendered_overlay(overlay)
