"""Deployment policies over one rendered overlay. Each check returns its violations as
readable lines (empty when the overlay complies), so tests can also show that a check fires
on a deliberately broken copy."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from tests.test_openshift.manifests import (
    Manifests,
    expansions,
    image_name,
    pod_labels,
    pod_spec,
    selects,
)

# Containers without probes, and why.
PROBE_EXEMPT = {"simulator": "a client with no port: nothing routes to it, and a crash restarts it"}
# Variables that carry a credential and so may only come from a Secret.
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEYS?|PRIVATE_KEY|CREDENTIALS?)$")
SECRET_ONLY = frozenset({"REDIS_URL"})
PATH_SUFFIXES = ("_FILE", "_LOCATION")
CREDENTIAL_TEXT = (
    re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@"),  # user:password@ in a URL
    re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----"),
    re.compile(r"(?i)\b(requirepass|password)\s*[=:]\s*\S+"),
    re.compile(r"(?im)^\s*requirepass\s+(?!\$)\S+"),  # a Redis password not taken from a variable
)
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_NAMED_KINDS = frozenset({"Deployment", "Route", "Namespace"})
COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]+")
DURATION = re.compile(r"(\d+)(us|ms|s|m|h|d)")
DURATION_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def missing_resources(objects: Manifests) -> list[str]:
    problems = []
    for workload, container in objects.containers():
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(bound, {}):
                    problems.append(f"{_where(workload, container)}: no {bound}.{resource}")
    return problems


def missing_probes(objects: Manifests) -> list[str]:
    problems = []
    for workload, container in objects.containers():
        if container["name"] in PROBE_EXEMPT:
            continue
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in container:
                problems.append(f"{_where(workload, container)}: no {probe}")
    return problems


def insecure_containers(objects: Manifests) -> list[str]:
    """Restricted pod security: non-root, no privilege escalation, no capabilities, seccomp."""
    problems = []
    for workload, container in objects.containers():
        pod = pod_spec(workload)
        pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
        where = _where(workload, container)
        if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{where}: runs as UID 0")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{where}: privileged")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if ctx.get("capabilities", {}).get("add"):
            problems.append(f"{where}: adds capabilities")
        seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {}))
        if seccomp.get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token it does not use")
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            problems.append(f"{where}: shares a host namespace")
    return problems


def writable_root(objects: Manifests) -> list[str]:
    """Our images write nothing outside their mounted volumes."""
    return [
        f"{_where(workload, container)}: root filesystem is writable"
        for workload, container in objects.our_containers()
        if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True
    ]


def literal_secrets(objects: Manifests) -> list[str]:
    """Secrets are referenced by name only: none is shipped, no credential is written inline."""
    problems = [f"Secret/{o['metadata']['name']} is shipped" for o in objects.of_kind("Secret")]
    for workload, container in objects.containers():
        for name, value in objects.env(container).items():
            if value.secret is None and _is_credential(name):
                problems.append(f"{_where(workload, container)}: {name} does not come from a Secret")
    for configmap in objects.of_kind("ConfigMap"):
        for key in configmap.get("data", {}):
            if _is_credential(key):
                problems.append(f"ConfigMap/{configmap['metadata']['name']}: holds {key}")
    for obj in objects.objects:
        for path, text in _strings(obj):
            if any(pattern.search(text) for pattern in CREDENTIAL_TEXT):
                problems.append(f"{_ref(obj)} {path}: looks like a credential")
    return problems


def optional_secrets(objects: Manifests) -> list[str]:
    """Every Secret reference says `optional: false`: a missing Secret stops the pod, loudly."""
    problems = []
    for workload in objects.workloads():
        for where, reference in _secret_references(pod_spec(workload)):
            if reference.get("optional") is not False:
                problems.append(f"{_ref(workload)} {where}: optional is not false")
    return problems


def route_problems(objects: Manifests) -> list[str]:
    """Edge TLS with HTTP redirected, to an existing Service port."""
    problems = []
    for route in objects.of_kind("Route"):
        spec, where = route["spec"], _ref(route)
        tls = spec.get("tls", {})
        if tls.get("termination") != "edge" or tls.get("insecureEdgeTerminationPolicy") != "Redirect":
            problems.append(f"{where}: not edge TLS with insecureEdgeTerminationPolicy Redirect")
        service = objects.find("Service", spec["to"]["name"]) if spec["to"]["kind"] == "Service" else None
        if service is None:
            problems.append(f"{where}: no Service {spec['to']['name']}")
            continue
        port_names = {p.get("name") for p in service["spec"]["ports"]}
        if spec.get("port", {}).get("targetPort") not in port_names:
            problems.append(
                f"{where}: targetPort is not a port name of Service/{service['metadata']['name']}"
            )
    return problems


def sticky_route_problems(route: Mapping[str, Any]) -> list[str]:
    """Cookie affinity keeps a call on its pod; WebSockets need a tunnel timeout."""
    notes: Mapping[str, str] = route["metadata"].get("annotations", {})
    problems = []
    cookie = notes.get("router.openshift.io/cookie_name", "")
    if not COOKIE_NAME.fullmatch(cookie):
        problems.append("router.openshift.io/cookie_name is missing or not [A-Za-z0-9_-]+")
    if notes.get("haproxy.router.openshift.io/disable_cookies", "false").lower() == "true":
        problems.append("cookies are disabled")
    if notes.get("haproxy.router.openshift.io/balance") == "source":
        problems.append("balance=source pins clients by address instead of by call")
    for timeout in ("haproxy.router.openshift.io/timeout", "haproxy.router.openshift.io/timeout-tunnel"):
        if duration_s(notes.get(timeout, "")) is None:
            problems.append(f"{timeout} is missing or not a duration")
    if route["spec"].get("tls", {}).get("termination") not in ("edge", "reencrypt"):
        problems.append("the router cannot set cookies on passthrough TLS")
    return problems


def service_problems(objects: Manifests) -> list[str]:
    """Every Service selects pods, and names ports those pods have."""
    problems = []
    for service in objects.of_kind("Service"):
        selector = service["spec"].get("selector", {})
        targets = [w for w in objects.workloads() if selector and selects(selector, pod_labels(w))]
        if not targets:
            problems.append(f"{_ref(service)}: selects no pods")
        for workload in targets:
            ports = {p.get("name") for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
            for port in service["spec"]["ports"]:
                if port.get("targetPort") not in ports:
                    problems.append(f"{_ref(service)}: {_ref(workload)} has no port {port.get('targetPort')}")
    return problems


def image_trigger_problems(objects: Manifests) -> list[str]:
    """Image-change triggers name an ImageStream we build and the container running it."""
    problems = []
    for workload in objects.workloads():
        raw = workload["metadata"].get("annotations", {}).get("image.openshift.io/triggers")
        if raw is None:
            continue
        names = {c["name"]: c for c in pod_spec(workload)["containers"]}
        for trigger in json.loads(raw):
            stream, _, _tag = trigger["from"]["name"].partition(":")
            field = re.fullmatch(
                r'spec\.template\.spec\.containers\[\?\(@\.name=="(.+)"\)\]\.image', trigger["fieldPath"]
            )
            container = names.get(field.group(1)) if field else None
            if trigger["from"]["kind"] != "ImageStreamTag" or objects.find("ImageStream", stream) is None:
                problems.append(f"{_ref(workload)}: trigger names no ImageStream of ours: {stream}")
            if container is None:
                problems.append(f"{_ref(workload)}: trigger fieldPath names no container")
            elif image_name(container["image"]) != stream:
                problems.append(f"{_ref(workload)}: container {container['name']} does not run {stream}")
    return problems


def name_problems(objects: Manifests) -> list[str]:
    problems = []
    for obj in objects.objects:
        name, kind = obj["metadata"].get("name", ""), obj["kind"]
        if kind == "Service":
            pattern = DNS_1035_LABEL
        elif kind in LABEL_NAMED_KINDS:
            pattern = DNS_LABEL
        else:
            pattern = DNS_SUBDOMAIN
        if not pattern.fullmatch(name) or len(name) > 253:
            problems.append(f"{kind}/{name}: not a valid name for its kind")
    return problems


def command_expansion_problems(objects: Manifests) -> list[str]:
    """``$(NAME)`` in a command expands only a variable the container has."""
    problems = []
    for workload, container in objects.containers():
        for name in expansions(container) - set(objects.env(container)):
            problems.append(f"{_where(workload, container)}: $({name}) is not set")
    return problems


def duration_s(text: str) -> float | None:
    """Seconds in an HAProxy duration such as ``90s``, ``2m`` or ``1h``."""
    match = DURATION.fullmatch(text)
    return int(match.group(1)) * DURATION_S[match.group(2)] if match else None


def _is_credential(name: str) -> bool:
    if name.endswith(PATH_SUFFIXES):
        return False
    return name in SECRET_ONLY or bool(SECRET_NAME.search(name))


def _secret_references(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            yield f"volume {volume['name']}", volume["secret"]
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        for entry in container.get("env", []):
            if "secretKeyRef" in entry.get("valueFrom", {}):
                yield f"env {entry['name']}", entry["valueFrom"]["secretKeyRef"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield "envFrom", source["secretRef"]


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _strings(sub, f"{path}.{key}")
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            yield from _strings(sub, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


def _ref(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _where(workload: Mapping[str, Any], container: Mapping[str, Any]) -> str:
    return f"{_ref(workload)} container {container['name']}"
