"""Kafka as the services see it: topics match their configuration and defaults, each client
reaches the TLS/SCRAM listener as its own KafkaUser, and ACLs grant what it does, no more."""

from __future__ import annotations

from typing import Any

import pytest

from decoder_api.config import Settings
from tests.test_openshift.env_contract import ALL_TOPICS, CONTAINERS, TOPICS
from tests.test_openshift.kustomize import STRIMZI_OVERLAYS
from tests.test_openshift.manifests import Manifests, pod_spec, rendered_overlay
from tests.test_openshift.sources import image_source, package_landed, settings_default

# What each Kafka client does with the topic or group its variable names.
NEEDS = {
    "decoder": {("KAFKA_TOPIC", "topic", "Write")},
    "nlp-consumer": {
        ("NLP_INPUT_TOPIC", "topic", "Read"),
        ("NLP_GROUP_ID", "group", "Read"),
        ("NLP_OUTPUT_TOPIC", "topic", "Write"),
        ("NLP_DLQ_TOPIC", "topic", "Write"),
        ("NLP_SUMMARY_TOPIC", "topic", "Write"),
    },
    "dashboard": {("DASHBOARD_TOPIC", "topic", "Read"), ("DASHBOARD_SUMMARY_TOPIC", "topic", "Read")},
}
# Every dashboard instance reads with a group of its own (``dashboard-<host>-<uuid>``), so it sees
# every call; its user may read groups with this prefix and no others.
DASHBOARD_GROUPS = ("group", "dashboard-", "Read")
PREFIXED = {"dashboard": {DASHBOARD_GROUPS}}


def decoder_default(field: str) -> Any:
    return settings_default(Settings, field)


# Granted beyond NEEDS on purpose: the decoder's partial results (DECODER_KAFKA_PARTIALS=true).
EXTRA_GRANTS = {"decoder": {("topic", decoder_default("kafka_partial_topic"), "Write")}}


@pytest.fixture(scope="module", params=STRIMZI_OVERLAYS)
def strimzi(request: pytest.FixtureRequest) -> Manifests:
    return rendered_overlay(request.param)


def kafka_clients(objects: Manifests) -> dict[str, dict[str, str]]:
    """Plain environment of every container that talks to Kafka, by container name."""
    return {
        container["name"]: objects.env_values(container)
        for _, container in objects.our_containers()
        if "KAFKA_BOOTSTRAP_SERVERS" in objects.env_values(container)
    }


def test_topic_variables_name_the_service_topics(rendered: Manifests) -> None:
    for _, container in rendered.our_containers():
        env = rendered.env_values(container)
        assert {k: v for k, v in env.items() if k in TOPICS} == {k: TOPICS[k] for k in env if k in TOPICS}


def test_the_decoder_defaults_match_the_topics() -> None:
    assert decoder_default("kafka_topic") == TOPICS["KAFKA_TOPIC"]
    assert decoder_default("kafka_partial_topic") in ALL_TOPICS


OTHER_TOPIC_READERS = sorted(
    (variable, c.package)
    for c in CONTAINERS.values()
    for variable in c.reads & set(TOPICS)
    if c.package != "decoder_api"
)


@pytest.mark.parametrize(("variable", "package"), sorted(set(OTHER_TOPIC_READERS)))
def test_other_packages_default_to_the_same_topics(variable: str, package: str) -> None:
    if not package_landed(package):
        pytest.skip(f"{package} has no __main__ yet")
    source = image_source(package)  # its defaults may be the contract's (TRANSCRIPTS_TOPIC)
    assert source.reads(variable), f"{package} does not read {variable}"
    assert TOPICS[variable] in source.strings, f"{package} reads {variable} with another default"


def test_every_topic_exists(strimzi: Manifests) -> None:
    topics = {t["spec"].get("topicName", t["metadata"]["name"]) for t in strimzi.of_kind("KafkaTopic")}
    assert topics == ALL_TOPICS


def test_topics_are_durable(strimzi: Manifests) -> None:
    ha = strimzi.find("HorizontalPodAutoscaler", "decoder") is not None
    for topic in strimzi.of_kind("KafkaTopic"):
        spec = topic["spec"]
        replicas, min_isr = spec["replicas"], spec["config"]["min.insync.replicas"]
        assert int(spec["config"]["retention.ms"]) > 0
        if ha:
            assert (replicas, min_isr) == (3, 2), topic["metadata"]["name"]
        else:
            assert min_isr <= replicas


def test_consumers_do_not_outnumber_partitions(strimzi: Manifests) -> None:
    partitions = {t["spec"]["topicName"]: t["spec"]["partitions"] for t in strimzi.of_kind("KafkaTopic")}
    consumer = strimzi.workload("nlp-consumer")
    topic = strimzi.env_values(strimzi.container("nlp-consumer"))["NLP_INPUT_TOPIC"]
    assert consumer["spec"]["replicas"] <= partitions[topic]
    assert strimzi.workload("dashboard")["spec"]["replicas"] == 1  # one group, sees every partition


