"""Deployment policies: resources, probes, pod security, secrets, Routes and stickiness, draining,
autoscaling and disruption budgets, network isolation. Each check also fires on a broken copy."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from decoder_api.config import Settings
from tests.test_openshift import policies
from tests.test_openshift.kustomize import HA_OVERLAYS, OPENSHIFT, Manifest
from tests.test_openshift.manifests import (
    Manifests,
    effective_replicas,
    pod_labels,
    pod_spec,
    rendered_overlay,
    scaler_of,
    selects,
)
from tests.test_openshift.sources import settings_default

Check = Callable[[Manifests], list[str]]
CHECKS: dict[str, Check] = {
    "resources": policies.missing_resources,
    "probes": policies.missing_probes,
    "pod security": policies.insecure_containers,
    "read-only root": policies.writable_root,
    "literal secrets": policies.literal_secrets,
    "optional secrets": policies.optional_secrets,
    "routes": policies.route_problems,
    "services": policies.service_problems,
    "image triggers": policies.image_trigger_problems,
    "names": policies.name_problems,
    "command expansion": policies.command_expansion_problems,
}
ROUTER = (
    {"namespaceSelector": {"matchLabels": {"policy-group.network.openshift.io/ingress": ""}}},
    {"namespaceSelector": {"matchLabels": {"network.openshift.io/policy-group": "ingress"}}},
)
MONITORING = ({"namespaceSelector": {"matchLabels": {"network.openshift.io/policy-group": "monitoring"}}},)


def pods(name: str) -> tuple[dict[str, Any], ...]:
    return ({"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}},)


# Who may open connections to each of our pods, and nothing else.
ALLOWED_PEERS = {
    "decoder": ROUTER + pods("simulator") + MONITORING,
    "dashboard": ROUTER,
    "nlp-consumer": MONITORING,
    "redis": pods("decoder"),
    "simulator": (),
}


@pytest.mark.parametrize("check", CHECKS, ids=str)
def test_policy_holds(rendered: Manifests, check: str) -> None:
    assert CHECKS[check](rendered) == []


def broken(mutate: Callable[[list[Manifest]], None]) -> Manifests:
    objects = copy.deepcopy(list(rendered_overlay("prod").objects))
    mutate(objects)
    return Manifests(tuple(objects))


def first(objects: list[Manifest], kind: str, name: str) -> Manifest:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def container_of(objects: list[Manifest], kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = pod_spec(first(objects, kind, name))["containers"][0]
    return found


def test_checks_fire_on_broken_manifests() -> None:
    def no_memory_limit(objects: list[Manifest]) -> None:
        del container_of(objects, "Deployment", "dashboard")["resources"]["limits"]["memory"]

    def no_readiness(objects: list[Manifest]) -> None:
        del container_of(objects, "StatefulSet", "decoder")["readinessProbe"]

    def escalation(objects: list[Manifest]) -> None:
        container_of(objects, "Deployment", "redis")["securityContext"]["allowPrivilegeEscalation"] = True

    def inline_password(objects: list[Manifest]) -> None:
        env = container_of(objects, "Deployment", "redis")["env"]
        env[0] = {"name": "REDIS_PASSWORD", "value": "hunter2"}

    def url_with_password(objects: list[Manifest]) -> None:
        configmap = next(o for o in objects if o["kind"] == "ConfigMap")
        configmap["data"]["SOME_ENDPOINT"] = "redis://:hunter2@redis:6379/0"

    def shipped_secret(objects: list[Manifest]) -> None:
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}, "data": {}})

    def optional_secret(objects: list[Manifest]) -> None:
        del pod_spec(first(objects, "StatefulSet", "decoder"))["volumes"][1]["secret"]["optional"]

    def passthrough(objects: list[Manifest]) -> None:
        first(objects, "Route", "dashboard")["spec"]["tls"]["insecureEdgeTerminationPolicy"] = "Allow"

    def wrong_port(objects: list[Manifest]) -> None:
        first(objects, "Service", "redis")["spec"]["ports"][0]["targetPort"] = "resp"

    cases: list[tuple[str, Callable[[list[Manifest]], None]]] = [
        ("resources", no_memory_limit),
        ("probes", no_readiness),
        ("pod security", escalation),
        ("literal secrets", inline_password),
        ("literal secrets", url_with_password),
        ("literal secrets", shipped_secret),
        ("optional secrets", optional_secret),
        ("routes", passthrough),
        ("services", wrong_port),
    ]
    for check, mutate in cases:
        assert CHECKS[check](broken(mutate)) != [], (check, mutate.__name__)


def test_redis_password_never_appears_inline() -> None:
    command = pod_spec(rendered_overlay("prod").get("Deployment", "redis"))["containers"][0]["command"]
    assert "requirepass $REDIS_PASSWORD" in command[-1]
    inline = command[-1].replace("$REDIS_PASSWORD", "hunter2")
    assert any(pattern.search(inline) for pattern in policies.CREDENTIAL_TEXT)


# --- the decoder ------------------------------------------------------------------------------


def test_decoder_route_keeps_calls_on_their_pod(rendered: Manifests) -> None:
    assert policies.sticky_route_problems(rendered.get("Route", "decoder")) == []


def test_sticky_route_check_fires() -> None:
    route = copy.deepcopy(rendered_overlay("prod").get("Route", "decoder"))
    route["metadata"]["annotations"]["haproxy.router.openshift.io/disable_cookies"] = "true"
    del route["metadata"]["annotations"]["haproxy.router.openshift.io/timeout-tunnel"]
    assert len(policies.sticky_route_problems(route)) == 2


def test_decoder_websocket_outlives_server_pings(rendered: Manifests) -> None:
    notes = rendered.get("Route", "decoder")["metadata"]["annotations"]
    tunnel_s = policies.duration_s(notes["haproxy.router.openshift.io/timeout-tunnel"])
    assert tunnel_s is not None
    assert tunnel_s > 25  # flask-sock ping interval (decoder_api/http/app.py)


def test_dashboard_route_allows_long_event_streams(rendered: Manifests) -> None:
    notes = rendered.get("Route", "dashboard")["metadata"]["annotations"]
    timeout_s = policies.duration_s(notes["haproxy.router.openshift.io/timeout"])
    assert timeout_s is not None
    assert timeout_s >= 600


def test_decoder_probes(rendered: Manifests) -> None:
    container = rendered.container("decoder")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"  # liveness starts once the model is loaded
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_decoder_drains_before_it_is_killed(rendered: Manifests) -> None:
    decoder = rendered.workload("decoder")
    container = rendered.container("decoder")
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    graceful_s = int(
        rendered.env_values(container).get(
            "DECODER_GRACEFUL_TIMEOUT_S", settings_default(Settings, "graceful_timeout_s")
        )
    )
    grace_s = pod_spec(decoder)["terminationGracePeriodSeconds"]
    assert 60 <= grace_s <= 120
    assert grace_s > int(sleep[1]) + graceful_s


def test_decoder_has_a_thread_per_call(rendered: Manifests) -> None:
    # A WebSocket call holds a gunicorn thread for its whole duration.
    env = rendered.env_values(rendered.container("decoder"))
    assert int(env["DECODER_THREADS"]) >= int(env["DECODER_MAX_SESSIONS"])


@pytest.mark.parametrize("overlay", HA_OVERLAYS)
def test_decoder_pod_size(overlay: str) -> None:
    resources = rendered_overlay(overlay).container("decoder")["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "1536Mi"}
    assert resources["limits"]["memory"] == "2Gi"


# --- replicas, autoscaling, disruption budgets ----------------------------------------------


def test_dev_runs_one_of_everything() -> None:
    dev = rendered_overlay("dev")
    assert dev.of_kind("HorizontalPodAutoscaler") == []
    assert dev.of_kind("PodDisruptionBudget") == []
    assert {
        w["metadata"]["name"]: effective_replicas(dev, w["metadata"]["name"]) for w in dev.workloads()
    } == {name: 1 for name in ("decoder", "nlp-consumer", "dashboard", "simulator", "redis")}


@pytest.mark.parametrize("overlay", HA_OVERLAYS)
def test_decoder_is_highly_available(overlay: str) -> None:
    objects = rendered_overlay(overlay)
    decoder = objects.workload("decoder")
    assert effective_replicas(objects, "decoder") >= 2
    hpa = scaler_of(objects, decoder)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "decoder",
    }
    assert "replicas" not in decoder["spec"]  # the HPA owns the count
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu, "CPU is the metric that always works"
    assert objects.workload("simulator")["spec"]["replicas"] == 0


def test_prod_scales_on_open_calls_below_the_session_limit() -> None:
    prod = rendered_overlay("prod")
    hpa = prod.get("HorizontalPodAutoscaler", "decoder")
    [sessions] = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert sessions["pods"]["metric"]["name"] == "decoder_active_sessions"
    max_sessions = int(prod.env_values(prod.container("decoder"))["DECODER_MAX_SESSIONS"])
    assert float(sessions["pods"]["target"]["averageValue"]) < max_sessions


def test_external_kafka_overlay_scales_on_cpu_only() -> None:
    hpa = rendered_overlay("kafka-external").get("HorizontalPodAutoscaler", "decoder")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]


@pytest.mark.parametrize("overlay", HA_OVERLAYS)
def test_disruption_budgets_keep_pods_serving(overlay: str) -> None:
    objects = rendered_overlay(overlay)
    budgets = {pdb["metadata"]["name"]: pdb["spec"] for pdb in objects.of_kind("PodDisruptionBudget")}
    assert budgets["decoder"]["minAvailable"] >= 1
    assert selects(budgets["decoder"]["selector"], pod_labels(objects.workload("decoder")))
    assert selects(budgets["nlp-consumer"]["selector"], pod_labels(objects.workload("nlp-consumer")))
    for name in ("decoder", "nlp-consumer"):
        spread = pod_spec(objects.workload(name))["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all(selects(c["labelSelector"], pod_labels(objects.workload(name))) for c in spread)


# --- network isolation ------------------------------------------------------------------------


def ingress_peers(objects: Manifests, workload: Manifest) -> list[dict[str, Any]] | None:
    """Peers allowed to reach the workload's pods, or None when no policy isolates them."""
    labels = pod_labels(workload)
    isolating = [
        p
        for p in objects.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], labels)
    ]
    if not isolating:
        return None
    return [
        peer for p in isolating for rule in p["spec"].get("ingress", []) for peer in rule.get("from", [None])
    ]


