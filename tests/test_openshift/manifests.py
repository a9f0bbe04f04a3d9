"""Read-only lookups over one rendered overlay: objects by kind and name, pod templates,
containers and the environment each container ends up with."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tests.test_openshift.kustomize import Manifest, render_overlay

WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"})
# The images built from openshift/Containerfile; any other image (Redis) is third-party.
OUR_IMAGES = frozenset({"decoder", "recorder", "nlp"})
EXPANSION = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass(frozen=True)
class EnvValue:
    """Where a container's variable comes from: a literal, a ConfigMap key or a Secret key."""

    value: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key)
    other: str | None = None  # fieldRef, resourceFieldRef, ...


class Manifests:
    def __init__(self, objects: tuple[Manifest, ...]) -> None:
        self.objects = objects

    def of_kind(self, kind: str) -> list[Manifest]:
        return [o for o in self.objects if o.get("kind") == kind]

    def find(self, kind: str, name: str) -> Manifest | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def get(self, kind: str, name: str) -> Manifest:
        found = self.find(kind, name)
        if found is None:
            raise KeyError(f"no {kind} named {name}")
        return found

    def workloads(self) -> list[Manifest]:
        return [o for o in self.objects if o.get("kind") in WORKLOAD_KINDS]

    def configmap(self, name: str) -> Mapping[str, str]:
        """A ConfigMap's data, by the name workloads refer to (generated names carry a hash)."""
        data: Mapping[str, str] = self.get("ConfigMap", name).get("data", {})
        return data

    def containers(self) -> Iterator[tuple[Manifest, dict[str, Any]]]:
        """(workload, container) for every container and init container."""
        for workload in self.workloads():
            spec = pod_spec(workload)
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                yield workload, container

    def our_containers(self) -> Iterator[tuple[Manifest, dict[str, Any]]]:
        for workload, container in self.containers():
            if image_name(container["image"]) in OUR_IMAGES:
                yield workload, container

    def workload(self, name: str) -> Manifest:
        found = [w for w in self.workloads() if w["metadata"]["name"] == name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} workloads named {name}")
        return found[0]

    def container(self, workload_name: str) -> dict[str, Any]:
        """The (first) container of a workload."""
        containers: list[dict[str, Any]] = pod_spec(self.workload(workload_name))["containers"]
        return containers[0]

    def env(self, container: Mapping[str, Any]) -> dict[str, EnvValue]:
        """The container's variables: ``envFrom`` ConfigMaps first, then ``env`` entries."""
        found: dict[str, EnvValue] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                data = self.configmap(source["configMapRef"]["name"])
                found.update({key: EnvValue(value=value) for key, value in data.items()})
            else:
                found.update({f"<envFrom {sorted(source)}>": EnvValue(other=str(source))})
        for entry in container.get("env", []):
            found[entry["name"]] = self._env_value(entry)
        return found

    def env_values(self, container: Mapping[str, Any]) -> dict[str, str]:
        """Only the variables with a plain value (literal or from a ConfigMap)."""
        return {k: v.value for k, v in self.env(container).items() if v.value is not None}

    def _env_value(self, entry: Mapping[str, Any]) -> EnvValue:
        if "value" in entry:
            return EnvValue(value=str(entry["value"]))
        source = entry.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            return EnvValue(value=self.configmap(ref["name"])[ref["key"]])
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            return EnvValue(secret=(ref["name"], ref["key"]))
        return EnvValue(other=str(source))


def rendered_overlay(name: str) -> Manifests:
    return Manifests(render_overlay(name))


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def pod_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def image_name(image: str) -> str:
    """``decoder`` for ``decoder:latest``, ``quay.io/acme/decoder@sha256:…`` and the like."""
    last = image.rsplit("/", 1)[-1]
    return re.split(r"[:@]", last, maxsplit=1)[0]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (``matchLabels`` only, or a plain map) matches ``labels``."""
    wanted = selector.get("matchLabels", selector) if "matchExpressions" not in selector else None
    if wanted is None:
        raise ValueError("matchExpressions are not evaluated here: use matchLabels")
    return all(labels.get(key) == value for key, value in wanted.items())


def expansions(container: Mapping[str, Any]) -> set[str]:
    """Variables referenced as ``$(NAME)`` in the container's command and args."""
    words = [*container.get("command", []), *container.get("args", [])]
    return {name for word in words for name in EXPANSION.findall(str(word))}


def scaler_of(objects: Manifests, workload: Manifest) -> Manifest | None:
    """The HorizontalPodAutoscaler scaling ``workload``, if any."""
    for hpa in objects.of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        if (target["kind"], target["name"]) == (workload["kind"], workload["metadata"]["name"]):
            return hpa
    return None


def effective_replicas(objects: Manifests, name: str) -> int:
    """The HPA's minimum when one scales the workload, else its replica count."""
    workload = objects.workload(name)
    hpa = scaler_of(objects, workload)
    if hpa is not None:
        return int(hpa["spec"].get("minReplicas", 1))
    return int(workload["spec"].get("replicas", 1))