def test_kraft_cluster_with_node_pools(strimzi: Manifests) -> None:
    [kafka] = strimzi.of_kind("Kafka")
    cluster = kafka["metadata"]["name"]
    assert kafka["metadata"]["annotations"] == {
        "strimzi.io/kraft": "enabled",
        "strimzi.io/node-pools": "enabled",
    }
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    pools = strimzi.of_kind("KafkaNodePool")
    roles = {role for pool in pools for role in pool["spec"]["roles"]}
    assert roles == {"controller", "broker"}
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert controllers % 2 == 1  # a KRaft quorum needs a majority
    for resource in [*pools, *strimzi.of_kind("KafkaTopic"), *strimzi.of_kind("KafkaUser")]:
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == cluster


def test_clients_use_the_tls_scram_listener_as_their_own_user(strimzi: Manifests) -> None:
    [kafka] = strimzi.of_kind("Kafka")
    cluster = kafka["metadata"]["name"]
    listeners = {
        f"{cluster}-kafka-bootstrap:{listener['port']}": listener
        for listener in kafka["spec"]["kafka"]["listeners"]
    }
    users = {u["metadata"]["name"]: u for u in strimzi.of_kind("KafkaUser")}
    for name, env in kafka_clients(strimzi).items():
        listener = listeners[env["KAFKA_BOOTSTRAP_SERVERS"]]
        assert (listener["type"], listener["tls"], listener["authentication"]["type"]) == (
            "internal",
            True,
            "scram-sha-512",
        )
        assert (env["KAFKA_SECURITY_PROTOCOL"], env["KAFKA_SASL_MECHANISM"]) == ("SASL_SSL", "SCRAM-SHA-512")
        user = users[env["KAFKA_SASL_USERNAME"]]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        mounted = mounted_secret_files(strimzi, name)
        assert mounted[env["KAFKA_SSL_CA_LOCATION"]] == (f"{cluster}-cluster-ca-cert", "ca.crt")
        assert mounted[env["KAFKA_SASL_PASSWORD_FILE"]] == (env["KAFKA_SASL_USERNAME"], "password")


def test_acls_grant_what_each_client_does_and_no_more(strimzi: Manifests) -> None:
    clients = kafka_clients(strimzi)
    assert set(clients) == set(NEEDS)
    for name, env in clients.items():
        acls = strimzi.get("KafkaUser", env["KAFKA_SASL_USERNAME"])["spec"]["authorization"]["acls"]
        granted = {
            (acl["resource"]["type"], acl["resource"]["name"], operation)
            for acl in acls
            for operation in acl["operations"]
        }
        prefixed = {
            (acl["resource"]["type"], acl["resource"]["name"], op)
            for acl in acls
            if acl["resource"].get("patternType", "literal") != "literal"
            for op in acl["operations"]
        }
        assert prefixed == PREFIXED.get(name, set()), name
        needed = {(kind, env[variable], operation) for variable, kind, operation in NEEDS[name]}
        needed |= PREFIXED.get(name, set())
        described = {("topic", topic, "Describe") for kind, topic, _ in needed | granted if kind == "topic"}
        assert needed <= granted, name
        assert granted <= needed | described | EXTRA_GRANTS.get(name, set()), name


def test_only_kafka_clients_reach_the_listener(strimzi: Manifests) -> None:
    [kafka] = strimzi.of_kind("Kafka")
    [listener] = kafka["spec"]["kafka"]["listeners"]
    peers = {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for p in listener["networkPolicyPeers"]
    }
    assert peers == set(kafka_clients(strimzi))


def test_external_kafka_overlay_leaves_strimzi_out() -> None:
    external = rendered_overlay("kafka-external")
    assert [o for o in external.objects if o["apiVersion"].startswith("kafka.strimzi.io/")] == []
    text = str([o for o in external.objects])
    assert "transcripts-kafka-bootstrap" not in text
    assert "transcripts-cluster-ca-cert" not in text
    for name in kafka_clients(external):
        mounted = mounted_secret_files(external, name)
        ca = external.env_values(external.container(name))["KAFKA_SSL_CA_LOCATION"]
        assert mounted[ca] == ("kafka-external-ca", "ca.crt")


def mounted_secret_files(objects: Manifests, workload: str) -> dict[str, tuple[str, str]]:
    """File path in the container -> (Secret, key), for Secret volumes with explicit items."""
    pod = pod_spec(objects.workload(workload))
    volumes: dict[str, Any] = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    files = {}
    for mount in pod["containers"][0].get("volumeMounts", []):
        secret = volumes.get(mount["name"], {})
        for item in secret.get("items", []):
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files
