"""The development stack's broker is Apache Kafka, and a call survives its SIGKILL and restart.

``python -m devtools.devstack up`` is what ``make services`` and ``make demo`` run: its broker
keeps its log directory on disk, so after a crash ``up`` starts it again on the same address
with every topic, offset and idempotent-producer state, and the decoder's outbox delivers what
it journaled meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from devtools import devstack
from devtools.processes import ROOT
from tests.conftest import RATE_HZ, SpokenCall
from tests.kafka import (
    Call,
    ConsumerFactory,
    consume_until,
    decoder_env,
    dedup_by_event_id,
    event_value,
    launch_decoder,
    readyz,
    session_messages,
    wait_for,
)

CHUNK_BYTES = RATE_HZ * 2 * 200 // 1000  # 200 ms of 16-bit mono PCM


def run_devstack(state: Path, action: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "devtools.devstack", action, "--dir", str(state)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A development stack of its own (state directory, its env), brought down afterwards."""
    state = tmp_path_factory.mktemp("devstack")
    up = run_devstack(state, "up")
    assert up.returncode == 0, up.stderr
    env = dict(line.split("=", 1) for line in (state / "env").read_text().splitlines())
    yield state, env
    run_devstack(state, "down")


def test_the_broker_is_apache_kafka_in_kraft_mode_with_the_manifest_topics(
    stack: tuple[Path, dict[str, str]],
) -> None:
    _, env = stack
    admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"], "log_level": 0})
    node = next(iter(admin.list_topics(timeout=10).brokers))
    resource = ConfigResource(ResourceType.BROKER, str(node))
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["process.roles"].value == "broker,controller"  # KRaft: no ZooKeeper
    assert config["auto.create.topics.enable"].value == "false"
    assert config["log.dirs"].value.startswith(str(stack[0]))  # on disk, in the state directory
    specs = devstack.manifest_topics()
    metadata = admin.list_topics(timeout=10)
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    configs = {r.name: f.result(timeout=30) for r, f in admin.describe_configs(resources).items()}
    for spec in specs:
        assert len(metadata.topics[spec.name].partitions) == spec.partitions
        assert configs[spec.name]["retention.ms"].value == spec.config["retention.ms"]
        assert configs[spec.name]["cleanup.policy"].value == spec.config["cleanup.policy"]


def test_a_call_streamed_while_the_broker_is_killed_and_restarted_gets_every_final_once_in_order(
    stack: tuple[Path, dict[str, str]], tmp_path: Path, korean_call: SpokenCall
) -> None:
    state, env = stack
    bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
    server = launch_decoder(tmp_path, decoder_env(bootstrap, "transcripts.v1", tmp_path / "outbox"))
    try:
        call = Call(server.url).open()
        third = len(korean_call.pcm) // 3 // 2 * 2
        call.send_audio(korean_call.pcm[:third], CHUNK_BYTES)
        os.kill(int((state / "kafka.pid").read_text()), signal.SIGKILL)
        wait_for(lambda: run_devstack(state, "status").returncode == 1, 30, "the broker to be gone")
        call.send_audio(korean_call.pcm[third : 2 * third], CHUNK_BYTES)  # decoding never waits for Kafka
        up = run_devstack(state, "up")
        assert up.returncode == 0, up.stderr
        assert dict(line.split("=", 1) for line in up.stdout.splitlines()) == env  # the same address
        call.send_audio(korean_call.pcm[2 * third :], CHUNK_BYTES)
        call.end()
        wanted = [(f["utterance"], f["text"]) for f in call.finals if f["text"].strip()]
        assert len(wanted) >= 3
        wait_for(lambda: readyz(server)[1]["checks"]["outbox_pending"] == 0, 120, "an empty outbox")
    finally:
        server.stop()
    consumers = ConsumerFactory(bootstrap)
    try:
        consumer = consumers("transcripts.v1")
        messages = consume_until(
            consumer, lambda ms: len(session_messages(ms, call.session_id)) >= len(wanted)
        )
        messages += drain(consumer)
    finally:
        consumers.close_all()
    mine = [event_value(m) for m in session_messages(messages, call.session_id)]
    unique = dedup_by_event_id(mine)  # the subscribers' rule (README: delivery rule)
    assert [(v["utterance"], v["text"]) for v in unique] == wanted  # every final, once, in order


def drain(consumer: Consumer, idle_s: float = 3.0) -> list[Message]:
    """What else the consumer has (a duplicate would come after the last expected final)."""
    extra = []
    while (message := consumer.poll(idle_s)) is not None:
        assert message.error() is None, message.error()
        extra.append(message)
    return extra
