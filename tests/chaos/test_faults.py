"""One fault per test, one assertion for all: every final utterance of every call reaches
``transcripts.enriched.v1`` exactly once after de-duplication by ``event_id``, in order per call,
and the service recovers by itself (``/readyz`` 200, Kafka connected, outbox drained, every input
partition consumed, a new call on every instance goes through without a retry).

Where a fault kills a process, the test starts it again with the same name and address, as the
orchestrator restarts a crashed pod; nothing else is done by hand. Calls stream real Korean speech
through the real decoders (Vosk), with numbered chunks, and retry as a client behind the Route does.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from recorder.client import HttpTransport, SessionRequest
from recorder.config import ServerSettings
from tests.chaos.harness import (
    ENRICHED,
    HEARTBEAT_TTL_S,
    RATE_HZ,
    RECOVERY_TIMEOUT_S,
    SESSION_IDLE_S,
    TRANSCRIPTS,
    Caller,
    Instance,
    Pipeline,
    Scale,
    Script,
    SmallDisk,
    assert_exactly_once,
    assigned_partitions,
    calls_of,
    can_mount_tmpfs,
    check_delivery,
    check_summaries,
    expected_finals,
    join_all,
    new_call_works,
    read_events,
    session_owner,
    session_partition,
    skewed_clock_env,
    start_calls,
    wait_progress,
)
from tests.kafka import readyz, wait_for
from tests.test_nlp_consumer.conftest import ConsumerRun, metric

pytestmark = pytest.mark.timeout(1800)

logger = logging.getLogger(__name__)


def http_503s(instance: Instance) -> int:
    text = requests.get(f"{instance.url}/metrics", timeout=5).text
    found = re.search(r'^decoder_http_responses_total\{status="503"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_broker_killed_and_restarted(pipeline: Pipeline, scripts: list[Script], scale: Scale) -> None:
    """SIGKILL on the broker while calls stream and the consumers run; after the outage it starts
    again on the same log directory and ports, as a crashed node comes back.

    Finals decoded while it is down wait in the decoders' outboxes; decoders and consumers
    reconnect by themselves. On ``transcripts.v1`` and on ``transcripts.enriched.v1`` a subscriber
    that follows the documented rule (drop an ``event_id`` already seen) gets every final of every
    call once, in utterance order. Raw duplicates are allowed by that rule (the outbox publishes
    again after a failed delivery, a consumer enriches again what it had not committed) and are
    counted; with the idempotent producer and the broker's producer state kept on disk they should
    be 0 on ``transcripts.v1``.
    """
    callers: list[Caller] = []
    outages: list[dict[str, float]] = []
    for _ in range(scale.repetitions):
        wave = start_calls(pipeline.urls(), scripts, scale.calls)
        callers += wave
        wait_progress(wave, 0.3)
        outages.append(_kill_and_restart_broker(pipeline, scale))
        join_all(wave)
    assert all(o["waiting_in_outbox"] > 0 for o in outages), f"no final met the outage: {outages}"
    transcripts = assert_exactly_once(pipeline, calls_of(callers), TRANSCRIPTS)
    enriched = assert_exactly_once(pipeline, calls_of(callers), ENRICHED)
    logger.info(
        "broker_killed calls=%d finals=%d raw_duplicates_transcripts=%d raw_duplicates_enriched=%d "
        "outage_s=%.0f waiting_in_outbox=%s broker_ready_s=%s recovered_s=%s",
        len(callers),
        transcripts["events"],
        transcripts["duplicates"],
        enriched["duplicates"],
        scale.outage_s,
        [o["waiting_in_outbox"] for o in outages],
        [round(o["ready_s"], 1) for o in outages],
        [round(o["recovered_s"], 1) for o in outages],
    )
    pipeline.wait_recovered()
    new_call_works(pipeline, scripts)


def _kill_and_restart_broker(pipeline: Pipeline, scale: Scale) -> dict[str, float]:
    """SIGKILL, the outage, the restart; how many finals waited in the outboxes at the restart,
    the seconds until the broker answered, and until the whole pipeline was ready again (every
    decoder connected with an empty outbox, every input partition assigned)."""
    pipeline.broker.kill()
    time.sleep(scale.outage_s)  # the outage itself
    waiting = sum(_outbox_pending(instance) for instance in pipeline.instances.values())
    restarted = time.monotonic()
    ready_s = pipeline.restart_broker()
    pipeline.wait_recovered()
    return {
        "waiting_in_outbox": waiting,
        "ready_s": ready_s,
        "recovered_s": time.monotonic() - restarted,
    }


def _outbox_pending(instance: Instance) -> int:
    _, body = readyz(instance.server)
    return int(body.get("checks", {}).get("outbox_pending", 0))


def test_broker_paused_mid_call(pipeline: Pipeline, scripts: list[Script], scale: Scale) -> None:
    """SIGSTOP on the broker while calls stream: finals wait in the outbox, then arrive once."""
    callers: list[Caller] = []
    for _ in range(scale.repetitions):
        wave = start_calls(pipeline.urls(), scripts, scale.calls)
        callers += wave
        wait_progress(wave, 0.3)
        pipeline.broker.pause()
        time.sleep(scale.outage_s)  # the outage itself
        pipeline.broker.resume()
    join_all(callers)
    report = assert_exactly_once(pipeline, calls_of(callers))
    logger.info("broker_paused %s", report)
    pipeline.wait_recovered()
    new_call_works(pipeline, scripts)


def test_redis_killed_and_restarted(pipeline: Pipeline, scripts: list[Script], scale: Scale) -> None:
    """SIGKILL on Redis (registry and outbox) mid-call, restarted from its append-only file.

    While it is down a chunk that completes an utterance cannot be journaled and is answered
    503; the client sends it again and nothing is lost or decoded twice.
    """
    callers: list[Caller] = []
    for _ in range(scale.repetitions):
        wave = start_calls(pipeline.urls(), scripts, scale.calls)
        callers += wave
        wait_progress(wave, 0.3)
        pipeline.redis.kill()
        time.sleep(scale.outage_s)
        pipeline.redis.start()
        join_all(wave)
    refused = sum(c.retries["outbox_unavailable"] for c in callers)
    assert refused > 0, "no chunk met the outage: the fault was not exercised"
    report = assert_exactly_once(pipeline, calls_of(callers))
    logger.info("redis_killed %s refused=%d", report, refused)
    pipeline.wait_recovered()
    new_call_works(pipeline, scripts)


def test_decoder_sigkilled_mid_call(pipeline: Pipeline, scripts: list[Script], scale: Scale) -> None:
    """SIGKILL on a decoder with calls in flight: they continue on the other instance (takeover
    from the registry), the killed pod restarts and relays what its outbox still held."""
    callers: list[Caller] = []
    for repetition in range(scale.repetitions):
        victim = pipeline.instances["a" if repetition % 2 == 0 else "b"]
        wave = start_calls(pipeline.urls(), scripts, scale.calls)
        callers += wave
        wait_progress(wave, 0.4)
        victim.kill()
        try:
            join_all(wave)
        finally:  # the orchestrator restarts it whatever the calls did: the tests after this one need it
            victim.restart()
    assert sum(c.retries["connection"] for c in callers) > 0, "no call was on the killed instance"
    report = assert_exactly_once(pipeline, calls_of(callers))
    logger.info("decoder_killed %s", report)
    pipeline.wait_recovered()
    new_call_works(pipeline, scripts)


@dataclass(frozen=True)
class Takeover:
    """One enrichment consumer SIGKILLed while a wave of calls streams."""

    callers: list[Caller]
    partitions: set[int]  # the input partitions the killed consumer held
    killed_at: float  # wall clock, as the consumers stamp ``enriched_at``
    takeover_s: float  # from the SIGKILL until the survivor held those partitions
    streaming: int  # calls still streaming at the SIGKILL


def test_consumer_sigkilled_survivor_takes_over(
    pipeline: Pipeline, scripts: list[Script], scale: Scale
) -> None:
    """Two enrichment consumers in one group while calls stream; SIGKILL on the one holding the
    first call's partition once it has enriched a final of them. The group expires the member
    (its session timeout, the default 10 s: the takeover time measured is the deployed one), the
    survivor is assigned its partitions and enriches what it had not committed (duplicates with
    the same ``event_id``) and the rest of the calls: after de-duplication every final of every
    call is enriched once, in order, and every call has one summary counting all its finals (the
    survivor rebuilt the calls open on the partitions it took over). Only then does a replacement
    start, as the orchestrator restarts the pod."""
    assert len(pipeline.consumers) == 2, "the fault needs a survivor"
    takeovers: list[Takeover] = []
    reports: list[dict[str, int]] = []
    for _ in range(scale.repetitions):
        takeover = _kill_consumer_mid_stream(pipeline, scripts, scale)
        calls = calls_of(takeover.callers)
        documents = read_events(pipeline.broker.bootstrap, ENRICHED, set(expected_finals(calls)))
        reports.append(
            check_delivery(documents, calls)
            | {
                "by_survivor": _enriched_after(takeover, documents),
                "summary_copies": check_summaries(pipeline, calls),
            }
        )
        takeovers.append(takeover)
        pipeline.add_consumer().wait_assigned()  # the replacement joins the group
        pipeline.wait_recovered()
    logger.info(
        "consumer_killed calls=%d finals=%d raw_duplicates_enriched=%d summary_copies=%d takeover_s=%s "
        "streaming_at_kill=%s killed_partitions=%s enriched_by_survivor=%s",
        sum(len(t.callers) for t in takeovers),
        sum(r["events"] for r in reports),
        sum(r["duplicates"] for r in reports),
        sum(r["summary_copies"] for r in reports),
        [round(t.takeover_s, 1) for t in takeovers],
        [t.streaming for t in takeovers],
        [sorted(t.partitions) for t in takeovers],
        [r["by_survivor"] for r in reports],
    )
    new_call_works(pipeline, scripts)


def _kill_consumer_mid_stream(pipeline: Pipeline, scripts: list[Script], scale: Scale) -> Takeover:
    owners = pipeline.partition_owners()
    handled = {run.metrics_port: _nlp_events(run) for run in pipeline.consumers}
    callers = start_calls(pipeline.urls(), scripts, scale.calls)
    first = wait_for(lambda: callers[0].session_id, 60, "the first call to open")
    victim = owners[session_partition(first)]
    wait_for(
        lambda: _nlp_events(victim) > handled[victim.metrics_port], 120, "the consumer to enrich a final"
    )
    partitions = assigned_partitions(victim)
    streaming = sum(not c.done.is_set() for c in callers)
    victim.process.stop(signal.SIGKILL)
    killed, killed_at = time.monotonic(), time.time()
    pipeline.consumers.remove(victim)
    wait_for(
        lambda: partitions <= set().union(*(assigned_partitions(run) for run in pipeline.consumers)),
        RECOVERY_TIMEOUT_S,
        f"the survivor to be assigned partitions {sorted(partitions)}",
        0.2,
    )
    takeover_s = time.monotonic() - killed
    join_all(callers)
    return Takeover(callers, partitions, killed_at, takeover_s, streaming)


def _enriched_after(takeover: Takeover, documents: list[dict[str, Any]]) -> int:
    """Finals of the wave from the killed consumer's partitions enriched after it died (so by the
    survivor, the only member until the replacement starts); there must be some."""
    sessions = {c.session_id for c in takeover.callers}
    late = [
        d
        for d in documents
        if d["session_id"] in sessions
        and session_partition(d["session_id"]) in takeover.partitions
        and datetime.fromisoformat(d["enriched_at"]).timestamp() > takeover.killed_at
    ]
    assert late, f"nothing of partitions {sorted(takeover.partitions)} was enriched after the SIGKILL"
    return len(late)


def _nlp_events(run: ConsumerRun) -> float:
    return metric(run.metrics_port, "nlp_events_total") or 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if not can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN): the disk-full fault cannot be staged")
    disk = SmallDisk(tmp_path / "outbox", 1024).mount()
    yield disk
    disk.unmount()


def test_outbox_disk_full(
    pipeline: Pipeline, scripts: list[Script], scale: Scale, small_disk: SmallDisk
) -> None:
    """The SQLite outbox's filesystem fills up mid-call (a 1 MiB tmpfs): the decoder answers 503,
    the recorder client retries its numbered chunk, and once space is back every final is
    enriched exactly once. A decoder without Redis keeps its outbox in SQLite."""
    env = pipeline.decoder_env("solo", outbox_dir=str(small_disk.path))
    env |= {"REDIS_URL": "", "DECODER_REDIS_URL": ""}
    solo = pipeline.add_instance("solo", env)
    try:
        calls = [
            _call_while_disk_fills(solo, small_disk, scripts[r % len(scripts)], scale)
            for r in range(scale.repetitions)
        ]
        report = assert_exactly_once(pipeline, calls)
        logger.info("disk_full %s", report)
        pipeline.wait_recovered()
        new_call_works(pipeline, scripts, ["solo"])
    finally:
        pipeline.remove_instance("solo")


def _call_while_disk_fills(
    solo: Instance, disk: SmallDisk, script: Script, scale: Scale
) -> tuple[str, Script]:
    refused_before = http_503s(solo)
    recorded: list[str] = []
    caller = threading.Thread(target=_record_call, args=(solo.url, script, recorded), daemon=True)
    caller.start()
    wait_for(lambda: len(recorded) >= 2, 60, "the call's first final")  # session id, then a final
    disk.fill()
    wait_for(lambda: http_503s(solo) > refused_before, 60, "a 503 while the disk is full")
    time.sleep(scale.outage_s)
    disk.free()
    caller.join(180)
    assert not caller.is_alive() and recorded[-1] == "ended", recorded
    return recorded[0], script


def _record_call(url: str, script: Script, recorded: list[str]) -> None:
    """The recorder's own HTTP client (its retries) streams ``script``; ``recorded`` gets the
    session id, one entry per final, and ``ended``."""
    transport = HttpTransport(ServerSettings(url=url, retry_s=180), threading.Event())
    try:
        recorded.append(transport.open(SessionRequest(RATE_HZ, "chaos", words=True)).session_id)
        for seq, chunk in enumerate(script.chunks):
            recorded += ["final"] * len(transport.send(chunk, seq).finals)
            time.sleep(0.05)
        recorded += ["final"] * len(transport.end().finals)
        recorded.append("ended")
    finally:
        transport.close()


SKEW_S = -120  # well beyond the heartbeat TTL (2 s) and the idle timeout (30 s)
AWAY_S = (
    HEARTBEAT_TTL_S + SESSION_IDLE_S / 4 + 1
)  # past the owner's expiry and one orphan check (every 7.5 s)


def test_clock_skew_between_instances(pipeline: Pipeline, scripts: list[Script], scale: Scale) -> None:
    """A decoder whose wall clock is two minutes behind the others (libfaketime).

    A live owner is never taken over, in either direction (liveness is a Redis TTL, not a
    comparison of clocks). When the skewed owner dies and its client is away for a few seconds,
    no other instance flushes the call as an idle orphan; the client comes back, another
    instance takes the call over, and every final is enriched exactly once.
    """
    env = pipeline.decoder_env("skewed") | skewed_clock_env(SKEW_S)
    skewed = pipeline.add_instance("skewed", env)
    try:
        calls: list[tuple[str, Script]] = []
        for repetition in range(scale.repetitions):
            calls += _skewed_owner_dies(pipeline, skewed, scripts[repetition % len(scripts)])
        report = assert_exactly_once(pipeline, calls)
        logger.info("clock_skew %s", report)
        pipeline.wait_recovered()
        new_call_works(pipeline, scripts)
    finally:
        pipeline.remove_instance("skewed")


def _skewed_owner_dies(pipeline: Pipeline, skewed: Instance, script: Script) -> list[tuple[str, Script]]:
    first, second = pipeline.instances["a"], pipeline.instances["b"]
    away_at = len(script.chunks) // 2
    # both held at half way, so each is still live when the other instance is asked for it
    normal = Caller([first.url], script, 0.05, gate_at=away_at).start()
    on_skewed = Caller([skewed.url, first.url, second.url], script, 0.05, gate_at=away_at).start()
    wait_for(lambda: min(on_skewed.progress, normal.progress) >= away_at, 60, "both calls under way")
    _assert_wrong_instance(normal, skewed)  # live owners are never taken over, in either direction
    _assert_wrong_instance(on_skewed, second)
    normal.gate.set()
    assert session_owner(pipeline, on_skewed.session_id) == "skewed"
    skewed.kill()
    time.sleep(AWAY_S)
    on_skewed.gate.set()
    join_all([normal, on_skewed])
    assert on_skewed.retries["connection"] > 0
    skewed.restart()
    return calls_of([normal, on_skewed])


def _assert_wrong_instance(caller: Caller, other: Instance) -> None:
    """A chunk for ``caller``'s live session sent to ``other`` is refused, not taken over."""
    headers = {
        "X-Session-Token": caller.token,
        "X-Chunk-Seq": "999999",
        "Content-Type": "application/octet-stream",
    }
    response = requests.post(
        f"{other.url}/v1/sessions/{caller.session_id}/audio", data=b"\0\0" * 160, headers=headers, timeout=30
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "wrong_instance"
    assert 1 <= int(response.headers["Retry-After"]) <= math.ceil(HEARTBEAT_TTL_S)