def test_every_pod_accepts_only_its_known_peers(rendered: Manifests) -> None:
    for workload in rendered.workloads():
        name = workload["metadata"]["name"]
        peers = ingress_peers(rendered, workload)
        assert peers is not None, f"{name} is not isolated"
        assert None not in peers, f"{name} has a rule without `from`: open to everyone"
        assert [p for p in peers if p not in ALLOWED_PEERS[name]] == [], name


def test_the_router_reaches_the_routed_pods(rendered: Manifests) -> None:
    for route in rendered.of_kind("Route"):
        selector = rendered.get("Service", route["spec"]["to"]["name"])["spec"]["selector"]
        for workload in rendered.workloads():
            if selects(selector, pod_labels(workload)):
                peers = ingress_peers(rendered, workload) or []
                assert all(router in peers for router in ROUTER), workload["metadata"]["name"]


def test_isolation_check_fires_on_an_open_rule() -> None:
    objects = broken(lambda o: first(o, "NetworkPolicy", "redis")["spec"]["ingress"].append({"ports": []}))
    assert None in (ingress_peers(objects, objects.workload("redis")) or [])


# --- secrets the operator creates ---------------------------------------------------------


def referenced_secrets(objects: Manifests) -> set[str]:
    names = set()
    for workload in objects.workloads():
        pod = pod_spec(workload)
        names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for container in pod["containers"]:
            refs = [e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "valueFrom" in e]
            names |= {ref["name"] for ref in refs}
    return names


def test_every_secret_is_created_by_strimzi_or_the_readme(rendered: Manifests) -> None:
    readme = (OPENSHIFT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"oc create secret generic ([a-z0-9-]+)", readme))
    generated = {u["metadata"]["name"] for u in rendered.of_kind("KafkaUser")}
    generated |= {f"{k['metadata']['name']}-cluster-ca-cert" for k in rendered.of_kind("Kafka")}
    assert sorted(referenced_secrets(rendered) - generated - documented) == []
