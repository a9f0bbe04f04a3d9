"""Every kustomization builds with the real kustomize, into the objects each overlay promises."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.test_openshift.kustomize import (
    HA_OVERLAYS,
    OPENSHIFT,
    OVERLAYS,
    STRIMZI_OVERLAYS,
    RenderError,
    kustomize_version,
    render,
)
from tests.test_openshift.manifests import Manifests

PART_OF = "app.kubernetes.io/part-of"
APP_KINDS = {
    "StatefulSet",
    "Deployment",
    "Service",
    "Route",
    "ConfigMap",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "ImageStream",
    "BuildConfig",
}
STRIMZI_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
HA_KINDS = {"HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_kustomize_is_recent_enough() -> None:
    # Components, `labels` with includeTemplates and regex patch targets need kustomize 5.
    version = kustomize_version()
    major = re.search(r"v(\d+)\.", version)
    assert major is not None, version
    assert int(major.group(1)) >= 5, version


@pytest.mark.parametrize(
    "directory",
    ["base", "kafka", "components/ha", "components/hpa-sessions", *(f"overlays/{o}" for o in OVERLAYS)],
)
def test_every_kustomization_is_a_plain_kustomize_file(directory: str) -> None:
    kustomization = yaml.safe_load((OPENSHIFT / directory / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert kustomization["kind"] == ("Component" if directory.startswith("components/") else "Kustomization")


@pytest.mark.parametrize("directory", ["base", "kafka"])
def test_bases_render_on_their_own(directory: str) -> None:
    assert render(OPENSHIFT / directory)


def test_overlays_render(rendered: Manifests) -> None:
    names = Counter((o["kind"], o["metadata"]["name"]) for o in rendered.objects)
    assert [key for key, count in names.items() if count > 1] == []
    assert {o["kind"] for o in rendered.objects} >= APP_KINDS


def test_overlay_shapes(overlay: str, rendered: Manifests) -> None:
    present = {o["kind"] for o in rendered.objects}
    assert (present >= STRIMZI_KINDS) == (overlay in STRIMZI_OVERLAYS)
    assert not (STRIMZI_KINDS & present) or overlay in STRIMZI_OVERLAYS
    assert (present >= HA_KINDS) == (overlay in HA_OVERLAYS)
    assert not (HA_KINDS & present) or overlay in HA_OVERLAYS


def test_every_object_is_labelled_as_part_of_the_application(rendered: Manifests) -> None:
    unlabelled = [
        f"{o['kind']}/{o['metadata']['name']}"
        for o in rendered.objects
        if o["metadata"].get("labels", {}).get(PART_OF) != "speech-decoder"
    ]
    assert unlabelled == []
    for workload in rendered.workloads():
        assert workload["spec"]["template"]["metadata"]["labels"][PART_OF] == "speech-decoder"


def test_generated_configmaps_roll_pods_on_change(rendered: Manifests) -> None:
    # configMapGenerator names carry a content hash, and references follow it.
    for configmap in rendered.of_kind("ConfigMap"):
        assert re.fullmatch(r"[a-z-]+-[a-z0-9]{10}", configmap["metadata"]["name"]), configmap["metadata"]


def test_a_broken_kustomization_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [missing.yaml]\n"
    )
    with pytest.raises(RenderError, match=r"missing\.yaml"):
        render(tmp_path)
