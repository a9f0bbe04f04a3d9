"""Every rendered object is valid for its kind, and the validator rejects broken objects."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.test_openshift import schemas
from tests.test_openshift.kustomize import Manifest, render
from tests.test_openshift.manifests import Manifests, pod_spec, rendered_overlay
from tests.test_openshift.schemas import K8S_VERSIONS, SchemaNotFound, validation_errors


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_every_object_is_valid(rendered: Manifests, k8s_version: str) -> None:
    problems = {
        f"{o['kind']}/{o['metadata']['name']}": errors
        for o in rendered.objects
        if (errors := validation_errors(o, k8s_version))
    }
    assert problems == {}


def test_strimzi_resources_are_also_valid_v1beta2(rendered: Manifests) -> None:
    # Written for kafka.strimzi.io/v1; an operator older than 0.49 only needs the apiVersion changed.
    problems = {}
    for obj in rendered.objects:
        if obj["apiVersion"].startswith("kafka.strimzi.io/"):
            older = {**obj, "apiVersion": "kafka.strimzi.io/v1beta2"}
            if errors := validation_errors(older, K8S_VERSIONS[0]):
                problems[f"{obj['kind']}/{obj['metadata']['name']}"] = errors
    assert problems == {}


def prod(kind: str, name: str) -> Manifest:
    """A private copy of one prod object, to break."""
    return copy.deepcopy(rendered_overlay("prod").get(kind, name))


def test_a_misspelt_deployment_field_fails() -> None:
    deployment = prod("Deployment", "nlp-consumer")
    pod_spec(deployment)["containers"][0]["resource"] = pod_spec(deployment)["containers"][0].pop("resources")
    assert validation_errors(deployment, K8S_VERSIONS[0]) == [
        "spec.template.spec.containers.0: Additional properties are not allowed ('resource' was unexpected)"
    ]


def test_a_wrong_type_fails() -> None:
    statefulset = prod("StatefulSet", "decoder")
    statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "two minutes"
    assert validation_errors(statefulset, K8S_VERSIONS[-1]) == [
        "spec.template.spec.terminationGracePeriodSeconds: 'two minutes' is not of type 'integer', 'null'"
    ]


def test_a_route_without_a_target_fails() -> None:
    route = prod("Route", "decoder")
    del route["spec"]["to"]
    assert validation_errors(route, K8S_VERSIONS[0]) == ["spec: 'to' is a required property"]


def test_a_misspelt_route_field_fails() -> None:
    route = prod("Route", "decoder")
    route["spec"]["tls"]["insecureEdgeTermination"] = route["spec"]["tls"].pop(
        "insecureEdgeTerminationPolicy"
    )
    assert len(validation_errors(route, K8S_VERSIONS[0])) == 1


def test_a_misspelt_custom_resource_field_fails() -> None:
    # The shared schemas list fields without closing them; the validator closes them.
    topic = prod("KafkaTopic", "transcripts-v1")
    topic["spec"]["partition"] = topic["spec"].pop("partitions")
    assert validation_errors(topic, K8S_VERSIONS[0]) == [
        "spec: Additional properties are not allowed ('partition' was unexpected)"
    ]


def test_free_form_kafka_configuration_stays_free() -> None:
    kafka = prod("Kafka", "transcripts")
    kafka["spec"]["kafka"]["config"]["log.retention.hours"] = 24
    assert validation_errors(kafka, K8S_VERSIONS[0]) == []


def test_custom_resource_metadata_is_checked_as_object_meta() -> None:
    user = prod("KafkaUser", "decoder-kafka")
    user["metadata"]["label"] = user["metadata"].pop("labels")
    assert validation_errors(user, K8S_VERSIONS[0]) == [
        "metadata: Additional properties are not allowed ('label' was unexpected)"
    ]


def test_an_invalid_enum_in_an_openshift_build_fails() -> None:
    build = prod("BuildConfig", "decoder")
    build["spec"]["strategy"]["dockerStrategy"]["target"] = "decoder"  # OpenShift has no target
    assert len(validation_errors(build, K8S_VERSIONS[0])) == 1


def test_a_kind_without_a_schema_is_an_error() -> None:
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}}
    with pytest.raises(SchemaNotFound):
        validation_errors(monitor, K8S_VERSIONS[0])
    with pytest.raises(SchemaNotFound):
        validation_errors(
            {**prod("Route", "decoder"), "apiVersion": "route.openshift.io/v2"}, K8S_VERSIONS[0]
        )


def test_a_broken_manifest_fails_through_kustomize(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [service.yaml]\n"
    )
    (tmp_path / "service.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\n"
        "spec: {selector: {app: x}, ports: [{port: 80, targetPortt: 8080}]}\n"
    )
    [service] = render(tmp_path)
    assert validation_errors(service, K8S_VERSIONS[0]) == [
        "spec.ports.0: Additional properties are not allowed ('targetPortt' was unexpected)"
    ]


def test_missing_shared_schemas_fail_clearly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(schemas, "SHARED_SCHEMAS", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="shared/schemas beside the checkout"):
        schemas.shared_schema_dir()


def test_closing_leaves_combinators_and_open_objects_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "config": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {}},
            },
            "choice": {"oneOf": [{"properties": {"a": {"type": "object", "properties": {"b": {}}}}}]},
        },
    }
    closed = schemas.closed(schema)
    assert closed["additionalProperties"] is False
    assert "additionalProperties" not in closed["properties"]["config"]
    branch = closed["properties"]["choice"]["oneOf"][0]
    assert "additionalProperties" not in branch
    assert branch["properties"]["a"]["additionalProperties"] is False
